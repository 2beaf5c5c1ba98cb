package sessionstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"github.com/erlmcp/erlmcp/sessionstore"
	"github.com/erlmcp/erlmcp/sessionstore/client"
	"github.com/erlmcp/erlmcp/sessionstore/multiraft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// raftNet cuts Raft traffic between store nodes (partitions) in tests.
type raftNet struct {
	mu       sync.Mutex
	isolated map[multiraft.StoreID]bool
	oneWay   map[[2]multiraft.StoreID]bool // from, to
}

func (r *raftNet) cut(a, b multiraft.StoreID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.isolated[a] || r.isolated[b] || r.oneWay[[2]multiraft.StoreID{a, b}]
}

// block drops the Raft messages from store from to store to (not the
// other way).
func (r *raftNet) block(from, to string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.oneWay == nil {
		r.oneWay = map[[2]multiraft.StoreID]bool{}
	}
	r.oneWay[[2]multiraft.StoreID{multiraft.StoreID(clusterstate.RaftStoreID(from)), multiraft.StoreID(clusterstate.RaftStoreID(to))}] = true
}

func (r *raftNet) isolate(store string, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.isolated[multiraft.StoreID(clusterstate.RaftStoreID(store))] = on
}

type faultTransport struct {
	net   *raftNet
	self  multiraft.StoreID
	inner multiraft.Transport
	h     multiraft.Handler
}

func (f *faultTransport) Start(h multiraft.Handler) error {
	f.h = h
	return f.inner.Start(faultHandler{f})
}

func (f *faultTransport) Send(to multiraft.StoreID, msgs []multiraft.ShardMessage) {
	if f.net.cut(f.self, to) {
		f.h.ReportUnreachable(to, msgs)
		return
	}
	f.inner.Send(to, msgs)
}

type faultHandler struct{ f *faultTransport }

func (h faultHandler) HandleMessages(from multiraft.StoreID, msgs []multiraft.ShardMessage) {
	if !h.f.net.cut(from, h.f.self) {
		h.f.h.HandleMessages(from, msgs)
	}
}

func (h faultHandler) HandleSnapshot(from multiraft.StoreID, m multiraft.ShardMessage) error {
	if h.f.net.cut(from, h.f.self) {
		return errors.New("partitioned")
	}
	return h.f.h.HandleSnapshot(from, m)
}

func (h faultHandler) ReportUnreachable(to multiraft.StoreID, msgs []multiraft.ShardMessage) {
	h.f.h.ReportUnreachable(to, msgs)
}

func (h faultHandler) ReportSnapshot(to multiraft.StoreID, m multiraft.ShardMessage, err error) {
	h.f.h.ReportSnapshot(to, m, err)
}

// rcluster is store nodes in one process with Raft-replicated shards.
type rcluster struct {
	*env
	net   *raftNet
	mu    sync.Mutex
	cfgs  map[string]sessionstore.Config
	nodes map[string]*sessionstore.Node
}

func newRCluster(t testing.TB, shards int, stores ...string) *rcluster {
	e := newEnv(t, shards, true)
	c := &rcluster{env: e, net: &raftNet{isolated: map[multiraft.StoreID]bool{}},
		cfgs: map[string]sessionstore.Config{}, nodes: map[string]*sessionstore.Node{}}
	for _, s := range stores {
		cfg := e.nodeConfig(s, t.TempDir())
		self := multiraft.StoreID(clusterstate.RaftStoreID(s))
		sessionstore.WrapRaftTransport(&cfg, func(tr multiraft.Transport) multiraft.Transport {
			return &faultTransport{net: c.net, self: self, inner: tr}
		})
		c.cfgs[s] = cfg
	}
	return c
}

