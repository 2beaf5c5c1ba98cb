package controlplane

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func raftConfig(e *testcluster.Etcd, id string) Config {
	c := testConfig(e, id)
	c.ReplicationMode = ReplicationRaft
	c.ShardCount = 4
	c.Common.Region = "r1"
	c.PlannerTick = 20 * time.Millisecond
	c.ProbeInterval = 50 * time.Millisecond
	c.Planner.DownGrace = 300 * time.Millisecond
	c.Planner.MassExpiryWindow = 100 * time.Millisecond
	return c
}

// fakeStore is a registered store node that reports its replicas'
// progress the way a Raft store node would (status/shards/<nnn>/<store>
// under its lease).
type fakeStore struct {
	id  string
	reg *membership.Registration
}

func addStore(t *testing.T, cli *clientv3.Client, prefix, id, region, zone string) *fakeStore {
	t.Helper()
	r, err := membership.Register(context.Background(), cli, prefix,
		membership.Member{Role: membership.RoleStore, ID: id, Addr: "127.0.0.1:1", Region: region, Zone: zone, PID: 1}, 2*time.Second, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	return &fakeStore{id: id, reg: r}
}

// storeSide simulates the store nodes: every few ms each live store
// reports every replica the shard map gives it, with the role from the map
// (configuration applied at once), the first voter (or the preferred
// leader) as leader, and lag 0 unless holdBack says the replica is still
// catching up (then match_lag -1).
type storeSide struct {
	t        *testing.T
	cli      *clientv3.Client
	prefix   string
	mu       sync.Mutex
	stores   map[string]*fakeStore
	holdBack atomic.Bool
	cancel   context.CancelFunc
	done     chan struct{}
}

func startStoreSide(t *testing.T, e *testcluster.Etcd, stores ...*fakeStore) *storeSide {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	prefix := e.Prefix
	ctx, cancel := context.WithCancel(context.Background())
	s := &storeSide{t: t, cli: cli, prefix: prefix, stores: map[string]*fakeStore{}, cancel: cancel, done: make(chan struct{})}
	for _, st := range stores {
		s.stores[st.id] = st
	}
	go s.run(ctx)
	t.Cleanup(func() { cancel(); <-s.done; _ = cli.Close() })
	return s
}

func (s *storeSide) kill(id string) {
	s.mu.Lock()
	st := s.stores[id]
	delete(s.stores, id)
	s.mu.Unlock()
	// Revoking the lease is what its expiry looks like to etcd watchers:
	// the member key and its status keys vanish.
	if err := st.reg.Close(context.Background()); err != nil {
		s.t.Error(err)
	}
}

func (s *storeSide) run(ctx context.Context) {
	defer close(s.done)
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		resp, err := s.cli.Get(ctx, clusterstate.ShardsPrefix(s.prefix), clientv3.WithPrefix())
		if err != nil {
			continue
		}
		s.mu.Lock()
		for _, kv := range resp.Kvs {
			var d ShardDoc
			if json.Unmarshal(kv.Value, &d) != nil {
				continue
			}
			n, _ := clusterstate.ParseShardKey(s.prefix, string(kv.Key))
			leader := ""
			for _, r := range d.Replicas {
				if r.Role == clusterstate.RoleVoter && s.stores[r.Store] != nil && (leader == "" || r.Store == d.TargetLeader) {
					leader = r.Store
				}
			}
			for _, r := range d.Replicas {
				st := s.stores[r.Store]
				if st == nil {
					continue
				}
				rs := ReplicaStatus{Role: r.Role, AppliedIndex: 10, MatchLag: 0, Leader: leader, Term: 1, ConfEpoch: d.ConfEpoch}
				if r.Role == clusterstate.RoleLearner && s.holdBack.Load() {
					rs.AppliedIndex, rs.MatchLag = 0, -1
				}
				val, _ := json.Marshal(rs)
				_, _ = s.cli.Put(ctx, StatusKey(s.prefix, n, r.Store), string(val), clientv3.WithLease(st.reg.LeaseID()))
			}
		}
		s.mu.Unlock()
	}
}

