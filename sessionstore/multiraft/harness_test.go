package multiraft

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
)

// kvSM is the test state machine: a map of registers with put and
// compare-and-set.
type kvSM struct{}

type kvCmd struct {
	Op  string `json:"op"` // put, cas
	Key string `json:"key"`
	Val string `json:"val,omitempty"`
	Old string `json:"old,omitempty"`
}

type kvResult struct {
	OK  bool   `json:"ok"`
	Val string `json:"val"` // value after the command
}

func (kvSM) Apply(b *bolt.Bucket, shard uint32, index uint64, cmd []byte) ([]byte, error) {
	var c kvCmd
	if err := json.Unmarshal(cmd, &c); err != nil {
		return json.Marshal(kvResult{})
	}
	cur := string(b.Get([]byte(c.Key)))
	res := kvResult{Val: cur}
	switch c.Op {
	case "put":
		res = kvResult{OK: true, Val: c.Val}
	case "cas":
		if cur == c.Old {
			res = kvResult{OK: true, Val: c.Val}
		}
	}
	if res.OK {
		if err := b.Put([]byte(c.Key), []byte(res.Val)); err != nil {
			return nil, err
		}
	}
	return json.Marshal(res)
}

func (kvSM) Snapshot(b *bolt.Bucket, shard uint32, w io.Writer) error { return SnapshotBucket(b, w) }
func (kvSM) Restore(b *bolt.Bucket, shard uint32, r io.Reader) error  { return RestoreBucket(b, r) }

func putCmd(k, v string) []byte { b, _ := json.Marshal(kvCmd{Op: "put", Key: k, Val: v}); return b }
func casCmd(k, old, v string) []byte {
	b, _ := json.Marshal(kvCmd{Op: "cas", Key: k, Old: old, Val: v})
	return b
}

// testCluster is an in-process cluster of store nodes talking over loopback
// gRPC, with fault injection between the node and its transport.
type testCluster struct {
	t     testing.TB
	dir   string
	tweak func(*Config)

	mu       sync.Mutex
	faults   map[StoreID]*diskFaults // per store, kept across restarts
	nodes    map[StoreID]*testNode
	blocked  map[[2]StoreID]bool
	isolated map[StoreID]bool
}

type testNode struct {
	store  StoreID
	dir    string
	addr   string
	srv    *grpc.Server
	tr     *GRPCTransport
	node   *Node
	resume chan struct{}
}

func newTestCluster(t testing.TB, n int, tweak func(*Config)) *testCluster {
	c := &testCluster{
		t: t, dir: t.TempDir(), tweak: tweak,
		faults: map[StoreID]*diskFaults{},
		nodes:  map[StoreID]*testNode{}, blocked: map[[2]StoreID]bool{}, isolated: map[StoreID]bool{},
	}
	for i := 1; i <= n; i++ {
		c.start(StoreID(i))
	}
	t.Cleanup(c.shutdown)
	return c
}

func (c *testCluster) config(store StoreID, tr Transport) Config {
	cfg := Config{
		Store:          store,
		Dir:            filepath.Join(c.dir, fmt.Sprint(store)),
		StateMachine:   kvSM{},
		Transport:      tr,
		TickInterval:   10 * time.Millisecond,
		ElectionTicks:  15,
		HeartbeatTicks: 1,

		StorageRetryInterval: 20 * time.Millisecond,
		faults:               c.disk(store),
	}
	if c.tweak != nil {
		c.tweak(&cfg)
	}
	return cfg
}

// disk is store's disk fault hook (slow or failing disk).
func (c *testCluster) disk(store StoreID) *diskFaults {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.faults[store]
	if f == nil {
		f = &diskFaults{}
		c.faults[store] = f
	}
	return f
}

func (c *testCluster) resolve(s StoreID) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if tn := c.nodes[s]; tn != nil && tn.addr != "" {
		return tn.addr, nil
	}
	return "", fmt.Errorf("store %d down", s)
}

func (c *testCluster) start(store StoreID) {
	c.t.Helper()
	if err := c.tryStart(store); err != nil {
		c.t.Fatalf("start store %d: %v", store, err)
	}
}

func (c *testCluster) tryStart(store StoreID) error {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	tr := NewGRPCTransport(GRPCConfig{Store: store, Resolve: c.resolve, RetryBackoff: 20 * time.Millisecond})
	srv := grpc.NewServer(ServerOptions()...)
	tr.Register(srv)
	go srv.Serve(lis)
	ft := &faultTransport{c: c, self: store, inner: tr}
	n, err := Open(c.config(store, ft))
	if err != nil {
		srv.Stop()
		tr.Close()
		return err
	}
	tn := &testNode{store: store, dir: n.cfg.Dir, addr: lis.Addr().String(), srv: srv, tr: tr, node: n}
	c.mu.Lock()
	c.nodes[store] = tn
	c.mu.Unlock()
	return nil
}