// place writes shard's map entry: the stores as voters (then learners),
// each with the replica id of the epoch given (or epoch).
func (c *rcluster) place(shard int, epoch uint64, voters []string, learners []string, ids map[string]uint64) {
	c.t.Helper()
	s := clusterstate.Shard{Shard: shard, ConfEpoch: epoch}
	id := func(store string) uint64 {
		if v, ok := ids[store]; ok {
			return v
		}
		return clusterstate.ReplicaID(store, 1)
	}
	for _, v := range voters {
		s.Replicas = append(s.Replicas, clusterstate.Replica{Store: v, Role: clusterstate.RoleVoter, ID: id(v)})
	}
	for _, l := range learners {
		s.Replicas = append(s.Replicas, clusterstate.Replica{Store: l, Role: clusterstate.RoleLearner, ID: id(l)})
	}
	c.put(clusterstate.ShardKey(c.prefix, shard), s)
}

func (c *rcluster) start(ids ...string) {
	for _, id := range ids {
		n := c.startNode(c.cfgs[id])
		c.mu.Lock()
		c.nodes[id] = n
		c.mu.Unlock()
	}
}

func (c *rcluster) node(id string) *sessionstore.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[id]
}

// kill stops a node (in process: Close; its data dir stays).
func (c *rcluster) kill(id string) {
	c.mu.Lock()
	n := c.nodes[id]
	delete(c.nodes, id)
	c.mu.Unlock()
	if n != nil {
		_ = n.Close()
	}
}

// leader waits for a leader of shard among the running nodes and returns
// its store.
func (c *rcluster) leader(shard uint32) string {
	c.t.Helper()
	var lead string
	testcluster.WaitFor(c.t, raftWait, fmt.Sprintf("a leader of shard %d", shard), func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		for id, n := range c.nodes {
			if st, err := n.RaftStatus(shard); err == nil && st.Role == "leader" {
				lead = id
				return nil
			}
		}
		return errors.New("none")
	})
	return lead
}

func (c *rcluster) status(id string, shard uint32) (multiraft.ShardStatus, error) {
	n := c.node(id)
	if n == nil {
		return multiraft.ShardStatus{}, errors.New("not running")
	}
	return n.RaftStatus(shard)
}

// caughtUp waits until every running replica of shard has applied the
// leader's commit index.
func (c *rcluster) caughtUp(shard uint32, stores ...string) {
	c.t.Helper()
	testcluster.WaitFor(c.t, raftWait, fmt.Sprintf("replicas of shard %d caught up", shard), func() error {
		lead := c.leader(shard)
		ls, err := c.status(lead, shard)
		if err != nil {
			return err
		}
		for _, s := range stores {
			st, err := c.status(s, shard)
			if err != nil {
				return fmt.Errorf("%s: %v", s, err)
			}
			if st.Applied < ls.Commit {
				return fmt.Errorf("%s applied %d < commit %d", s, st.Applied, ls.Commit)
			}
		}
		return nil
	})
}

func adminClient(t *testing.T, addr string) pb.StoreAdminServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return pb.NewStoreAdminServiceClient(cc)
}