func readDocs(t *testing.T, cli *clientv3.Client, prefix string, n int) []ShardDoc {
	t.Helper()
	r, err := cli.Get(context.Background(), clusterstate.ShardsPrefix(prefix), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	kvs := map[string][]byte{}
	for _, kv := range r.Kvs {
		kvs[string(kv.Key)] = kv.Value
	}
	return decodeShardDocs(prefix, n, kvs)
}

func readOps(t *testing.T, cli *clientv3.Client, prefix string) map[string]Operator {
	t.Helper()
	r, err := cli.Get(context.Background(), OpsPrefix(prefix), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	kvs := map[string][]byte{}
	for _, kv := range r.Kvs {
		kvs[string(kv.Key)] = kv.Value
	}
	return decodeOps(kvs)
}

func TestRaftModeInitialPlacementAcrossRegions(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	cp := startCP(t, raftConfig(e, "cp-a"))
	region := map[string]string{}
	for i, r := range []string{"r1", "r2", "r3"} {
		id := fmt.Sprintf("store-%d", i)
		addStore(t, cli, e.Prefix, id, r, r+"-a")
		region[id] = r
	}
	var docs []ShardDoc
	testcluster.WaitFor(t, 5*time.Second, "RF3 placement", func() error {
		docs = readDocs(t, cli, e.Prefix, 4)
		for _, d := range docs {
			if len(d.Replicas) != 3 {
				return fmt.Errorf("shard %d: %+v", d.Shard.Shard, d.Replicas)
			}
		}
		return nil
	})
	for _, d := range docs {
		seen := map[string]bool{}
		for _, r := range d.Replicas {
			if r.Role != clusterstate.RoleVoter || seen[region[r.Store]] {
				t.Fatalf("shard %d: replicas %+v not 3 voters in 3 regions", d.Shard.Shard, d.Replicas)
			}
			seen[region[r.Store]] = true
		}
		if d.ConfEpoch != 1 || region[d.TargetLeader] != "r1" {
			t.Fatalf("shard %d: conf epoch %d, preferred leader %q (want the r1 store)", d.Shard.Shard, d.ConfEpoch, d.TargetLeader)
		}
	}
	// The region loop registered the regions, r1 (the control plane's own) active.
	var regions []RegionDoc
	testcluster.WaitFor(t, 5*time.Second, "regions registered", func() error {
		regions = nil
		if code := get(t, cp.AdminURL()+"/v1/regions", testToken, &regions); code != http.StatusOK || len(regions) != 3 {
			return fmt.Errorf("%d %+v", code, regions)
		}
		return nil
	})
	if regions[0].Name != "r1" || regions[0].State != RegionActive || regions[1].State != RegionStandby {
		t.Fatalf("regions %+v", regions)
	}
	if len(readOps(t, cli, e.Prefix)) != 0 {
		t.Fatal("initial placement left operators in ops/")
	}
}

// repairCluster starts 3 stores (r1, r2, r3) and places 4 shards RF3 on
// them. It returns the store side and the store to kill (sc, in r3).
func repairCluster(t *testing.T, e *testcluster.Etcd, cli *clientv3.Client) (*storeSide, string) {
	t.Helper()
	a := addStore(t, cli, e.Prefix, "sa", "r1", "z1")
	b := addStore(t, cli, e.Prefix, "sb", "r2", "z1")
	c := addStore(t, cli, e.Prefix, "sc", "r3", "z1")
	side := startStoreSide(t, e, a, b, c)
	testcluster.WaitFor(t, 5*time.Second, "RF3 placement", func() error {
		for _, d := range readDocs(t, cli, e.Prefix, 4) {
			if len(d.Replicas) != 3 {
				return fmt.Errorf("shard %d: %+v", d.Shard.Shard, d.Replicas)
			}
		}
		return nil
	})
	return side, "sc"
}

// killAndReplace kills victim and, within the grace period, registers a
// spare store sd in the same region (so it is the repair target; the
// shards are under-replicated from the kill on, so nothing rebalances
// onto it first).
func killAndReplace(t *testing.T, e *testcluster.Etcd, cli *clientv3.Client, side *storeSide, victim string) {
	t.Helper()
	side.kill(victim)
	spare := addStore(t, cli, e.Prefix, "sd", "r3", "z2")
	side.mu.Lock()
	side.stores["sd"] = spare
	side.mu.Unlock()
}

func TestRaftModeRepairAfterStoreLeaseExpires(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	cfg := raftConfig(e, "cp-a")
	cfg.Planner.MaxOpsPerStore = 4
	cp := startCP(t, cfg)
	side, victim := repairCluster(t, e, cli)
	side.holdBack.Store(true) // learners report no progress yet

	killAndReplace(t, e, cli, side, victim)
	// Past the grace period: an operator per shard in ops/, and a learner
	// on the spare store in the same region.
	testcluster.WaitFor(t, 5*time.Second, "repair operators and learners", func() error {
		ops := readOps(t, cli, e.Prefix)
		if len(ops) != 4 {
			return fmt.Errorf("ops %v", ops)
		}
		for _, o := range ops {
			if o.Kind != KindRepair || !o.Steps[0].Done || o.Steps[0].Store != "sd" || o.Steps[2].Store != victim {
				return fmt.Errorf("op %+v", o)
			}
		}
		for _, d := range readDocs(t, cli, e.Prefix, 4) {
			if r := d.Replicas[len(d.Replicas)-1]; r.Store != "sd" || r.Role != clusterstate.RoleLearner || d.ConfEpoch != 2 {
				return fmt.Errorf("shard %d: %+v epoch %d", d.Shard.Shard, d.Replicas, d.ConfEpoch)
			}
		}
		return nil
	})
	var ops []Operator
	if code := get(t, cp.AdminURL()+"/v1/ops", testToken, &ops); code != http.StatusOK || len(ops) != 4 {
		t.Fatalf("/v1/ops: %d %+v", code, ops)
	}
	if v := metricValue(t, cp, "erlmcp_controlplane_under_replicated_shards"); v != "4" {
		t.Fatalf("under_replicated_shards = %q", v)
	}
	// The learners catch up: promote, then remove the dead replica.
	side.holdBack.Store(false)
	waitRepaired(t, cli, e.Prefix, victim)
	var shards []ShardView
	if code := get(t, cp.AdminURL()+"/v1/shards", testToken, &shards); code != http.StatusOK || len(shards) != 4 {
		t.Fatalf("/v1/shards: %d %+v", code, shards)
	}
	for _, s := range shards {
		for _, r := range s.Replicas {
			if r.Lag == nil || *r.Lag != 0 || r.Role != clusterstate.RoleVoter {
				t.Fatalf("shard view %+v", s)
			}
		}
	}
}

func waitRepaired(t *testing.T, cli *clientv3.Client, prefix, victim string) {
	t.Helper()
	testcluster.WaitFor(t, 5*time.Second, "repair finished", func() error {
		if ops := readOps(t, cli, prefix); len(ops) != 0 {
			return fmt.Errorf("ops left: %v", ops)
		}
		for _, d := range readDocs(t, cli, prefix, 4) {
			// add learner, promote, remove: epoch 1 → 4.
			if d.Hosts(victim) || len(d.Replicas) != 3 || !d.Hosts("sd") || d.ConfEpoch != 4 {
				return fmt.Errorf("shard %d: %+v epoch %d", d.Shard.Shard, d.Replicas, d.ConfEpoch)
			}
			for _, r := range d.Replicas {
				if r.Role != clusterstate.RoleVoter {
					return fmt.Errorf("shard %d: %+v", d.Shard.Shard, d.Replicas)
				}
			}
		}
		return nil
	})
}

func TestStandbyContinuesInflightOperator(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	cfg := raftConfig(e, "cp-a")
	cfg.Planner.MaxOpsPerStore = 4
	a := startCP(t, cfg)
	oneLeader(t, 5*time.Second, a)
	b := startCP(t, raftConfig(e, "cp-b"))
	side, victim := repairCluster(t, e, cli)
	side.holdBack.Store(true)
	killAndReplace(t, e, cli, side, victim)
	var before map[string]Operator
	testcluster.WaitFor(t, 5*time.Second, "learners added", func() error {
		before = readOps(t, cli, e.Prefix)
		if len(before) != 4 {
			return fmt.Errorf("ops %v", before)
		}
		for _, o := range before {
			if !o.Steps[0].Done {
				return fmt.Errorf("op %+v", o)
			}
		}
		return nil
	})
	a.Close() // resigns; b takes over with the operators half done
	oneLeader(t, 5*time.Second, b)
	side.holdBack.Store(false)
	// b finishes them: had it redone the learner step, the epochs would
	// not end at 4 (see waitRepaired) and the records would change first.
	var mu sync.Mutex
	var seen []string
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for resp := range cli.Watch(wctx, OpsPrefix(e.Prefix), clientv3.WithPrefix()) {
			for _, ev := range resp.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				var o Operator
				_ = json.Unmarshal(ev.Kv.Value, &o)
				mu.Lock()
				seen = append(seen, fmt.Sprintf("%s step0 %v %s", o.ID, o.Steps[0].Done, o.Steps[0].DoneAt.Format(time.RFC3339Nano)))
				mu.Unlock()
			}
		}
	}()
	waitRepaired(t, cli, e.Prefix, victim)
	cancel()
	mu.Lock()
	defer mu.Unlock()
	for _, s := range seen {
		id := strings.Fields(s)[0]
		o := before[id]
		if want := fmt.Sprintf("%s step0 true %s", id, o.Steps[0].DoneAt.Format(time.RFC3339Nano)); s != want {
			t.Fatalf("the new leader rewrote a done step: %q, want %q", s, want)
		}
	}
}

