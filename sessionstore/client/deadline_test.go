package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	"github.com/erlmcp/erlmcp/sessionstore"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// slack is how much later than its deadline a call may end: the machine
// may be heavily loaded (timers fire late), but a call that waits for
// something without a deadline overshoots by far more.
const slack = 3 * time.Second

// pausedStore is a store address whose process is stopped (SIGSTOP): the
// kernel completes TCP handshakes into the listen backlog, and nothing is
// ever read or answered. It holds the connections it accepts until the
// test ends.
func pausedStore(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return l.Addr().String()
}

// deadStore is a store address where nothing listens (a killed process):
// connections are refused at once, so every attempt fails fast with
// UNAVAILABLE and only the retry loop's own bounds end a call.
func deadStore(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// storeCluster writes a 1-shard cluster config under prefix, with the
// shard's voters registered at addrs (a store without an address is
// assigned but not registered), and the shard map if writeMap.
func storeCluster(t *testing.T, cli *clientv3.Client, prefix string, writeMap bool, addrs map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	put := func(k string, v any) {
		b, _ := json.Marshal(v)
		if _, err := cli.Put(ctx, k, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	put(clusterstate.ConfigKey(prefix), clusterstate.ClusterConfig{ShardCount: 1, ReplicationFactor: len(addrs)})
	var sh clusterstate.Shard
	for _, id := range []string{"a", "b", "c"} {
		addr, ok := addrs[id]
		if !ok {
			continue
		}
		sh.Replicas = append(sh.Replicas, clusterstate.Replica{Store: id, Role: clusterstate.RoleVoter})
		if addr != "" {
			put(membership.Key(prefix, membership.RoleStore, id), membership.Member{Role: membership.RoleStore, ID: id, Addr: addr})
		}
	}
	if writeMap {
		put(clusterstate.ShardKey(prefix, 0), sh)
	}
}

func newTestClient(t *testing.T, cli *clientv3.Client, prefix string, cfg Config) *Client {
	t.Helper()
	cfg.Etcd, cfg.Prefix = cli, prefix
	if cfg.Log == nil {
		cfg.Log = logging.Discard()
	}
	c, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// every runs each of the client's calls once with ctx, concurrently, and
// returns their errors and how long each took.
func every(ctx context.Context, c *Client, id string, pollWait time.Duration) map[string]struct {
	err  error
	took time.Duration
} {
	one := uint64(1)
	calls := map[string]func() error{
		"Create":        func() error { _, err := c.Create(ctx, id, []byte("x"), 0); return err },
		"Get":           func() error { _, err := c.Get(ctx, id, true); return err },
		"CompareAndSet": func() error { _, err := c.CompareAndSet(ctx, id, 1, []byte("y")); return err },
		"Delete":        func() error { return c.Delete(ctx, id) },
		"PutTask":       func() error { _, err := c.PutTask(ctx, id, Task{ID: "t"}, &one); return err },
		"GetTask":       func() error { _, err := c.GetTask(ctx, id, "t"); return err },
		"ListTasks":     func() error { _, _, err := c.ListTasks(ctx, id, "", 0); return err },
		"AppendEvents":  func() error { _, err := c.AppendEvents(ctx, id, "s", []byte("e")); return err },
		"ReadEvents":    func() error { _, err := c.ReadEvents(ctx, id, "s", 0, 0, 0); return err },
		"ReadEvents/wait": func() error {
			_, err := c.ReadEvents(ctx, id, "s", 0, 0, pollWait)
			return err
		},
		"PutState":    func() error { _, err := c.PutState(ctx, id, "k", []byte("v"), nil); return err },
		"GetState":    func() error { _, err := c.GetState(ctx, id, "k"); return err },
		"DeleteState": func() error { return c.DeleteState(ctx, id, "k") },
		"ListState":   func() error { _, err := c.ListState(ctx, id, ""); return err },
	}
	type res = struct {
		err  error
		took time.Duration
	}
	var mu sync.Mutex
	out := map[string]res{}
	var wg sync.WaitGroup
	for name, f := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			err := f()
			mu.Lock()
			out[name] = res{err, time.Since(start)}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// noHedgeLeft waits until no attempt goroutine of a hedged call is left:
// each must end with its call, not wait for a receiver that has gone.
func noHedgeLeft(t *testing.T) {
	t.Helper()
	testcluster.WaitFor(t, 10*time.Second, "the hedged attempts to end", func() error {
		buf := make([]byte, 1<<22)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if n := strings.Count(stacks, "sessionstore/client.(*Client).hedged.func"); n > 0 {
			return fmt.Errorf("%d hedged attempt goroutines still run", n)
		}
		return nil
	})
}

// TestCallsEndWithTheirContext: under each fault that can keep a store
// from answering, every call of the client returns by its ctx's deadline
// (plus scheduling slack) with an error that says it timed out: paused
// stores (hedges to every replica, none answers), no cluster config or
// shard map yet, a shard without a store, etcd gone (the map's watch stalled) while the stores are
// paused, and, in calls whose ctx allows minutes, dead stores, where only
// the client's retry budget ends the retries.
//
// The last case is the hang seen in the worker's TestTasksV2AcrossWorkers
// (10 minutes inside a hedged PutTask): a sessionless tools/call runs with
// the worker's CallTimeout (10 minutes) as its ctx, and the client retried
// a store that kept refusing until that ctx ended. Without RetryBudget the
// call here would take the ctx's whole 10 minutes.
func TestCallsEndWithTheirContext(t *testing.T) {
	const deadline = 1500 * time.Millisecond
	pollWait := 500 * time.Millisecond
	check := func(t *testing.T, results map[string]struct {
		err  error
		took time.Duration
	}, limit, longPoll time.Duration, want ...error) {
		t.Helper()
		for name, r := range results {
			if r.err == nil {
				t.Errorf("%s: no error from a store that cannot answer", name)
				continue
			}
			lim := limit
			if name == "ReadEvents/wait" {
				lim += longPoll
			}
			if r.took > lim+slack {
				t.Errorf("%s took %s, over its bound %s + %s: %v", name, r.took, lim, slack, r.err)
			}
			for _, w := range want {
				if !errors.Is(r.err, w) {
					t.Errorf("%s: %v: not %v", name, r.err, w)
				}
			}
			if !strings.Contains(r.err.Error(), `"sess"`) {
				t.Errorf("%s: %v does not name the session", name, r.err)
			}
		}
		noHedgeLeft(t)
	}
	withDeadline := func(d time.Duration) (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), d)
	}

	// pausedCluster: three stores that accept and never answer, and a
	// hedging client that has read their shard map.
	pausedCluster := func(t *testing.T) (*testcluster.Etcd, *Client) {
		t.Helper()
		e := testcluster.StartEtcd(t)
		cli := e.Client()
		storeCluster(t, cli, e.Prefix, true, map[string]string{"a": pausedStore(t), "b": pausedStore(t), "c": pausedStore(t)})
		c := newTestClient(t, cli, e.Prefix, Config{HedgeDelay: 50 * time.Millisecond, AttemptTimeout: 300 * time.Millisecond})
		rctx, rcancel := withDeadline(20 * time.Second)
		defer rcancel()
		if err := c.Ready(rctx); err != nil {
			t.Fatal(err)
		}
		return e, c
	}

	t.Run("paused stores", func(t *testing.T) {
		_, c := pausedCluster(t)
		ctx, cancel := withDeadline(deadline)
		defer cancel()
		check(t, every(ctx, c, "sess", pollWait), deadline, 0, context.DeadlineExceeded, ErrUnavailable)
	})

	t.Run("no cluster config nor shard map", func(t *testing.T) {
		e := testcluster.StartEtcd(t)
		c := newTestClient(t, e.Client(), e.Prefix, Config{})
		ctx, cancel := withDeadline(deadline)
		defer cancel()
		if err := c.Ready(ctx); !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "cluster config") {
			t.Fatalf("Ready without a cluster config: %v", err)
		}
		ctx, cancel = withDeadline(deadline)
		defer cancel()
		check(t, every(ctx, c, "sess", pollWait), deadline, 0, context.DeadlineExceeded, ErrUnavailable)
	})

	t.Run("shard not assigned", func(t *testing.T) {
		e := testcluster.StartEtcd(t)
		cli := e.Client()
		storeCluster(t, cli, e.Prefix, false, map[string]string{"a": pausedStore(t)})
		c := newTestClient(t, cli, e.Prefix, Config{})
		ctx, cancel := withDeadline(deadline)
		defer cancel()
		res := every(ctx, c, "sess", pollWait)
		check(t, res, deadline, 0, context.DeadlineExceeded, ErrUnavailable)
		if err := res["Get"].err; err != nil && !strings.Contains(err.Error(), "no store assigned") {
			t.Errorf("Get: %v does not say the shard has no store", err)
		}
	})

	t.Run("etcd gone, stores paused", func(t *testing.T) {
		e, c := pausedCluster(t)
		e.Server.Close() // the watches now fail and retry; the map stays as last seen
		ctx, cancel := withDeadline(deadline)
		defer cancel()
		check(t, every(ctx, c, "sess", pollWait), deadline, 0, context.DeadlineExceeded, ErrUnavailable)
	})

	t.Run("long ctx, dead stores", func(t *testing.T) {
		e := testcluster.StartEtcd(t)
		cli := e.Client()
		storeCluster(t, cli, e.Prefix, true, map[string]string{"a": deadStore(t), "b": deadStore(t), "c": ""})
		const budget = 2 * time.Second
		c := newTestClient(t, cli, e.Prefix, Config{RetryBudget: budget})
		rctx, rcancel := withDeadline(20 * time.Second)
		defer rcancel()
		if err := c.Ready(rctx); err != nil {
			t.Fatal(err)
		}
		// The worker's CallTimeout: the ctx alone would hold every call
		// for 10 minutes. The calls run aside so that the test fails
		// rather than hangs if one does.
		ctx, cancel := withDeadline(10 * time.Minute)
		defer cancel()
		type result = map[string]struct {
			err  error
			took time.Duration
		}
		done := make(chan result, 1)
		go func() { done <- every(ctx, c, "sess", pollWait) }()
		select {
		case r := <-done:
			// A long-poll's budget is longer by its wait.
			check(t, r, budget, pollWait, ErrUnavailable, context.DeadlineExceeded)
			if r["Get"].err != nil && !strings.Contains(r["Get"].err.Error(), "retry budget") {
				t.Errorf("Get: %v does not say the retry budget ran out", r["Get"].err)
			}
		case <-time.After(budget + pollWait + 2*slack):
			cancel()
			t.Fatalf("calls with a 10-minute ctx still retried a dead store after %s; the retry budget is %s", budget+pollWait+2*slack, budget)
		}
	})
}

// TestDebugCallLog: at debug level each call logs one line with its
// method, shard, store, attempts, hedges and duration; at info level none.
func TestDebugCallLog(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Store a is a real node serving shard 0 alone.
	cfg := sessionstore.DefaultConfig()
	cfg.Common = config.DefaultCommon()
	cfg.Common.ID, cfg.Common.EtcdEndpoints, cfg.Common.Prefix = "a", e.Endpoint, e.Prefix
	cfg.Common.LeaseTTL = 2 * time.Second
	cfg.Listen, cfg.DataDir = "127.0.0.1:0", t.TempDir()
	storeCluster(t, cli, e.Prefix, true, map[string]string{"a": ""})
	n, err := sessionstore.Start(ctx, cfg, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	select {
	case <-n.Ready():
	case <-ctx.Done():
		t.Fatal("store node a never became ready")
	}

	var buf testcluster.SyncBuffer
	l := logrus.New()
	l.SetOutput(&buf)
	l.SetFormatter(&logrus.JSONFormatter{})
	l.SetLevel(logrus.InfoLevel)
	c := newTestClient(t, cli, e.Prefix, Config{Log: logrus.NewEntry(l), HedgeDelay: 20 * time.Millisecond})
	if err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	// Shard 0 is a one-replica group on a: wait until it serves.
	testcluster.WaitFor(t, 20*time.Second, "store a to serve shard 0", func() error {
		_, err := c.Create(ctx, "warm", nil, 0)
		if errors.Is(err, ErrAlreadyExists) {
			return nil
		}
		return err
	})
	if _, err := c.Get(ctx, "warm", false); err != nil {
		t.Fatal(err)
	}
	if buf.String() != "" {
		t.Fatalf("logged at info level: %s", buf.String())
	}

	l.SetLevel(logrus.DebugLevel)
	if _, err := c.Create(ctx, "s1", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "s1", false); err != nil {
		t.Fatal(err)
	}
	// A failed call logs its error.
	if _, err := c.Create(ctx, "s1", []byte("x"), 0); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("second create: %v", err)
	}
	// A call to a cluster (another prefix) whose stores are paused is
	// hedged to each of them, and times out.
	const paused = "/paused/"
	storeCluster(t, cli, paused, true, map[string]string{"a": pausedStore(t), "b": pausedStore(t), "c": pausedStore(t)})
	pc := newTestClient(t, cli, paused, Config{Log: logrus.NewEntry(l), HedgeDelay: 20 * time.Millisecond, AttemptTimeout: 200 * time.Millisecond})
	if err := pc.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	short, scancel := context.WithTimeout(ctx, time.Second)
	defer scancel()
	if _, err := pc.Get(short, "s1", false); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("get from paused stores: %v", err)
	}
	var lines []map[string]any
	for _, s := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			t.Fatalf("log line %q: %v", s, err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 4 {
		t.Fatalf("want one line per call (4), got %d: %s", len(lines), buf.String())
	}
	for i, want := range []struct {
		method, store string
		hedged        bool
		err           string
	}{{"CreateSession", "a", false, ""}, {"GetSession", "a", false, ""}, {"CreateSession", "a", false, "already exists"}, {"GetSession", "", true, "deadline exceeded"}} {
		m := lines[i]
		if m["level"] != "debug" || m["method"] != want.method || m["hedged"] != want.hedged || m["shard"] != float64(0) {
			t.Errorf("line %d: %v, want method %s hedged %v at debug", i, m, want.method, want.hedged)
		}
		if store, _ := m["store"].(string); store == "" || (want.store != "" && store != want.store) {
			t.Errorf("line %d: store %q, want %q", i, store, want.store)
		}
		if a, _ := m["attempts"].(float64); a < 1 || (!want.hedged && a != 1) {
			t.Errorf("line %d: attempts %v", i, m["attempts"])
		}
		if d, ok := m["duration_ms"].(float64); !ok || d <= 0 {
			t.Errorf("line %d: duration_ms %v", i, m["duration_ms"])
		}
		if h, _ := m["hedges"].(float64); (h > 0) != want.hedged {
			t.Errorf("line %d: hedges %v, hedged %v", i, m["hedges"], want.hedged)
		}
		if msg, _ := m["error"].(string); !strings.Contains(msg, want.err) || (want.err == "") != (msg == "") {
			t.Errorf("line %d: error %q, want %q", i, msg, want.err)
		}
	}
}

// TestVoterChoice: resolve's retries and alternate's hedges pick from the
// same replicas: registered voters only (no learner, no store without an
// address), in the map's order; alternate also skips the store asked and
// stalled stores.
func TestVoterChoice(t *testing.T) {
	cc := clusterstate.ClusterConfig{ShardCount: 1, ReplicationFactor: 3}
	c := &Client{
		cfg:     Config{Prefix: DefaultPrefix},
		cluster: &cc,
		leaders: map[int]target{},
		shards: []clusterstate.Shard{{Replicas: []clusterstate.Replica{
			{Store: "a", Role: clusterstate.RoleVoter}, {Store: "b", Role: clusterstate.RoleLearner},
			{Store: "c", Role: clusterstate.RoleVoter}, {Store: "d", Role: clusterstate.RoleVoter}, {Store: "e"},
		}}},
		stores: map[string]membership.Member{
			"a": {ID: "a", Addr: "a:1"}, "b": {ID: "b", Addr: "b:1"}, "c": {ID: "c", Addr: "c:1"}, "e": {ID: "e", Addr: "e:1"},
		},
	}
	order := func(from, to int) string {
		var got []string
		for attempt := from; attempt < to; attempt++ {
			tg, _, err := c.resolve("s", attempt)
			if err != nil {
				t.Fatalf("attempt %d: %v", attempt, err)
			}
			got = append(got, tg.store)
		}
		return strings.Join(got, "")
	}
	if got := order(0, 7); got != "aceacea" {
		t.Fatalf("resolve's stores by attempt: %s, want aceacea (a preferred, then the other registered voters)", got)
	}
	alts := func() string {
		var got []string
		for turn := range 4 {
			if tg, ok := c.alternate(target{shard: 0, store: "a", addr: "a:1"}, turn); ok {
				got = append(got, tg.store)
			}
		}
		return strings.Join(got, "")
	}
	if got := alts(); got != "cece" {
		t.Fatalf("alternates of a by turn: %s, want cece", got)
	}
	c.setStall("c:1", true)
	if got := alts(); got != "eeee" {
		t.Fatalf("alternates of a with c stalled: %s, want eeee", got)
	}
	// The preferred store unregistered: the first attempt has nowhere to
	// go, the retries rotate over the others.
	delete(c.stores, "a")
	if _, _, err := c.resolve("s", 0); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "not registered") {
		t.Fatalf("first attempt without a registered preferred store: %v", err)
	}
	if got := order(1, 5); got != "ceec" {
		t.Fatalf("retries without a registered preferred store: %s, want ceec", got)
	}
}