// TestRaftReplicatesAndFailsOver: three store nodes with an RF-3 map
// (conf epoch 1): writes are acknowledged by the leader and applied on
// every replica; status keys describe the group; killing the leader's
// node, the client's next writes succeed on the new leader and every
// acknowledged write is readable; the restarted node catches up.
func TestRaftReplicatesAndFailsOver(t *testing.T) {
	stores := []string{"a", "b", "c"}
	c := newRCluster(t, 2, stores...)
	for sh := range 2 {
		c.place(sh, 1, stores, nil, nil)
	}
	c.start(stores...)
	cl := c.client()
	ctx := ctxT(t)

	id := idInShard(0, 2, "rep")
	if _, err := cl.Create(ctx, id, []byte("v1"), 0); err != nil {
		t.Fatal(err)
	}
	ver := uint64(1)
	start := time.Now()
	const writes = 50
	for i := range writes {
		s, err := cl.CompareAndSet(ctx, id, ver, fmt.Appendf(nil, "v%d", i+2))
		if err != nil {
			t.Fatalf("cas %d: %v", i, err)
		}
		ver = s.Version
	}
	t.Logf("%d sequential CAS through 3 replicas: %v each", writes, time.Since(start)/writes)
	if _, err := cl.AppendEvents(ctx, id, "s", []byte("e1")); err != nil {
		t.Fatal(err)
	}
	c.caughtUp(0, stores...)

	// Status keys: the leader writes one per member.
	lead := c.leader(0)
	testcluster.WaitFor(t, 5*time.Second, "status keys of shard 0", func() error {
		for _, s := range stores {
			resp, err := c.cli.Get(ctx, sessionstore.StatusKey(c.prefix, 0, s))
			if err != nil || len(resp.Kvs) != 1 {
				return fmt.Errorf("%s: %v", s, err)
			}
			var v sessionstore.ReplicaStatusValue
			if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
				return err
			}
			wantRole := "voter"
			if s == lead {
				wantRole = "leader"
			}
			if v.Role != wantRole || v.Leader != lead || v.Term == 0 || v.AppliedIndex == 0 || v.MatchLag != 0 {
				return fmt.Errorf("%s: %s", s, resp.Kvs[0].Value)
			}
		}
		return nil
	})
	// Admin: ShardStatus on the leader lists the progress of all three.
	ss, err := adminClient(t, c.node(lead).Addr()).ShardStatus(ctx, &pb.ShardStatusRequest{Shard: 0})
	if err != nil || ss.Role != "leader" || len(ss.Progress) != 3 || ss.LeaderStore != lead {
		t.Fatalf("ShardStatus: %v, %v", ss, err)
	}
	// A follower answers a write with a hint naming the leader.
	follower := stores[(slices.Index(stores, lead)+1)%3]
	_, err = raw(t, c.node(follower).Addr()).CompareAndSetSession(ctx, &pb.CompareAndSetSessionRequest{Id: id, ExpectedVersion: ver, RequestId: "x"})
	if h := hintOf(err); status.Code(err) != codes.FailedPrecondition || h == nil || h.NodeId != lead || h.Addr != c.node(lead).Addr() {
		t.Fatalf("write on follower: %v (hint %v)", err, h)
	}

	c.kill(lead)
	for i := range 10 {
		s, err := cl.CompareAndSet(ctx, id, ver, fmt.Appendf(nil, "after-%d", i))
		if err != nil {
			t.Fatalf("cas after the leader died: %v", err)
		}
		ver = s.Version
	}
	if g, err := cl.Get(ctx, id, false); err != nil || g.Version != ver || string(g.Data) != "after-9" {
		t.Fatalf("read after failover: %+v, %v", g, err)
	}
	if evs, err := cl.ReadEvents(ctx, id, "s", 0, 0, 0); err != nil || len(evs.Events) != 1 {
		t.Fatalf("events after failover: %+v, %v", evs, err)
	}
	newLead := c.leader(0)
	if newLead == lead {
		t.Fatalf("leader still %s", lead)
	}
	c.start(lead)
	c.caughtUp(0, stores...)
	// The restarted replica has everything: move leadership to it and read.
	if _, err := adminClient(t, c.node(newLead).Addr()).TransferLeader(ctx, &pb.TransferLeaderRequest{Shard: 0, ToStore: lead}); err != nil {
		t.Fatalf("transfer leader: %v", err)
	}
	if g, err := raw(t, c.node(lead).Addr()).GetSession(ctx, &pb.GetSessionRequest{Id: id}); err != nil || g.Session.Version != ver {
		t.Fatalf("read on the restarted leader: %v, %v", g, err)
	}
}

// writer CAS-increments sessions until stopped, recording every
// acknowledged version; check then reads each back.
type writer struct {
	t     *testing.T
	cl    *client.Client
	ids   []string
	mu    sync.Mutex
	acked map[string]uint64
	stop  atomic.Bool
	wg    sync.WaitGroup
	n     atomic.Int64
}

