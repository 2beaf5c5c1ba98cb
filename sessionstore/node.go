package sessionstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/etcdclient"
	"github.com/erlmcp/erlmcp/internal/etcdwatch"
	"github.com/erlmcp/erlmcp/internal/membership"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"github.com/erlmcp/erlmcp/sessionstore/multiraft"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
)

// Shutdown bounds.
const (
	gracefulStopTimeout = 5 * time.Second
	deregisterTimeout   = 2 * time.Second
)

// Node is a running store node.
type Node struct {
	cfg   Config
	log   *logrus.Entry
	etcd  *clientv3.Client
	store storage
	// raft is store as a raftStorage (nil in unit tests that give the node
	// another storage); tr is its transport.
	raft *raftStorage
	tr   *multiraft.GRPCTransport
	// placeC is signalled on every shard map or membership change.
	placeC chan struct{}
	ln     net.Listener
	srv    *grpc.Server
	health *health.Server
	reg    *membership.Registration
	addr   string
	// advertise is the address registered in membership.
	advertise string

	metrics *metrics
	// The HTTP listener (metrics and health), nil without --http-listen.
	httpLn   net.Listener
	httpSrv  *http.Server
	httpDone chan struct{}

	// waiters wakes ReadEvents long-polls; stopping is closed when Close
	// starts, ending them.
	waiters  *waiters
	stopping chan struct{}

	// leaseUntil is when this node stops serving unless its membership
	// lease is renewed first (nil: not tracked, as in unit tests that
	// build a Node without etcd; the zero time: lost).
	leaseUntil atomic.Pointer[time.Time]

	// route is nil until the cluster config and the first shard map
	// snapshot are known; requests are refused with UNAVAILABLE until then.
	route atomic.Pointer[routing]

	mu       sync.Mutex // guards the fields below, which build route
	cluster  *clusterstate.ClusterConfig
	shardKVs map[string][]byte
	stores   map[string]membership.Member
	// storesChanged is closed and replaced on every store membership
	// snapshot.
	storesChanged chan struct{}

	now       func() time.Time
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	ready     chan struct{}
	readyOnce sync.Once
	closeOnce sync.Once
	closeErr  error
}

// routing is one consistent view of who hosts what.
type routing struct {
	cluster clusterstate.ClusterConfig
	shards  []clusterstate.Shard
	stores  map[string]membership.Member
	// raftStores maps Raft store ids to member ids (registered stores and
	// stores the shard map names).
	raftStores map[uint32]string
	// format is the command format to propose (proposedFormat).
	format byte
	// leases: lease reads are on (uniformTiming).
	leases bool
}

// Run starts a node, serves until ctx ends, then shuts down gracefully.
func Run(ctx context.Context, cfg Config, log *logrus.Entry) error {
	n, err := Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("store node stopping")
	return n.Close()
}

// resolveStore is the Raft transport's address book: a Raft store id's
// member, and its registered address.
func (n *Node) resolveStore(id multiraft.StoreID) (string, error) {
	r := n.route.Load()
	if r == nil {
		return "", errors.New("membership not known yet")
	}
	member, ok := r.raftStores[uint32(id)]
	if !ok {
		return "", fmt.Errorf("no store with Raft id %d known", id)
	}
	m, ok := r.stores[member]
	if !ok || m.Addr == "" {
		return "", fmt.Errorf("store %q is not registered", member)
	}
	return m.Addr, nil
}

// streamWorkers is how many goroutines of the node's gRPC server take
// RPCs in turn (grpc.NumStreamWorkers); an RPC that finds them all busy
// gets a goroutine of its own, as without them. A fresh goroutine per RPC
// starts with a small stack, and the store's handlers grow it every time:
// under the store benchmark's gets, stack copying was 3 % of the CPU, and
// with the workers reads went 13-15 % faster at 16 and 64 clients with
// 12 % less CPU per read (docs/benchmarks.md); writes, whose handlers
// wait for Raft and mostly find the workers busy, did not move. 16 and 64
// measured the same. A long-lived handler holds its worker for its life
// (a peer's Raft stream, a snapshot, a ReadEvents long-poll): with more
// than 64 of them open every RPC gets its own goroutine again, slower by
// the stack growth but otherwise the same.
const streamWorkers = 64