func (c *testCluster) node(s StoreID) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	if tn := c.nodes[s]; tn != nil {
		return tn.node
	}
	return nil
}

func (c *testCluster) stores() []StoreID {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []StoreID
	for s := StoreID(1); s <= StoreID(len(c.nodes)+16); s++ {
		if c.nodes[s] != nil {
			out = append(out, s)
		}
	}
	return out
}

// kill stops a node abruptly (its process "dies"); its data dir stays.
func (c *testCluster) kill(s StoreID) {
	c.mu.Lock()
	tn := c.nodes[s]
	delete(c.nodes, s)
	c.mu.Unlock()
	if tn == nil {
		return
	}
	if tn.resume != nil {
		close(tn.resume)
	}
	tn.srv.Stop()
	tn.node.Close()
	tn.tr.Close()
}

// restart starts a killed node again from its data dir.
func (c *testCluster) restart(s StoreID) { c.start(s) }

func (c *testCluster) shutdown() {
	for _, s := range c.stores() {
		c.kill(s)
	}
}

func (c *testCluster) partition(a, b StoreID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.blocked[[2]StoreID{a, b}] = true
	c.blocked[[2]StoreID{b, a}] = true
}

func (c *testCluster) isolate(a StoreID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.isolated[a] = true
}

func (c *testCluster) heal() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.blocked = map[[2]StoreID]bool{}
	c.isolated = map[StoreID]bool{}
}

func (c *testCluster) isBlocked(from, to StoreID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blocked[[2]StoreID{from, to}] || c.isolated[from] || c.isolated[to]
}

// pause freezes a node (SIGSTOP): its loop stops and it is cut off.
func (c *testCluster) pause(s StoreID) {
	c.mu.Lock()
	tn := c.nodes[s]
	tn.resume = make(chan struct{})
	resume := tn.resume
	c.isolated[s] = true
	c.mu.Unlock()
	started := make(chan struct{})
	refused := make(chan error, 1)
	go func() { refused <- tn.node.onLoop(func() error { close(started); <-resume; return nil }) }()
	select {
	case <-started:
	case <-refused: // refusing work after a disk fault: as good as paused
	}
}

func (c *testCluster) unpause(s StoreID) {
	c.mu.Lock()
	tn := c.nodes[s]
	close(tn.resume)
	tn.resume = nil
	delete(c.isolated, s)
	c.mu.Unlock()
}

// bootstrap creates shards with a replica (incarnation 0) on every store.
func (c *testCluster) bootstrap(shards ...uint32) {
	c.t.Helper()
	var peers []ReplicaID
	for _, s := range c.stores() {
		peers = append(peers, NewReplicaID(s, 0))
	}
	for _, shard := range shards {
		for _, s := range c.stores() {
			if err := c.node(s).CreateReplica(shard, NewReplicaID(s, 0), peers); err != nil {
				c.t.Fatalf("create shard %d on %d: %v", shard, s, err)
			}
		}
	}
}

// leader returns the store whose replica leads shard, as agreed by the
// leader itself, waiting up to d.
func (c *testCluster) leader(shard uint32, d time.Duration) StoreID {
	c.t.Helper()
	var lead StoreID
	waitFor(c.t, d, fmt.Sprintf("leader of shard %d", shard), func() bool {
		for _, s := range c.stores() {
			n := c.node(s)
			if n == nil {
				continue
			}
			st, err := n.Status(shard)
			if err == nil && st.Role == "leader" && st.Leader == st.Replica && !c.isBlockedAll(s) {
				lead = s
				return true
			}
		}
		return false
	})
	return lead
}

func (c *testCluster) isBlockedAll(s StoreID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.isolated[s]
}

// currentLeader is the store whose replica of shard leads now (as agreed
// by the leader itself, and not isolated), 0 if none; it does not wait, so
// it may be called off the test goroutine.
func (c *testCluster) currentLeader(shard uint32) StoreID {
	for _, s := range c.stores() {
		n := c.node(s)
		if n == nil {
			continue
		}
		st, err := n.Status(shard)
		if err == nil && st.Role == "leader" && st.Leader == st.Replica && !c.isBlockedAll(s) {
			return s
		}
	}
	return 0
}