func TestRegionFailoverThroughAdminAPI(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx := context.Background()
	eastWorker := eastActiveWestStandby(t, e, 2*time.Second)
	ca, cb := testConfig(e, "cp-a"), testConfig(e, "cp-b")
	ca.Common.Region, cb.Common.Region = "west", "west"
	ca.ProbeInterval, cb.ProbeInterval = 50*time.Millisecond, 50*time.Millisecond
	a, b := startCP(t, ca), startCP(t, cb)
	l := oneLeader(t, 5*time.Second, a, b)
	standby := other(a, b, l)
	testcluster.WaitFor(t, 5*time.Second, "a probe round", func() error {
		if l.healthy.Load() == nil {
			return fmt.Errorf("no round yet")
		}
		return nil
	})

	post := func(url string) (int, http.Header, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, url, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, body
	}

	code, hdr, body := post(standby.AdminURL() + "/v1/regions/east/failover")
	if code != http.StatusTemporaryRedirect || hdr.Get("Location") != l.AdminURL()+"/v1/regions/east/failover" {
		t.Fatalf("standby: %d %q %s", code, hdr.Get("Location"), body)
	}
	code, _, body = post(hdr.Get("Location"))
	var h HistoryEntry
	if code != http.StatusOK || json.Unmarshal(body, &h) != nil || h.From != "east" || h.To != "west" || h.Outcome != "succeeded" ||
		h.Kind != HistoryManualFailover || h.Start.IsZero() || h.End.Before(h.Start) {
		t.Fatalf("failover: %d %s", code, body)
	}
	var regions []RegionDoc
	get(t, standby.AdminURL()+"/v1/regions", testToken, &regions)
	if fmt.Sprint(regionStates(regions)) != "map[east:standby west:active]" {
		t.Fatalf("regions after failover: %+v", regions)
	}
	var hist []HistoryEntry
	if get(t, standby.AdminURL()+"/v1/history", testToken, &hist); len(hist) != 1 || hist[0].ID != h.ID || hist[0].End.IsZero() {
		t.Fatalf("history %+v", hist)
	}
	r, _ := cli.Get(ctx, HistoryPrefix(e.Prefix), clientv3.WithPrefix())
	if len(r.Kvs) != 1 || !strings.HasSuffix(string(r.Kvs[0].Key), "-"+h.ID) {
		t.Fatalf("history keys %v", r.Kvs)
	}

	if code, _, body := post(l.AdminURL() + "/v1/regions/east/failover"); code != http.StatusConflict || !strings.Contains(string(body), "not active") {
		t.Fatalf("failover of a region that is not active: %d %s", code, body)
	}
	if code, _, body := post(l.AdminURL() + "/v1/regions/mars/failover"); code != http.StatusNotFound || !strings.Contains(string(body), "east, west") {
		t.Fatalf("unknown region: %d %s", code, body)
	}
	code, _, body = post(l.AdminURL() + "/v1/regions/east/failback")
	if code != http.StatusOK || json.Unmarshal(body, &h) != nil || h.To != "east" || h.Kind != HistoryManualFailback {
		t.Fatalf("failback: %d %s", code, body)
	}
	get(t, l.AdminURL()+"/v1/regions", testToken, &regions)
	if fmt.Sprint(regionStates(regions)) != "map[east:active west:standby]" {
		t.Fatalf("regions after failback: %+v", regions)
	}
	if v := metricValue(t, l, "erlmcp_controlplane_failovers_total"); v == "" {
		t.Fatal("no failovers_total metric")
	}

	// The east worker dies: the detector fails east over to west by itself.
	eastWorker.Close()
	testcluster.WaitFor(t, 5*time.Second, "automatic failover", func() error {
		regions = nil
		get(t, l.AdminURL()+"/v1/regions", testToken, &regions)
		if fmt.Sprint(regionStates(regions)) != "map[east:failed west:active]" {
			return fmt.Errorf("%+v", regions)
		}
		return nil
	})
	hist = nil
	get(t, l.AdminURL()+"/v1/history", testToken, &hist)
	if len(hist) != 3 || hist[0].Kind != HistoryRegionFailover || hist[0].Outcome != "succeeded" || hist[0].End.Before(hist[0].Start) {
		t.Fatalf("history %+v", hist)
	}
	if code, _, body := post(l.AdminURL() + "/v1/regions/east/failback"); code != http.StatusConflict {
		t.Fatalf("failback to a failed region: %d %s", code, body)
	}
}