// Start opens the data file, connects to etcd, starts serving gRPC on
// cfg.Listen and registers the node in membership. It returns once the
// node is registered; the node serves requests once it has read the
// cluster config and shard map (see Ready), which it waits for in the
// background. ctx bounds only the start; Close stops the node.
func Start(ctx context.Context, cfg Config, log *logrus.Entry) (_ *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	n := &Node{cfg: cfg, log: log, now: time.Now, ready: make(chan struct{}),
		waiters: newWaiters(), stopping: make(chan struct{}), storesChanged: make(chan struct{}),
		placeC: make(chan struct{}, 1)}
	n.metrics = newMetrics(n)
	var cleanups []func()
	defer func() {
		if err != nil {
			for i := len(cleanups) - 1; i >= 0; i-- {
				cleanups[i]()
			}
		}
	}()

	if err := claimDataDir(cfg.DataDir, cfg.Common.ID); err != nil {
		return nil, err
	}
	raftID := multiraft.StoreID(clusterstate.RaftStoreID(cfg.Common.ID))
	n.tr = multiraft.NewGRPCTransport(multiraft.GRPCConfig{Store: raftID, Resolve: n.resolveStore})
	cleanups = append(cleanups, func() { _ = n.tr.Close() })
	var tr multiraft.Transport = n.tr
	if cfg.wrapTransport != nil {
		tr = cfg.wrapTransport(tr)
	}
	rs := &raftStorage{n: n, clocks: map[uint32]int64{}, wakes: map[uint32][]func(){}}
	// Open replays the WAL (up to one segment) and the committed entries
	// raft.db had not checkpointed; its time is most of a restart's.
	openStart, walBytes := time.Now(), dirBytes(filepath.Join(cfg.DataDir, "wal"))
	rs.mr, err = multiraft.Open(multiraft.Config{
		Store:         raftID,
		Dir:           cfg.DataDir,
		StateMachine:  stateMachine{rs: rs},
		Transport:     tr,
		TickInterval:  cfg.RaftTickInterval,
		ElectionTicks: raftElectionTicks,
		ReadIndexOnly: cfg.ReadIndexOnly,
		OnApplied:     rs.onApplied,
	})
	if err != nil {
		if strings.Contains(err.Error(), "timeout") {
			return nil, fmt.Errorf("open %s: the file is locked by another process (is another store node using --data-dir %s?)", filepath.Join(cfg.DataDir, "raft.db"), cfg.DataDir)
		}
		return nil, err
	}
	log.WithFields(logrus.Fields{"replicas": len(rs.mr.Shards()), "wal_bytes": walBytes,
		"took": time.Since(openStart).Round(time.Millisecond).String()}).Info("Raft storage opened: replicas loaded and the log replayed")
	// No lease reads until every store's timing is known (publishLocked).
	rs.mr.SetLeaseReads(false)
	n.raft, n.store = rs, rs
	cleanups = append(cleanups, func() { _ = rs.close() })

	n.etcd, err = etcdclient.New(ctx, etcdclient.DefaultConfig(cfg.Common.Endpoints()...))
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { _ = n.etcd.Close() })

	n.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s for gRPC: %w (choose another --listen)", cfg.Listen, err)
	}
	n.addr = n.ln.Addr().String()
	n.advertise, err = advertiseAddr(cfg.Advertise, n.addr)
	if err != nil {
		_ = n.ln.Close()
		return nil, err
	}

	opts := append(multiraft.ServerOptions(), n.metrics.serverOptions()...)
	n.srv = grpc.NewServer(append(opts, grpc.NumStreamWorkers(streamWorkers))...)
	pb.RegisterSessionStoreServiceServer(n.srv, &service{n: n})
	pb.RegisterStoreAdminServiceServer(n.srv, &adminService{n: n})
	n.tr.Register(n.srv)
	n.health = health.NewServer()
	n.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	n.health.SetServingStatus(pb.SessionStoreService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(n.srv, n.health)
	reflection.Register(n.srv)
	serveDone := make(chan struct{})
	go func() {
		defer close(serveDone)
		if err := n.srv.Serve(n.ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			n.log.WithError(err).Error("gRPC server stopped")
		}
	}()
	cleanups = append(cleanups, func() { n.srv.Stop(); <-serveDone })

	httpAddr, err := n.startHTTP()
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { n.stopHTTP(context.Background()) })

	wctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	cleanups = append(cleanups, func() { cancel(); n.wg.Wait() })
	n.wg.Add(3)
	go func() { defer n.wg.Done(); n.observeLeaders(wctx) }()
	go func() { defer n.wg.Done(); n.watchStores(wctx) }()
	go func() { defer n.wg.Done(); n.watchClusterAndShards(wctx) }()

	started := time.Now()
	m := membership.Member{
		Role:     membership.RoleStore,
		ID:       cfg.Common.ID,
		Addr:     n.advertise,
		HTTPAddr: httpAddr,
		Region:   cfg.Common.Region,
		Zone:     cfg.Common.Zone,
		Version:  buildVersion(),
		// Proposed by the cluster once every store applies it (format.go).
		CommandFormat: int(maxCommandFormat),
		// Lease reads need the same on every store (uniformTiming).
		RaftTickMs:        int(cfg.RaftTickInterval / time.Millisecond),
		RaftElectionTicks: raftElectionTicks,
		PID:               os.Getpid(),
		StartedAt:         started,
	}
	log.WithFields(logrus.Fields{"addr": n.addr, "advertise": n.advertise, "http_addr": httpAddr, "etcd": cfg.Common.EtcdEndpoints}).Info("gRPC listening; registering in etcd")
	n.reg, err = membership.Register(ctx, n.etcd, cfg.Common.Prefix, m, cfg.Common.LeaseTTL, log)
	if err != nil {
		return nil, err
	}
	// The lease was granted after started, so it cannot expire before
	// started + TTL.
	until := started.Add(cfg.Common.LeaseTTL - leaseMargin(cfg.Common.LeaseTTL))
	n.leaseUntil.Store(&until)
	n.wg.Add(4)
	go func() { defer n.wg.Done(); n.guardLease(wctx) }()
	go func() { defer n.wg.Done(); n.placeLoop(wctx) }()
	go func() { defer n.wg.Done(); n.statusLoop(wctx) }()
	go func() { defer n.wg.Done(); n.sweepLoop(wctx) }()
	n.log.WithFields(logrus.Fields{"addr": n.addr, "advertise": n.advertise, "data_dir": cfg.DataDir}).Info("store node registered; waiting for the cluster config and shard map")
	return n, nil
}