func startWriter(t *testing.T, cl *client.Client, ids ...string) *writer {
	w := &writer{t: t, cl: cl, ids: ids, acked: map[string]uint64{}}
	ctx := ctxT(t)
	for _, id := range ids {
		if _, err := cl.Create(ctx, id, []byte("0"), 0); err != nil {
			t.Fatal(err)
		}
		w.acked[id] = 1
	}
	for _, id := range ids {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			ver := uint64(1)
			for !w.stop.Load() {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				s, err := cl.CompareAndSet(ctx, id, ver, fmt.Appendf(nil, "%d", ver+1))
				cancel()
				if errors.Is(err, client.ErrVersionConflict) {
					g, gerr := cl.Get(context.Background(), id, false)
					if gerr == nil {
						ver = g.Version
					}
					continue
				}
				if err != nil {
					continue // unknown outcome: the retry above sorts it out
				}
				ver = s.Version
				w.n.Add(1)
				w.mu.Lock()
				w.acked[id] = max(w.acked[id], ver)
				w.mu.Unlock()
			}
		}()
	}
	return w
}

// more waits until k more writes are acknowledged.
func (w *writer) more(k int64) {
	w.t.Helper()
	want := w.n.Load() + k
	testcluster.WaitFor(w.t, raftWait, fmt.Sprintf("%d more acknowledged writes", k), func() error {
		if got := w.n.Load(); got < want {
			return fmt.Errorf("%d of %d", got, want)
		}
		return nil
	})
}

func (w *writer) finish() {
	w.t.Helper()
	w.stop.Store(true)
	w.wg.Wait()
	ctx := ctxT(w.t)
	for _, id := range w.ids {
		g, err := w.cl.Get(ctx, id, false)
		if err != nil {
			w.t.Fatalf("read %s: %v", id, err)
		}
		if g.Version < w.acked[id] || string(g.Data) != fmt.Sprint(g.Version) {
			w.t.Fatalf("%s: stored version %d data %q; acknowledged up to %d", id, g.Version, g.Data, w.acked[id])
		}
	}
	w.t.Logf("%d acknowledged writes, none lost", w.n.Load())
}

// TestRaftReplicaReplacement: a replica replacement driven by the map, as
// the control plane does it (add learner → promote → remove), while writes
// continue: d joins empty and gets the state, c is removed and its data
// deleted, and no acknowledged write is lost.
func TestRaftReplicaReplacement(t *testing.T) {
	c := newRCluster(t, 1, "a", "b", "c", "d")
	c.place(0, 1, []string{"a", "b", "c"}, nil, nil)
	c.start("a", "b", "c", "d")
	w := startWriter(t, c.client(), "r1", "r2", "r3")
	dID := clusterstate.ReplicaID("d", 2)
	ids := map[string]uint64{"d": dID}

	w.more(30)
	c.place(0, 2, []string{"a", "b", "c"}, []string{"d"}, ids)
	testcluster.WaitFor(t, raftWait, "d added as a learner", func() error {
		st, err := c.status(c.leader(0), 0)
		if err != nil || !slices.Contains(st.Learners, multiraft.ReplicaID(dID)) {
			return fmt.Errorf("learners %v, %v", st.Learners, err)
		}
		return nil
	})
	w.more(30)
	c.place(0, 3, []string{"a", "b", "c", "d"}, nil, ids)
	testcluster.WaitFor(t, raftWait, "d promoted", func() error {
		st, err := c.status(c.leader(0), 0)
		if err != nil || !slices.Contains(st.Voters, multiraft.ReplicaID(dID)) {
			return fmt.Errorf("voters %v, %v", st.Voters, err)
		}
		return nil
	})
	w.more(30)
	c.place(0, 4, []string{"a", "b", "d"}, nil, ids)
	testcluster.WaitFor(t, raftWait, "c removed and its replica destroyed", func() error {
		st, err := c.status(c.leader(0), 0)
		if err != nil || len(st.Voters) != 3 || slices.Contains(st.Voters, multiraft.ReplicaID(clusterstate.ReplicaID("c", 1))) {
			return fmt.Errorf("voters %v, %v", st.Voters, err)
		}
		if shards := c.node("c").RaftShards(); len(shards) != 0 {
			return fmt.Errorf("c still hosts %v", shards)
		}
		return nil
	})
	w.more(30)
	w.finish()
	// d has the whole state: it can lead.
	c.caughtUp(0, "a", "b", "d")
	lead := c.leader(0)
	if lead != "d" {
		ctx := ctxT(t)
		if _, err := adminClient(t, c.node(lead).Addr()).TransferLeader(ctx, &pb.TransferLeaderRequest{Shard: 0, ToStore: "d"}); err != nil {
			t.Fatal(err)
		}
	}
	w.stop.Store(false)
	w.finish()
}

