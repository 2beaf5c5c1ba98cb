package worker

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/etcdclient"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/peerconn"
	"github.com/erlmcp/erlmcp/sessionstore/client"
)

// Shutdown bounds.
const (
	// ShutdownTimeout bounds http.Server.Shutdown: in-flight requests get
	// this long to finish.
	ShutdownTimeout = 10 * time.Second
	// etcdOpTimeout bounds the membership update and revoke at shutdown
	// and the etcd probe of /readyz.
	etcdOpTimeout = 2 * time.Second
	// storeReadyWait bounds the wait for the store client before the
	// worker registers (Run).
	storeReadyWait = 10 * time.Second
	// drainQuiet is how long no request must arrive, with none running,
	// after the worker left membership before its HTTP server shuts down,
	// and drainQuietMax bounds that wait (Handler.AwaitQuiet): a front
	// applies a membership change within milliseconds unless starved, and
	// a request's store calls end within the request timeout. Requests
	// still running then get the rest of ShutdownTimeout.
	drainQuiet    = 300 * time.Millisecond
	drainQuietMax = 5 * time.Second
)

// Run serves a worker until ctx ends: it connects to etcd and the session
// store, listens on cfg.Listen, registers in membership (role worker, Addr
// the bound host:port) and serves. When ctx ends it marks itself draining
// in membership, leaves membership, and shuts the HTTP server down (at most
// ShutdownTimeout). It returns nil after a clean shutdown.
//
// opts are applied after Run's own options: WithServer serves a custom
// set of tools, resources and prompts instead of cfg.Toolset.
func Run(ctx context.Context, cfg Config, log *logrus.Entry, opts ...Option) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	cli, err := etcdclient.New(ctx, etcdclient.DefaultConfig(cfg.Common.Endpoints()...))
	if err != nil {
		return err
	}
	defer cli.Close()

	sc, err := client.New(ctx, storeClientConfig(cfg, cli, log))
	if err != nil {
		return fmt.Errorf("session store client: %w", err)
	}
	defer sc.Close()

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (choose another --listen)", cfg.Listen, err)
	}
	addr := advertiseAddr(ln.Addr())

	var modern []Option
	if cfg.Sessionless {
		kctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
		key, err := mrtrKeyFromEtcd(kctx, cli, cfg.Common.Prefix)
		cancel()
		if err != nil {
			ln.Close()
			return err
		}
		modern = []Option{WithMRTRKey(key), WithBroker(NewEtcdBroker(cli, cfg.Common.Prefix))}
	}
	opts = append(modern, opts...)
	self := membership.Member{
		Role:      membership.RoleWorker,
		ID:        cfg.Common.ID,
		Addr:      addr,
		Region:    cfg.Common.Region,
		Zone:      cfg.Common.Zone,
		Version:   cfg.Version,
		PID:       os.Getpid(),
		StartedAt: time.Now(),
	}
	opts = append([]Option{WithIncarnation(incarnationOf(self))}, opts...)
	h := NewHandler(StoreFromClient(sc), append([]Option{WithConfig(cfg), WithLogger(log), WithReadiness(func(ctx context.Context) error {
		return ready(ctx, cli, cfg.Common.Prefix, sc)
	}), WithAlive(func(id string) bool { return workerAlive(cli, cfg.Common.Prefix, id) })}, opts...)...)
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext:       peerconn.ConnContext, // see Handler.post
		IdleTimeout:       2 * time.Minute,
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	shutdown := func() {
		sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			log.WithError(err).Warn("HTTP shutdown did not finish in time; closing connections")
			_ = srv.Close()
		}
	}

	// Fronts send requests as soon as the worker is a member; until the
	// store client knows the shard map and the store nodes, each would
	// wait for them in its store calls (a restarted worker in a rolling
	// restart answered its first requests 503 after the request timeout).
	// So register once the client is ready, or after storeReadyWait
	// anyway (the store may be down; /readyz then says why).
	rctx, rcancel := context.WithTimeout(ctx, storeReadyWait)
	if err := sc.Ready(rctx); err != nil && ctx.Err() == nil {
		log.WithError(err).Warnf("the session store client is not ready after %s; registering anyway", storeReadyWait)
	}
	rcancel()
	log.WithFields(logrus.Fields{"addr": addr, "etcd": cfg.Common.EtcdEndpoints}).Info("worker listening; registering in etcd")
	reg, err := membership.Register(ctx, cli, cfg.Common.Prefix, self, cfg.Common.LeaseTTL, log)
	if err != nil {
		shutdown()
		if ctx.Err() != nil {
			return nil // stopped before registering
		}
		return err
	}
	log.WithField("addr", addr).Info("worker registered; serving MCP on /mcp")
	sweepCtx, stopSweep := context.WithCancel(context.WithoutCancel(ctx))
	sweepDone := make(chan struct{})
	go func() {
		defer close(sweepDone)
		scfg := SweeperConfig{Delay: cfg.SweepDelay, Interval: min(DefaultSweepInterval, cfg.SweepDelay/3)}
		if err := h.RunSweeper(sweepCtx, cli, cfg.Common.Prefix, self, scfg); err != nil {
			log.WithError(err).Warn("the death sweep is not running; dead workers' requests are resolved only when their clients return")
		}
	}()
	defer func() { stopSweep(); <-sweepDone }()

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		// The server stopped on its own: leave membership and report it.
		h.SetDraining(true)
		cctx, cancel := context.WithTimeout(context.Background(), etcdOpTimeout)
		_ = reg.Close(cctx)
		cancel()
		return fmt.Errorf("HTTP server on %s stopped: %w", addr, err)
	}

	log.Info("worker draining")
	h.SetDraining(true)
	h.Close()
	uctx, cancel := context.WithTimeout(context.Background(), etcdOpTimeout)
	if err := reg.Update(uctx, func(m *membership.Member) { m.Draining = true }); err != nil {
		log.WithError(err).Warn("could not mark the worker draining in membership")
	}
	cancel()
	cctx, cancel := context.WithTimeout(context.Background(), etcdOpTimeout)
	if err := reg.Close(cctx); err != nil {
		log.WithError(err).Warn("could not revoke the membership lease; it expires by itself")
	}
	cancel()
	qctx, cancel := context.WithTimeout(context.Background(), drainQuietMax)
	if !h.AwaitQuiet(qctx, drainQuiet) {
		log.WithField("running", h.active.Load()).Warnf("requests still arriving or running %s after leaving membership; shutting down anyway", drainQuietMax)
	}
	cancel()
	shutdown()
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("HTTP server on %s: %w", addr, err)
	}
	log.Info("worker stopped")
	return nil
}