// advertiseAddr is the address to register: advertise if set, else the
// bound address with an unspecified IP replaced by the hostname.
func advertiseAddr(advertise, bound string) (string, error) {
	if advertise != "" {
		return advertise, nil
	}
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return "", fmt.Errorf("bound address %q: %w", bound, err)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		h, err := os.Hostname()
		if err != nil || h == "" {
			return "", fmt.Errorf("listening on all interfaces (%s) and cannot find this host's name to register (%v): set --advertise host:port", bound, err)
		}
		host = h
	}
	return net.JoinHostPort(host, port), nil
}

func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.Main.Version
	}
	return ""
}

// Addr is the gRPC address the node listens on.
func (n *Node) Addr() string { return n.addr }

// AdvertiseAddr is the gRPC address registered in membership.
func (n *Node) AdvertiseAddr() string { return n.advertise }

// ID is the node's member id.
func (n *Node) ID() string { return n.cfg.Common.ID }

// Ready is closed once the node has read the cluster config and the shard
// map and serves requests.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// Close stops the node: health goes NOT_SERVING, the membership key is
// removed, the shards it leads are handed to peers (bounded by
// leaderHandoffTimeout), in-flight requests finish (bounded), then the
// data file is closed. It is safe to call more than once.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		start := time.Now()
		defer func() {
			n.log.WithField("took", time.Since(start).Round(time.Millisecond).String()).Info("store node stopped")
		}()
		close(n.stopping)
		n.health.Shutdown()
		ctx, cancel := context.WithTimeout(context.Background(), deregisterTimeout)
		if err := n.reg.Close(ctx); err != nil {
			n.log.WithError(err).Warn("could not remove membership key; it goes when the lease expires")
		}
		cancel()
		// Leaders hand their shards over while replication still runs, so
		// the shards do not wait an election timeout for a new leader.
		hctx, hcancel := context.WithTimeout(context.Background(), leaderHandoffTimeout)
		n.handOffLeadership(hctx)
		hcancel()
		// Replication stops next: in-flight writes fail UNAVAILABLE (their
		// outcome unknown; clients retry with the same request id on the
		// new leader), peers' Raft streams end, then the server drains.
		n.cancel()
		n.wg.Wait()
		var errs []error
		if err := n.store.close(); err != nil {
			errs = append(errs, fmt.Errorf("close data file: %w", err))
		}
		if n.tr != nil {
			_ = n.tr.Close()
		}
		stopped := make(chan struct{})
		go func() { n.srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(gracefulStopTimeout):
			n.log.Warn("in-flight requests did not finish in time; stopping hard")
			n.srv.Stop()
			<-stopped
		}
		sctx, scancel := context.WithTimeout(context.Background(), gracefulStopTimeout)
		n.stopHTTP(sctx)
		scancel()
		if err := n.etcd.Close(); err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, fmt.Errorf("close etcd client: %w", err))
		}
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