// TestRaftDroppedLeaderRemoved: the map drops the store that leads the
// shard. That store is the only one that can change the configuration
// while it leads, so it must still act on the map it is no longer in:
// hand leadership to a listed voter, which then removes it.
func TestRaftDroppedLeaderRemoved(t *testing.T) {
	stores := []string{"a", "b", "c", "d"}
	c := newRCluster(t, 1, stores...)
	c.place(0, 1, stores, nil, nil)
	c.start(stores...)
	cl := c.client()
	ctx := ctxT(t)
	if _, err := cl.Create(ctx, "g", nil, 0); err != nil {
		t.Fatal(err)
	}
	c.caughtUp(0, stores...)
	if lead := c.leader(0); lead != "c" {
		if _, err := adminClient(t, c.node(lead).Addr()).TransferLeader(ctx, &pb.TransferLeaderRequest{Shard: 0, ToStore: "c"}); err != nil {
			t.Fatal(err)
		}
	}
	cID := multiraft.ReplicaID(clusterstate.ReplicaID("c", 1))
	c.place(0, 2, []string{"a", "b", "d"}, nil, nil)
	testcluster.WaitFor(t, raftWait, "the leader c removed and its replica destroyed", func() error {
		st, err := c.status(c.leader(0), 0)
		if err != nil || len(st.Voters) != 3 || slices.Contains(st.Voters, cID) {
			return fmt.Errorf("voters %v, %v", st.Voters, err)
		}
		if shards := c.node("c").RaftShards(); len(shards) != 0 {
			return fmt.Errorf("c still hosts %v", shards)
		}
		return nil
	})
	if _, err := cl.CompareAndSet(ctx, "g", 1, []byte("after")); err != nil {
		t.Fatalf("write after the leader left: %v", err)
	}
}

// TestRaftRemovalGuard: a member the map drops is not removed while that
// would leave fewer than two up-to-date voters; once enough are back, it is.
func TestRaftRemovalGuard(t *testing.T) {
	c := newRCluster(t, 1, "a", "b", "c")
	c.place(0, 1, []string{"a", "b", "c"}, nil, nil)
	c.start("a", "b", "c")
	cl := c.client()
	ctx := ctxT(t)
	if _, err := cl.Create(ctx, "g", nil, 0); err != nil {
		t.Fatal(err)
	}
	lead := c.leader(0)
	var others []string
	for _, s := range []string{"a", "b", "c"} {
		if s != lead {
			others = append(others, s)
		}
	}
	down, drop := others[0], others[1]
	c.kill(down)
	downID := multiraft.ReplicaID(clusterstate.ReplicaID(down, 1))
	testcluster.WaitFor(t, raftWait, down+" seen inactive by the leader", func() error {
		st, err := c.status(lead, 0)
		if err != nil {
			return err
		}
		for _, p := range st.Progress {
			if p.ID == downID && !p.RecentActive {
				return nil
			}
		}
		return errors.New("still active")
	})
	// Drop a live voter: removing it would leave the leader and a dead voter.
	c.place(0, 2, []string{lead, down}, nil, nil)
	dropID := multiraft.ReplicaID(clusterstate.ReplicaID(drop, 1))
	// Several reconcile passes (100ms each) must leave it in place.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		st, err := c.status(lead, 0)
		if err != nil || !slices.Contains(st.Voters, dropID) {
			t.Fatalf("%s removed although only the leader would stay up to date: %v, %v", drop, st.Voters, err)
		}
		if _, err := cl.CompareAndSet(ctx, "g", 0, nil); !errors.Is(err, client.ErrVersionConflict) {
			t.Fatalf("write while guarded: %v", err)
		}
	}
	c.start(down)
	testcluster.WaitFor(t, raftWait, drop+" removed once "+down+" is back", func() error {
		st, err := c.status(c.leader(0), 0)
		if err != nil || slices.Contains(st.Voters, dropID) || len(st.Voters) != 2 {
			return fmt.Errorf("voters %v, %v", st.Voters, err)
		}
		return nil
	})
}

