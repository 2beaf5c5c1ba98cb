package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

const testToken = "test-token"

func testConfig(e *testcluster.Etcd, id string) Config {
	c := DefaultConfig()
	c.Common.ID = id
	c.Common.EtcdEndpoints = e.Endpoint
	c.Common.Prefix = e.Prefix
	c.Common.LeaseTTL = 2 * time.Second
	c.AdminListen = "127.0.0.1:0"
	c.AdminToken = testToken
	c.ElectionTTL = time.Second
	c.PlacementSettle = time.Hour
	return c
}

func startCP(t *testing.T, cfg Config) *ControlPlane {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cp, err := Start(ctx, cfg, logging.Discard().WithField("node", cfg.Common.ID))
	if err != nil {
		t.Fatalf("start control plane %s: %v", cfg.Common.ID, err)
	}
	t.Cleanup(cp.Close)
	return cp
}

// oneLeader waits until exactly one of cps leads and returns it.
func oneLeader(t *testing.T, timeout time.Duration, cps ...*ControlPlane) *ControlPlane {
	t.Helper()
	var leader *ControlPlane
	testcluster.WaitFor(t, timeout, "exactly one leader", func() error {
		leader = nil
		n := 0
		for _, cp := range cps {
			if cp.IsLeader() {
				leader = cp
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("%d leaders", n)
		}
		return nil
	})
	return leader
}

func other(a, b, x *ControlPlane) *ControlPlane {
	if x == a {
		return b
	}
	return a
}

func TestElectionOneLeaderAndHandover(t *testing.T) {
	e := testcluster.StartEtcd(t)
	a := startCP(t, testConfig(e, "cp-a"))
	b := startCP(t, testConfig(e, "cp-b"))
	l := oneLeader(t, 5*time.Second, a, b)
	s := other(a, b, l)

	start := time.Now()
	l.Close() // resigns: the standby takes over at once
	oneLeader(t, 2*time.Second, s)
	t.Logf("handover after Close took %s", time.Since(start))
}

func TestLeaderCrashFailover(t *testing.T) {
	e := testcluster.StartEtcd(t)
	a := startCP(t, testConfig(e, "cp-a"))
	b := startCP(t, testConfig(e, "cp-b"))
	l := oneLeader(t, 5*time.Second, a, b)
	s := other(a, b, l)

	start := time.Now()
	crashed := make(chan struct{})
	go func() { defer close(crashed); l.crash() }() // no revoke: the election lease must expire
	// ElectionTTL (1 s) + etcd's expiry check (0.5 s) + slack for -race on a busy machine; typically ~1.4 s.
	oneLeader(t, a.cfg.ElectionTTL+2*time.Second, s)
	t.Logf("failover after crash took %s", time.Since(start))
	<-crashed
}

func TestFencedWriteWithStaleLeadershipWritesNothing(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx := context.Background()
	pfx := e.Prefix + "election/controlplane"

	win := func() (leadership, *concurrency.Session) {
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(1))
		if err != nil {
			t.Fatal(err)
		}
		el := concurrency.NewElection(s, pfx)
		if err := el.Campaign(ctx, "x"); err != nil {
			t.Fatal(err)
		}
		return leadership{cli: cli, key: el.Key(), rev: el.Rev()}, s
	}
	put := func(l leadership, key string) error {
		_, _, err := l.txn(ctx, nil, []clientv3.Op{clientv3.OpPut(key, "v")}, nil)
		return err
	}
	exists := func(key string) bool {
		r, err := cli.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return len(r.Kvs) > 0
	}

	old, s1 := win()
	if err := put(old, e.Prefix+"fence/ok"); err != nil || !exists(e.Prefix+"fence/ok") {
		t.Fatalf("write under current leadership: err %v, written %v", err, exists(e.Prefix+"fence/ok"))
	}
	// Lose the session (its lease revoked, as when it expires), and let a
	// new leader win.
	if _, err := cli.Revoke(ctx, s1.Lease()); err != nil {
		t.Fatal(err)
	}
	s1.Orphan()
	if err := put(old, e.Prefix+"fence/stale"); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("write with lost leadership: err = %v, want ErrNotLeader", err)
	}
	cur, s2 := win()
	defer s2.Close()
	if cur.rev <= old.rev {
		t.Fatalf("new term rev %d not above old %d", cur.rev, old.rev)
	}
	if err := put(old, e.Prefix+"fence/stale"); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("write with stale leadership under a new leader: err = %v, want ErrNotLeader", err)
	}
	// A guarded write whose guard fails is not an error and writes nothing.
	ok, _, err := cur.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(e.Prefix+"fence/ok"), "=", 0)},
		[]clientv3.Op{clientv3.OpPut(e.Prefix+"fence/guarded", "v")}, nil)
	if err != nil || ok {
		t.Fatalf("guarded write with failing guard: ok %v err %v", ok, err)
	}
	if exists(e.Prefix+"fence/stale") || exists(e.Prefix+"fence/guarded") {
		t.Fatal("a refused write left a key behind")
	}
}