// eastActiveWestStandby writes regions east (active) and west (standby)
// and registers one healthy worker in east (its membership lease with
// ttl); the control planes of the tests run in west.
func eastActiveWestStandby(t *testing.T, e *testcluster.Etcd, ttl time.Duration) *httptest.Server {
	t.Helper()
	cli := e.Client()
	ctx := context.Background()
	for _, d := range []RegionDoc{{Name: "east", Role: RegionPrimary, State: RegionActive, Weight: 2}, {Name: "west", Role: RegionSecondary, State: RegionStandby, Weight: 1}} {
		v, _ := json.Marshal(d)
		if _, err := cli.Put(ctx, RegionKey(e.Prefix, d.Name), string(v)); err != nil {
			t.Fatal(err)
		}
	}
	eastWorker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }))
	t.Cleanup(eastWorker.Close)
	wr, err := membership.Register(ctx, cli, e.Prefix, membership.Member{Role: membership.RoleWorker, ID: "w-east", Region: "east",
		Addr: strings.TrimPrefix(eastWorker.URL, "http://")}, ttl, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wr.Close(ctx) })
	return eastWorker
}

func regionStates(rs []RegionDoc) map[string]string {
	out := map[string]string{}
	for _, r := range rs {
		out[r.Name] = r.State
	}
	return out
}

func TestHistoryCapped(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx := context.Background()
	cfg := testConfig(e, "cp-a")
	cfg.HistoryLimit = 5
	cp := startCP(t, cfg)
	oneLeader(t, 5*time.Second, cp)
	start := time.Now()
	for i := range 8 {
		h := HistoryEntry{ID: fmt.Sprint("h", i), Kind: "test", Start: start.Add(time.Duration(i) * time.Second)}
		v, _ := json.Marshal(h)
		if _, err := cli.Put(ctx, HistoryKey(e.Prefix, h.Start, h.ID), string(v)); err != nil {
			t.Fatal(err)
		}
	}
	lead := cp.lead.Load()
	if err := cp.trimHistory(ctx, *lead); err != nil {
		t.Fatal(err)
	}
	var hist []HistoryEntry
	get(t, cp.AdminURL()+"/v1/history", testToken, &hist)
	if len(hist) != 5 || hist[0].ID != "h7" || hist[4].ID != "h3" {
		t.Fatalf("history after trim: %+v", hist)
	}
}