func (n *Node) watchStores(ctx context.Context) {
	_ = etcdwatch.Run(ctx, n.etcd, membership.RolePrefix(n.cfg.Common.Prefix, membership.RoleStore),
		etcdwatch.Options{OnError: n.watchError("store membership")},
		func(s etcdwatch.Snapshot) {
			stores := map[string]membership.Member{}
			for _, m := range membership.FromKVs(s.KVs) {
				stores[m.ID] = m
			}
			n.mu.Lock()
			n.stores = stores
			close(n.storesChanged)
			n.storesChanged = make(chan struct{})
			n.publishLocked()
			n.mu.Unlock()
		})
}

func (n *Node) watchClusterAndShards(ctx context.Context) {
	backoff := 100 * time.Millisecond
	var cc clusterstate.ClusterConfig
	for {
		var err error
		cc, err = clusterstate.GetConfig(ctx, n.etcd, n.cfg.Common.Prefix)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, clusterstate.ErrNoClusterConfig) {
			n.log.Debug("cluster config not in etcd yet; waiting for the control plane to create the cluster")
		} else {
			n.log.WithError(err).Warn("cannot read the cluster config; will retry")
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
	n.mu.Lock()
	n.cluster = &cc
	n.mu.Unlock()
	n.log.WithField("shard_count", cc.ShardCount).Info("cluster config read")
	_ = etcdwatch.Run(ctx, n.etcd, clusterstate.ShardsPrefix(n.cfg.Common.Prefix),
		etcdwatch.Options{OnError: n.watchError("shard map")},
		func(s etcdwatch.Snapshot) {
			n.mu.Lock()
			n.shardKVs = s.KVs
			n.publishLocked()
			n.mu.Unlock()
		})
}

func (n *Node) watchError(what string) func(error) {
	return func(err error) {
		n.log.WithError(err).Warnf("watch of the %s broke; listing again", what)
	}
}

// publishLocked builds a new routing view once the cluster config and
// shard map are known, and marks the node ready the first time.
func (n *Node) publishLocked() {
	if n.cluster == nil || n.shardKVs == nil {
		return
	}
	r := &routing{
		cluster:    *n.cluster,
		shards:     clusterstate.DecodeShards(n.cfg.Common.Prefix, n.cluster.ShardCount, n.shardKVs),
		stores:     n.stores,
		raftStores: map[uint32]string{},
	}
	for _, sh := range r.shards {
		for _, rep := range sh.Replicas {
			r.raftStores[clusterstate.RaftStoreID(rep.Store)] = rep.Store
		}
	}
	for id := range r.stores {
		r.raftStores[clusterstate.RaftStoreID(id)] = id
	}
	var holdout string
	r.format, holdout = proposedFormat(r.stores, r.shards)
	if old := n.route.Load(); old == nil || old.format != r.format {
		n.log.WithFields(logrus.Fields{"format": r.format, "newest": maxCommandFormat, "held_back_by": holdout}).
			Info("session store command format to propose (the newest every store applies)")
	}
	leases, odd := uniformTiming(r.stores, r.shards, int(n.cfg.RaftTickInterval/time.Millisecond), raftElectionTicks)
	r.leases = leases && !n.cfg.ReadIndexOnly
	if old := n.route.Load(); old == nil || old.leases != r.leases {
		f := n.log.WithFields(logrus.Fields{"lease_reads": r.leases, "read_index_only": n.cfg.ReadIndexOnly})
		if !leases {
			f = f.WithField("timing_differs_or_unknown", odd)
		}
		f.Info("leader leases for reads (on only while every store runs the same Raft tick and election timeout)")
	}
	if n.raft != nil {
		n.raft.mr.SetLeaseReads(r.leases)
	}
	n.route.Store(r)
	select {
	case n.placeC <- struct{}{}:
	default:
	}
}

// markReady marks the node ready (serving) the first time its replicas
// have been reconciled with the shard map.
func (n *Node) markReady(r *routing) {
	n.readyOnce.Do(func() {
		hosted := 0
		for _, s := range r.shards {
			if s.Hosts(n.cfg.Common.ID) {
				hosted++
			}
		}
		n.log.WithField("shards_hosted", hosted).Info("shard map read and replicas started; serving")
		close(n.ready)
		n.setHealth(n.leaseHeld())
	})
}

// dirBytes is the total size of the files in dir (0 when it cannot be
// read): logged, never relied on.
func dirBytes(dir string) int64 {
	var total int64
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if info, err := e.Info(); err == nil && !e.IsDir() {
			total += info.Size()
		}
	}
	return total
}