// workerAlive reports whether worker id is registered in membership. When
// etcd cannot answer it says yes: a request is failed only on a definite
// answer that its worker is gone.
func workerAlive(cli *clientv3.Client, prefix, id string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), etcdOpTimeout)
	defer cancel()
	resp, err := cli.Get(ctx, membership.Key(prefix, membership.RoleWorker, id), clientv3.WithCountOnly())
	if err != nil {
		return true
	}
	return resp.Count > 0
}

// storeClientConfig is the session store client's configuration for a
// worker. RetryBudget is the request timeout: a tools/call's ctx runs for
// up to CallTimeout, and each store call the handler makes for it
// (GetState, PutState, notifications, stream events) must still end with
// ErrUnavailable, answered as 503 or -32003, before the client's own
// timeout, not wait out that ctx on a shard without a leader. A long-poll
// gets its wait on top (the client adds it).
func storeClientConfig(cfg Config, cli *clientv3.Client, log *logrus.Entry) client.Config {
	return client.Config{
		Etcd:           cli,
		Prefix:         cfg.Common.Prefix,
		RequestTimeout: storeAttemptTimeout(cfg.RequestTimeout),
		RetryBudget:    cfg.RequestTimeout,
		Log:            log,
	}
}

// storeAttemptTimeout caps the store client's per-attempt timeout: its
// attempts start short (client.DefaultAttemptTimeout, so a stalled store
// node costs little) and grow up to this cap when they keep timing out;
// half the request's budget leaves a starved but live store (seconds per
// answer under CPU contention) time to answer one attempt instead of
// cancelling each and retrying, and still fits a first short attempt and
// a retry elsewhere in the budget.
func storeAttemptTimeout(request time.Duration) time.Duration {
	return max(request/2, 250*time.Millisecond)
}

// ready is the /readyz check: etcd answers a linearizable read and the
// store client knows the shard map and a store node.
func ready(ctx context.Context, cli *clientv3.Client, prefix string, sc *client.Client) error {
	ectx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
	defer cancel()
	if _, err := cli.Get(ectx, clusterstate.ConfigKey(prefix), clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	if err := sc.Ready(ctx); err != nil {
		return err
	}
	return nil
}

// advertiseAddr is the address registered in membership: the bound
// address, with the host name in place of an unspecified IP (0.0.0.0, ::).
func advertiseAddr(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok || !tcp.IP.IsUnspecified() {
		return a.String()
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		return a.String()
	}
	return net.JoinHostPort(host, fmt.Sprint(tcp.Port))
}

// mrtrKeyFromEtcd returns the cluster's MRTR signing key, etcd key
// <prefix>config/mrtr-key: the stored one, or a new random one that this
// worker creates when it is absent (create-if-absent, so concurrent
// workers agree on the first one written).
func mrtrKeyFromEtcd(ctx context.Context, cli *clientv3.Client, prefix string) ([]byte, error) {
	key := prefix + "config/mrtr-key"
	fresh := hex.EncodeToString(newMRTRKey())
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, fresh)).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return nil, fmt.Errorf("read or create the MRTR key %s in etcd: %w", key, err)
	}
	if resp.Succeeded {
		return hex.DecodeString(fresh)
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) != 1 {
		return nil, fmt.Errorf("the MRTR key %s vanished while read", key)
	}
	b, err := hex.DecodeString(string(kvs[0].Value))
	if err != nil || len(b) < 16 {
		return nil, fmt.Errorf("the MRTR key %s is not at least 16 hex-encoded bytes", key)
	}
	return b, nil
}
