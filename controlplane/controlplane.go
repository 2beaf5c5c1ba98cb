// Package controlplane is erlmcp's control plane: several instances, one
// leader by etcd election, every leader write fenced on the leadership.
//
// The leader creates the cluster (config/cluster) and places shards on
// store nodes (shards/<nnn>). Every instance, leader or standby, serves the
// admin API (HTTP+JSON, bearer token) that `erlmcp ctl` talks to.
package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/erlmcp/erlmcp/internal/etcdclient"
	"github.com/erlmcp/erlmcp/internal/etcdwatch"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Version is reported in membership.
var Version = "dev"

// ControlPlane is one running instance.
type ControlPlane struct {
	cfg     Config
	log     *logrus.Entry
	token   string
	cli     *clientv3.Client
	ln      net.Listener
	srv     *http.Server
	addr    string // advertised admin host:port
	reg     *membership.Registration
	metrics *metrics
	prober  *prober
	// probes is the regions' probe history, kept on every instance.
	probes *regionProbes
	// actuator carries out autoheal and scaling (none: nothing is done).
	actuator Actuator

	leader atomic.Bool
	// lead is the current term while leading (nil otherwise), for admin
	// requests that write.
	lead atomic.Pointer[leadership]
	// healthy is the region detector's last verdict per region (leader).
	healthy atomic.Pointer[map[string]bool]
	// placementStores is the usable store count of the last finished
	// placement pass (for tests).
	placementStores atomic.Int64
	cancel          context.CancelFunc
	wg              sync.WaitGroup
	once            sync.Once
}

// Run starts an instance and blocks until ctx ends, then stops it
// (resigning leadership and leaving membership at once).
func Run(ctx context.Context, cfg Config, log *logrus.Entry) error {
	cp, err := Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	cp.Close()
	return nil
}

// Start validates cfg, connects to etcd, listens on AdminListen, registers
// in membership and starts campaigning; it returns once the instance is
// registered and serving the admin API. ctx bounds only the start; the
// instance runs until Close.
func Start(ctx context.Context, cfg Config, log *logrus.Entry) (*ControlPlane, error) {
	return start(ctx, cfg, log, nil)
}

// start is Start with an actuator given (tests); nil builds the one cfg
// names.
func start(ctx context.Context, cfg Config, log *logrus.Entry, act Actuator) (*ControlPlane, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	token, err := cfg.token()
	if err != nil {
		return nil, err
	}
	cli, err := etcdclient.New(ctx, etcdclient.DefaultConfig(cfg.Common.Endpoints()...))
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.AdminListen)
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("admin API: listen on %s: %w", cfg.AdminListen, err)
	}
	cp := &ControlPlane{
		cfg:     cfg,
		log:     log,
		token:   token,
		cli:     cli,
		ln:      ln,
		addr:    advertiseAddr(cfg.AdminAdvertise, ln.Addr().(*net.TCPAddr)),
		metrics: newMetrics(cfg.Common.ID, cfg.Common.Region, cfg.Common.Zone),
		prober:  newProber(),
		probes:  newRegionProbes(),
	}
	if act == nil {
		if act, err = newActuator(cfg, token); err != nil {
			ln.Close()
			cli.Close()
			return nil, err
		}
	}
	cp.actuator = act
	cp.srv = &http.Server{Handler: cp.handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := cp.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.WithError(err).Error("admin API stopped")
		}
	}()

	log.WithFields(logrus.Fields{"etcd": cfg.Common.EtcdEndpoints, "admin_addr": cp.addr}).Info("registering in etcd")
	cp.reg, err = membership.Register(ctx, cli, cfg.Common.Prefix, membership.Member{
		Role:      membership.RoleControlPlane,
		ID:        cfg.Common.ID,
		Addr:      cp.addr,
		Region:    cfg.Common.Region,
		Zone:      cfg.Common.Zone,
		Version:   Version,
		PID:       os.Getpid(),
		StartedAt: time.Now().UTC(),
	}, cfg.Common.LeaseTTL, log)
	if err != nil {
		_ = cp.srv.Close()
		cli.Close()
		return nil, err
	}

	rctx, cancel := context.WithCancel(context.Background())
	cp.cancel = cancel
	cp.wg.Add(3)
	go func() { defer cp.wg.Done(); cp.electionLoop(rctx) }()
	go func() { defer cp.wg.Done(); cp.probeLoop(rctx) }()
	go func() { defer cp.wg.Done(); cp.observeLeader(rctx) }()
	log.WithField("admin_addr", cp.addr).Info("control plane started; campaigning for leadership")
	return cp, nil
}