func TestClusterConfigCreatedOnce(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx := context.Background()
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	el := concurrency.NewElection(s, e.Prefix+"election/controlplane")
	if err := el.Campaign(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	lead := leadership{cli: cli, key: el.Key(), rev: el.Rev()}

	cfg := testConfig(e, "cp-a")
	first := &ControlPlane{cfg: cfg, log: logging.Discard(), cli: cli}
	got, err := first.ensureCluster(ctx, lead)
	if err != nil || got.ShardCount != 64 || got.ReplicationFactor != 3 {
		t.Fatalf("first ensureCluster = %+v, %v", got, err)
	}
	r1, _ := cli.Get(ctx, clusterstate.ConfigKey(e.Prefix))

	cfg.ShardCount, cfg.ReplicationFactor = 16, 1
	second := &ControlPlane{cfg: cfg, log: logging.Discard(), cli: cli}
	got2, err := second.ensureCluster(ctx, lead)
	if err != nil || got2.ShardCount != 64 || got2.ReplicationFactor != 3 || !got2.CreatedAt.Equal(got.CreatedAt) {
		t.Fatalf("second ensureCluster = %+v, %v; want the first's config", got2, err)
	}
	r2, _ := cli.Get(ctx, clusterstate.ConfigKey(e.Prefix))
	if r2.Kvs[0].ModRevision != r1.Kvs[0].ModRevision {
		t.Fatal("config/cluster was written again")
	}

	// End to end: a leader with other flags places the existing cluster's 64
	// shards, not 16.
	s.Close()
	c2 := testConfig(e, "cp-b")
	c2.ShardCount, c2.ReplicationFactor, c2.PlacementSettle = 16, 1, 0
	cp := startCP(t, c2)
	registerStore(t, cli, e.Prefix, "s1", "127.0.0.1:1")
	waitShardsPlaced(t, cli, e.Prefix, 64, 5*time.Second)
	cc, err := clusterstate.GetConfig(ctx, cli, e.Prefix)
	if err != nil || cc.ShardCount != 64 {
		t.Fatalf("config after second leader: %+v, %v", cc, err)
	}
	_ = cp
}

func registerStore(t *testing.T, cli *clientv3.Client, prefix, id, addr string) *membership.Registration {
	t.Helper()
	r, err := membership.Register(context.Background(), cli, prefix,
		membership.Member{Role: membership.RoleStore, ID: id, Addr: addr, Region: "local", Zone: "local-a", PID: 1}, 2*time.Second, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	return r
}

func readShards(t *testing.T, cli *clientv3.Client, prefix string, n int) []clusterstate.Shard {
	t.Helper()
	r, err := cli.Get(context.Background(), clusterstate.ShardsPrefix(prefix), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	kvs := map[string][]byte{}
	for _, kv := range r.Kvs {
		kvs[string(kv.Key)] = kv.Value
	}
	return clusterstate.DecodeShards(prefix, n, kvs)
}

func waitShardsPlaced(t *testing.T, cli *clientv3.Client, prefix string, n int, timeout time.Duration) []clusterstate.Shard {
	t.Helper()
	var shards []clusterstate.Shard
	testcluster.WaitFor(t, timeout, fmt.Sprintf("%d shards placed", n), func() error {
		shards = readShards(t, cli, prefix, n)
		for _, s := range shards {
			if len(s.Replicas) == 0 {
				return fmt.Errorf("shard %d has no replica", s.Shard)
			}
		}
		return nil
	})
	return shards
}

func TestPlacementWaitsForThreeStores(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	cp := startCP(t, testConfig(e, "cp-a")) // settle 1h: only 3 stores release placement
	oneLeader(t, 5*time.Second, cp)
	registerStore(t, cli, e.Prefix, "store-b", "127.0.0.1:1")
	registerStore(t, cli, e.Prefix, "store-a", "127.0.0.1:2")
	// Two stores: the leader must hold back. Once a placement pass has
	// finished with both stores seen, nothing may have been placed.
	testcluster.WaitFor(t, 5*time.Second, "a placement pass that saw 2 stores", func() error {
		if n := cp.placementStores.Load(); n != 2 {
			return fmt.Errorf("last pass saw %d stores", n)
		}
		return nil
	})
	if got := readShards(t, cli, e.Prefix, 64); len(got[0].Replicas) != 0 {
		t.Fatalf("placed with 2 of 3 stores: %+v", got[0])
	}
	registerStore(t, cli, e.Prefix, "store-c", "127.0.0.1:3")
	shards := waitShardsPlaced(t, cli, e.Prefix, 64, 5*time.Second)
	ids := []string{"store-a", "store-b", "store-c"}
	for _, s := range shards {
		want := voter(s.Shard, ids[s.Shard%3], 1)
		if fmt.Sprint(s) != fmt.Sprint(want) {
			t.Fatalf("shard %d = %+v, want %+v", s.Shard, s, want)
		}
	}
	testcluster.WaitFor(t, 2*time.Second, "placed metric", func() error {
		if got := metricValue(t, cp, "erlmcp_controlplane_shards_placed_total"); got != "64" {
			return fmt.Errorf("shards_placed_total = %q", got)
		}
		return nil
	})
	// A fourth store moves nothing.
	r, _ := cli.Get(context.Background(), clusterstate.ShardKey(e.Prefix, 0))
	registerStore(t, cli, e.Prefix, "store-0", "127.0.0.1:4")
	if got := readShards(t, cli, e.Prefix, 64)[0]; got.Replicas[0].Store != "store-a" {
		t.Fatalf("shard 0 moved to %s", got.Replicas[0].Store)
	}
	r2, _ := cli.Get(context.Background(), clusterstate.ShardKey(e.Prefix, 0))
	if r.Kvs[0].ModRevision != r2.Kvs[0].ModRevision {
		t.Fatal("shard 0 rewritten after a store joined")
	}
}

func TestPlacementSettlesOnOneStore(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	c := testConfig(e, "cp-a")
	c.PlacementSettle = 200 * time.Millisecond
	c.ShardCount = 8
	startCP(t, c)
	registerStore(t, cli, e.Prefix, "only", "127.0.0.1:1")
	for _, s := range waitShardsPlaced(t, cli, e.Prefix, 8, 5*time.Second) {
		if s.Replicas[0].Store != "only" {
			t.Fatalf("shard %d on %s", s.Shard, s.Replicas[0].Store)
		}
	}
}

func metricValue(t *testing.T, cp *ControlPlane, name string) string {
	t.Helper()
	resp, err := http.Get(cp.AdminURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			return f[len(f)-1]
		}
	}
	return ""
}

func get(t *testing.T, url, token string, into any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); into != nil && !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("GET %s: content type %q", url, ct)
	}
	if into != nil {
		if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
			t.Fatalf("GET %s: decode: %v", url, err)
		}
	}
	return resp.StatusCode
}