// TestRaftExpirySweepOnEveryReplica: an idle-expired session is deleted
// through the log by the leader's sweep (stamped with the leader's clock),
// so it disappears from every replica without anyone reading it.
func TestRaftExpirySweepOnEveryReplica(t *testing.T) {
	stores := []string{"a", "b", "c"}
	c := newRCluster(t, 1, stores...)
	c.place(0, 1, stores, nil, nil)
	c.start(stores...)
	cl := c.client()
	ctx := ctxT(t)
	if _, err := cl.Create(ctx, "short", nil, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Create(ctx, "long", nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	c.caughtUp(0, stores...)
	testcluster.WaitFor(t, raftWait, "the expired session swept from every replica", func() error {
		for _, s := range stores {
			if has, err := c.node(s).HasLocalSession(0, "short"); err != nil || has {
				return fmt.Errorf("%s still has it (%v)", s, err)
			}
		}
		return nil
	})
	for _, s := range stores {
		if has, err := c.node(s).HasLocalSession(0, "long"); err != nil || !has {
			t.Fatalf("%s lost the live session (%v)", s, err)
		}
	}
	if _, err := cl.Get(ctx, "short", false); !errors.Is(err, client.ErrSessionNotFound) {
		t.Fatalf("get swept session: %v", err)
	}
}

// raftWait bounds waits on replication progress. Progress needs elections
// and heartbeats on time; under -race with other packages' tests competing
// for two cores a step can stall for seconds, which is slow, not wrong.
const raftWait = 30 * time.Second

// TestRaftLeaderFollowsTargetLeader: the shard's leader hands leadership to
// the map's target_leader (the control plane's preferred leader, in the
// active region) once the configuration matches the map, and follows it
// when it changes; a target that is not a voter is not asked.
func TestRaftLeaderFollowsTargetLeader(t *testing.T) {
	stores := []string{"a", "b", "c", "d"}
	c := newRCluster(t, 1, stores...)
	c.place(0, 1, []string{"a", "b", "c"}, nil, nil)
	c.start(stores...)
	cl := c.client()
	ctx := ctxT(t)
	if _, err := cl.Create(ctx, "g", nil, 0); err != nil {
		t.Fatal(err)
	}
	target := func(store string) {
		s := clusterstate.Shard{Shard: 0, ConfEpoch: 1, TargetLeader: store}
		for _, v := range []string{"a", "b", "c"} {
			s.Replicas = append(s.Replicas, clusterstate.Replica{Store: v, Role: clusterstate.RoleVoter, ID: clusterstate.ReplicaID(v, 1)})
		}
		c.put(clusterstate.ShardKey(c.prefix, 0), s)
	}
	// d hosts no replica: the leader stays where it is.
	first := c.leader(0)
	target("d")
	for _, to := range []string{"a", "b", "c"} {
		if to == first {
			continue
		}
		target(to)
		testcluster.WaitFor(t, raftWait, "leadership moved to "+to, func() error {
			if lead := c.leader(0); lead != to {
				return fmt.Errorf("leader %s", lead)
			}
			return nil
		})
		if _, err := cl.Create(ctx, "g-"+to, nil, 0); err != nil {
			t.Fatalf("write after the move to %s: %v", to, err)
		}
	}
	if lead := c.leader(0); lead == "d" {
		t.Fatal("d, which hosts no replica, leads")
	}
}