// advertiseAddr is the admin address others dial.
func advertiseAddr(advertise string, l *net.TCPAddr) string {
	if advertise != "" {
		return advertise
	}
	if l.IP.IsUnspecified() {
		if h, err := os.Hostname(); err == nil && h != "" {
			return net.JoinHostPort(h, fmt.Sprint(l.Port))
		}
		return net.JoinHostPort("127.0.0.1", fmt.Sprint(l.Port))
	}
	return l.String()
}

// AdminAddr is the admin API's host:port, as advertised in membership.
func (cp *ControlPlane) AdminAddr() string { return cp.addr }

// AdminURL is http://AdminAddr.
func (cp *ControlPlane) AdminURL() string { return "http://" + cp.addr }

// IsLeader reports whether this instance holds the leadership now.
func (cp *ControlPlane) IsLeader() bool { return cp.leader.Load() }

// Close resigns leadership (so a standby takes over at once), leaves
// membership, and stops the admin API. It is safe to call more than once.
func (cp *ControlPlane) Close() {
	cp.once.Do(func() {
		cp.cancel()
		cp.wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := cp.reg.Close(ctx); err != nil {
			cp.log.WithError(err).Debug("leaving membership: revoke failed; the key goes when its lease expires")
		}
		_ = cp.srv.Shutdown(ctx)
		cp.prober.http.CloseIdleConnections()
		_ = cp.cli.Close()
		cp.log.Info("control plane stopped")
	})
}

// crash stops the instance as a crash would look to etcd: the client goes
// first, so neither the election lease nor the membership lease is
// revoked; both expire by TTL. For tests.
func (cp *ControlPlane) crash() {
	_ = cp.cli.Close()
	cp.Close()
}

func (cp *ControlPlane) electionPrefix() string {
	return cp.cfg.Common.Prefix + "election/controlplane"
}

// electionLoop campaigns, leads while elected, and campaigns again with a
// new session whenever a term ends, until ctx ends.
func (cp *ControlPlane) electionLoop(ctx context.Context) {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := cp.term(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			cp.log.WithError(err).Warn("election: campaign failed; retrying")
			sleep(ctx, backoff)
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 200 * time.Millisecond
	}
}