// propose sends cmd to whoever leads shard, following leader changes,
// until it succeeds or d passes. It never fails the test itself, so
// client goroutines may call it.
func (c *testCluster) propose(shard uint32, cmd []byte, d time.Duration) ([]byte, error) {
	deadline := time.Now().Add(d)
	last := fmt.Errorf("no leader of shard %d", shard)
	for time.Now().Before(deadline) {
		s := c.currentLeader(shard)
		if s == 0 {
			// An election's pace: polled, bounded by the deadline.
			select {
			case <-time.After(10 * time.Millisecond):
			case <-c.t.Context().Done():
				return nil, c.t.Context().Err()
			}
			continue
		}
		// Generous: a commit can take seconds on this shared 2-core box.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		res, err := c.node(s).Propose(ctx, shard, cmd)
		cancel()
		if err == nil {
			return res, nil
		}
		last = err
		var nl *NotLeaderError
		if errors.As(err, &nl) || errors.Is(err, ErrProposalDropped) || errors.Is(err, ErrStopped) || errors.Is(err, ErrShardNotFound) ||
			errors.Is(err, ErrStorageUnavailable) {
			continue
		}
		return nil, err
	}
	return nil, fmt.Errorf("propose timed out: %v", last)
}

func (c *testCluster) mustPut(shard uint32, k, v string) {
	c.t.Helper()
	if _, err := c.propose(shard, putCmd(k, v), 10*time.Second); err != nil {
		c.t.Fatalf("put %s=%s on shard %d: %v", k, v, shard, err)
	}
}

// value reads key from a node's local state (no linearizability).
func value(n *Node, shard uint32, key string) (string, bool) {
	var v []byte
	err := n.View(shard, func(b *bolt.Bucket) error {
		v = b.Get([]byte(key))
		return nil
	})
	return string(v), err == nil && v != nil
}

// waitValue waits until every listed store has key=want in shard.
func (c *testCluster) waitValue(shard uint32, key, want string, d time.Duration, stores ...StoreID) {
	c.t.Helper()
	if len(stores) == 0 {
		stores = c.stores()
	}
	waitFor(c.t, d, fmt.Sprintf("shard %d %s=%s on %v", shard, key, want, stores), func() bool {
		for _, s := range stores {
			n := c.node(s)
			if n == nil {
				return false
			}
			if v, _ := value(n, shard, key); v != want {
				return false
			}
		}
		return true
	})
}

// waitFor polls cond until it holds or d passes (a condition with a
// deadline, not a sleep).
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		<-tick.C
	}
}

// faultTransport sits between a Node and its GRPCTransport and drops what
// crosses a partition (reporting it, as a real broken stream would).
type faultTransport struct {
	c     *testCluster
	self  StoreID
	inner *GRPCTransport
	h     Handler
}

type faultHandler struct {
	f *faultTransport
	h Handler
}

var errPartitioned = errors.New("partitioned")

func (f *faultTransport) Start(h Handler) error {
	f.h = h
	return f.inner.Start(&faultHandler{f: f, h: h})
}

func (f *faultTransport) Send(to StoreID, msgs []ShardMessage) {
	if !f.c.isBlocked(f.self, to) {
		f.inner.Send(to, msgs)
		return
	}
	var rest []ShardMessage
	for _, m := range msgs {
		if m.Message.GetType() == pb.MsgSnap {
			f.h.ReportSnapshot(to, m, errPartitioned)
		} else {
			rest = append(rest, m)
		}
	}
	if len(rest) > 0 {
		f.h.ReportUnreachable(to, rest)
	}
}

func (h *faultHandler) HandleMessages(from StoreID, msgs []ShardMessage) {
	if !h.f.c.isBlocked(from, h.f.self) {
		h.h.HandleMessages(from, msgs)
	}
}

func (h *faultHandler) HandleSnapshot(from StoreID, m ShardMessage) error {
	if h.f.c.isBlocked(from, h.f.self) {
		return errPartitioned
	}
	return h.h.HandleSnapshot(from, m)
}

func (h *faultHandler) ReportUnreachable(to StoreID, msgs []ShardMessage) {
	h.h.ReportUnreachable(to, msgs)
}

func (h *faultHandler) ReportSnapshot(to StoreID, m ShardMessage, err error) {
	h.h.ReportSnapshot(to, m, err)
}

// testSeed reads MULTIRAFT_SEED (0 if unset).
func testSeed() uint64 {
	var s uint64
	fmt.Sscan(os.Getenv("MULTIRAFT_SEED"), &s)
	return s
}