func TestAdminAPI(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	a := startCP(t, testConfig(e, "cp-a"))
	b := startCP(t, testConfig(e, "cp-b"))
	l := oneLeader(t, 5*time.Second, a, b)
	standby := other(a, b, l)

	// A live store (gRPC health SERVING), a dead store, a live worker.
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go func() { _ = gs.Serve(gl) }()
	t.Cleanup(gs.Stop)
	registerStore(t, cli, e.Prefix, "store-live", gl.Addr().String())
	registerStore(t, cli, e.Prefix, "store-dead", testcluster.FreeAddr(t))
	worker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.WriteHeader(http.StatusOK)
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(worker.Close)
	wr, err := membership.Register(context.Background(), cli, e.Prefix,
		membership.Member{Role: membership.RoleWorker, ID: "w1", Addr: strings.TrimPrefix(worker.URL, "http://")}, 2*time.Second, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wr.Close(context.Background()) })

	url := standby.AdminURL() // standbys serve reads
	var eb ErrorBody
	if code := get(t, url+"/v1/members", "", &eb); code != http.StatusUnauthorized || !strings.Contains(eb.Error, "missing bearer token") {
		t.Fatalf("no token: %d %q", code, eb.Error)
	}
	if code := get(t, url+"/v1/members", "wrong", &eb); code != http.StatusUnauthorized || !strings.Contains(eb.Error, "rejected") {
		t.Fatalf("wrong token: %d %q", code, eb.Error)
	}
	if code := get(t, url+"/v1/nope", testToken, &eb); code != http.StatusNotFound || eb.Error == "" {
		t.Fatalf("unknown path: %d %q", code, eb.Error)
	}
	if code := get(t, url+"/healthz", "", nil); code != http.StatusOK {
		t.Fatalf("healthz: %d", code)
	}

	var ms []MemberStatus
	if code := get(t, url+"/v1/members", testToken, &ms); code != http.StatusOK {
		t.Fatalf("members: %d", code)
	}
	want := map[string]bool{"controlplane/cp-a": true, "controlplane/cp-b": true, "store/store-live": true, "store/store-dead": false, "worker/w1": true}
	got := map[string]bool{}
	for _, m := range ms {
		got[m.Role+"/"+m.ID] = m.Healthy
		if m.Role == "controlplane" && m.Addr == "" {
			t.Errorf("control plane %s has no addr", m.ID)
		}
		if !m.Healthy && m.ProbeError == "" {
			t.Errorf("%s/%s unhealthy without a probe error", m.Role, m.ID)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("members healthy = %v, want %v (%+v)", got, want, ms)
	}

	var li LeaderInfo
	if code := get(t, url+"/v1/leader", testToken, &li); code != http.StatusOK || li.ID != l.cfg.Common.ID || li.AdminAddr != l.AdminAddr() {
		t.Fatalf("leader: %d %+v, want %s at %s", code, li, l.cfg.Common.ID, l.AdminAddr())
	}

	var cv ClusterView
	testcluster.WaitFor(t, 5*time.Second, "cluster config visible", func() error {
		cv = ClusterView{}
		if code := get(t, url+"/v1/cluster", testToken, &cv); code != http.StatusOK || cv.Config == nil {
			return fmt.Errorf("cluster: %d %+v", code, cv.Config)
		}
		return nil
	})
	if cv.Config.ShardCount != 64 || len(cv.Shards) != 64 {
		t.Fatalf("cluster view: config %+v, %d shards", cv.Config, len(cv.Shards))
	}

	if v := metricValue(t, l, "erlmcp_controlplane_is_leader"); v != "1" {
		t.Fatalf("leader is_leader = %q", v)
	}
	if v := metricValue(t, standby, "erlmcp_controlplane_is_leader"); v != "0" {
		t.Fatalf("standby is_leader = %q", v)
	}
	testcluster.WaitFor(t, 2*time.Second, "leader change seen", func() error {
		if v := metricValue(t, standby, "erlmcp_controlplane_leader_changes_total"); v != "1" {
			return fmt.Errorf("leader_changes_total = %q", v)
		}
		return nil
	})
}