// term runs one session: campaign, and if elected, lead until the
// leadership or ctx ends. The session is closed (lease revoked, election key
// deleted) before it returns.
func (cp *ControlPlane) term(ctx context.Context) error {
	ttl := cp.cfg.electionTTLSeconds()
	// A per-call timeout: a frozen etcd member must not hold the campaign.
	gctx, gcancel := etcdclient.RequestTimeout(ctx)
	g, err := cp.cli.Grant(gctx, int64(ttl))
	gcancel()
	if err != nil {
		return fmt.Errorf("grant election lease: %w", err)
	}
	// The lease is renewed by etcdclient.KeepAlive (one short request per
	// renewal, each free to use any member), not by a concurrency.Session:
	// clientv3 renews every lease of a client over one stream, which a
	// frozen etcd member stalls until gRPC keepalive gives up (12 s),
	// longer than the TTL.
	defer func() {
		// Revoke at once so a standby need not wait for the TTL.
		rctx, cancel := etcdclient.RequestTimeout(context.Background())
		defer cancel()
		if _, err := cp.cli.Revoke(rctx, g.ID); err != nil && cp.cli.Ctx().Err() == nil {
			cp.log.WithError(err).Debug("election: revoking the session lease failed; it expires by TTL")
		}
	}()

	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The term (or the campaign) ends when the lease can no longer be
	// renewed: the channel closes when it is gone or a whole TTL passed
	// without a renewal.
	renewed := etcdclient.KeepAlive(tctx, cp.cli, g.ID)
	lost := make(chan struct{})
	go func() {
		for range renewed {
		}
		close(lost)
		cancel()
	}()

	val, _ := json.Marshal(LeaderInfo{ID: cp.cfg.Common.ID, AdminAddr: cp.addr})
	key, rev, err := campaign(tctx, cp.cli, g.ID, cp.electionPrefix(), string(val))
	if err != nil {
		if tctx.Err() != nil {
			return nil // ctx ended or the lease was lost: campaign again
		}
		return fmt.Errorf("campaign: %w", err)
	}
	// The key may have vanished (lease lost) while the wait ended; make
	// sure it is still ours before acting as leader.
	cctx, ccancel := etcdclient.RequestTimeout(tctx)
	resp, err := cp.cli.Get(cctx, key)
	ccancel()
	if err != nil {
		return fmt.Errorf("check election key: %w", err)
	}
	if len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != rev {
		cp.log.Warn("election: won, but the election key is already gone; campaigning again")
		return nil
	}
	lead := leadership{cli: cp.cli, key: key, rev: rev, since: time.Now()}
	log := cp.log.WithField("term", lead.rev)
	cp.lead.Store(&lead)
	cp.leader.Store(true)
	cp.metrics.isLeader.Set(1)
	log.Info("elected control-plane leader")

	err = cp.runLeader(tctx, lead)

	cp.leader.Store(false)
	cp.lead.Store(nil)
	cp.metrics.isLeader.Set(0)
	switch {
	case ctx.Err() != nil:
		log.Info("resigning leadership: stopping")
	case errors.Is(err, ErrNotLeader):
		log.Warn("leadership lost: a fenced write was refused; campaigning again")
	default:
		select {
		case <-lost:
			log.Warn("leadership lost: the election lease could not be renewed; campaigning again")
		default:
			log.WithError(err).Warn("leader loops ended; resigning and campaigning again")
		}
	}
	return nil
}

// runLeader runs the leader loops until ctx ends (leadership lost or
// stopping) or a loop fails with ErrNotLeader: placement (single-replica
// placement, or in raft mode the planner and executor) and the region
// loop, which only switches the active region and records history.
func (cp *ControlPlane) runLeader(ctx context.Context, lead leadership) error {
	backoff := 200 * time.Millisecond
	for {
		cc, err := cp.ensureCluster(ctx, lead)
		if err == nil {
			lctx, cancel := context.WithCancel(ctx)
			defer cancel()
			errs := make(chan error, 3)
			go func() {
				if cp.cfg.ReplicationMode == ReplicationRaft {
					errs <- cp.raftPlacementLoop(lctx, lead, cc)
				} else {
					errs <- cp.placementLoop(lctx, lead, cc)
				}
			}()
			go func() { errs <- cp.regionLoop(lctx, lead) }()
			go func() { errs <- cp.autohealLoop(lctx, lead) }()
			err := <-errs
			cancel()
			<-errs
			<-errs
			return err
		}
		if errors.Is(err, ErrNotLeader) || ctx.Err() != nil {
			return err
		}
		cp.log.WithError(err).Error("cannot create or read the cluster config; retrying")
		sleep(ctx, backoff)
		backoff = min(2*backoff, 5*time.Second)
	}
}

// observeLeader counts leader changes for the metric, on every instance.
func (cp *ControlPlane) observeLeader(ctx context.Context) {
	var last string
	_ = etcdwatch.Run(ctx, cp.cli, cp.electionPrefix()+"/", etcdwatch.Options{}, func(etcdwatch.Snapshot) {
		gctx, cancel := context.WithTimeout(ctx, etcdTimeout)
		defer cancel()
		li, rev, err := cp.currentLeader(gctx)
		if err != nil {
			return
		}
		cur := fmt.Sprintf("%s@%d", li.ID, rev)
		if cur != last {
			last = cur
			cp.metrics.leaderChanges.Inc()
			cp.log.WithFields(logrus.Fields{"leader": li.ID, "leader_admin_addr": li.AdminAddr, "term": rev}).Info("control-plane leader is now")
		}
	})
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
