package controlplane

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// recActuator records what the loop asks for; the processes are whatever
// the test says runs. (The real actuators have their own tests: the local
// one with real processes, the kubernetes one with the fake clientset.)
type recActuator struct {
	mu       sync.Mutex
	procs    []Process
	restarts []string
	scales   []int
	removed  [][]string
}

func (a *recActuator) Name() string { return "recording" }

func (a *recActuator) Processes(_ context.Context, pool string) ([]Process, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Process
	for _, p := range a.procs {
		if p.Pool == pool {
			out = append(out, p)
		}
	}
	return out, nil
}

func (a *recActuator) Restart(_ context.Context, name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.restarts = append(a.restarts, name)
	return nil
}

func (a *recActuator) Scale(_ context.Context, pool string, n int, removeFirst []string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.scales = append(a.scales, n)
	a.removed = append(a.removed, removeFirst)
	var keep []Process
	for _, p := range a.procs {
		if p.Pool != pool {
			keep = append(keep, p)
		}
	}
	for i := range n {
		keep = append(keep, Process{Name: fmt.Sprintf("%s-%d", pool, i+1), Pool: pool, Running: true})
	}
	a.procs = keep
	return nil
}

func (a *recActuator) restartsOf(name string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, r := range a.restarts {
		if r == name {
			n++
		}
	}
	return n
}

func workerProcs(names ...string) []Process {
	var out []Process
	for _, n := range names {
		out = append(out, Process{Name: n, Pool: membership.RoleWorker, Running: true})
	}
	return out
}

// fakeWorker serves /healthz and a /metrics whose request counter grows
// at rps per second (as a worker's would under that load).
type fakeWorker struct {
	srv   *httptest.Server
	rps   atomic.Int64
	start time.Time
	base  atomic.Int64 // requests counted before the last rate change
	since atomic.Int64 // unix nanos of the last rate change
}

func newFakeWorker(t *testing.T) *fakeWorker {
	w := &fakeWorker{start: time.Now()}
	w.since.Store(time.Now().UnixNano())
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			rw.WriteHeader(http.StatusOK)
		case "/metrics":
			fmt.Fprintf(rw, "# TYPE erlmcp_worker_requests_total counter\nerlmcp_worker_requests_total{code=\"200\",method=\"tools/call\"} %d\n", w.count())
		default:
			http.NotFound(rw, r)
		}
	}))
	t.Cleanup(w.srv.Close)
	return w
}

func (w *fakeWorker) count() int64 {
	el := time.Since(time.Unix(0, w.since.Load())).Seconds()
	return w.base.Load() + int64(el*float64(w.rps.Load()))
}

func (w *fakeWorker) setRPS(n int64) {
	w.base.Store(w.count())
	w.since.Store(time.Now().UnixNano())
	w.rps.Store(n)
}

func (w *fakeWorker) addr() string { return strings.TrimPrefix(w.srv.URL, "http://") }

// stuckListener accepts connections and never answers, as a SIGSTOPped
// process does.
func stuckListener(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

func registerWorker(t *testing.T, cli *clientv3.Client, prefix, id, addr string) {
	t.Helper()
	reg, err := membership.Register(context.Background(), cli, prefix, membership.Member{Role: membership.RoleWorker, ID: id, Addr: addr, PID: 1}, 2*time.Second, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close(context.Background()) })
}

func healConfig(e *testcluster.Etcd) Config {
	c := testConfig(e, "cp-heal")
	c.Autoheal.Interval = 100 * time.Millisecond
	// Generous: a healthy member must answer within it on a busy machine.
	c.Autoheal.ProbeTimeout = 2 * time.Second
	c.Autoheal.FailAfter, c.Autoheal.Window = 2, 3
	c.Autoheal.LeaseGrace = time.Second
	c.Autoheal.StartGrace = 0
	c.Autoheal.MaxAttempts = 2
	c.Autoheal.AttemptWindow = time.Hour
	c.Autoheal.Backoff = 500 * time.Millisecond
	return c
}

func readHealHistory(t *testing.T, cli *clientv3.Client, prefix string) []HistoryEntry {
	t.Helper()
	resp, err := cli.Get(context.Background(), HistoryPrefix(prefix), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var out []HistoryEntry
	for _, kv := range resp.Kvs {
		var h HistoryEntry
		if err := json.Unmarshal(kv.Value, &h); err != nil {
			t.Fatalf("history %s: %v", kv.Key, err)
		}
		out = append(out, h)
	}
	return out
}

func TestAutohealRestartsStuckAndUnregisteredWithinBudget(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	healthy := newFakeWorker(t)
	registerWorker(t, cli, e.Prefix, "worker-1", healthy.addr())
	registerWorker(t, cli, e.Prefix, "worker-2", stuckListener(t))
	// worker-3 runs (says the actuator) but never registers: lease lost.
	act := &recActuator{procs: workerProcs("worker-1", "worker-2", "worker-3")}
	cfg := healConfig(e)
	cp, err := start(context.Background(), cfg, logging.Discard(), act)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Close)

	testcluster.WaitFor(t, 60*time.Second, "worker-2 and worker-3 restarted twice each (the attempt budget)", func() error {
		if a, b := act.restartsOf("worker-2"), act.restartsOf("worker-3"); a < 2 || b < 2 {
			return fmt.Errorf("restarts: worker-2 %d, worker-3 %d", a, b)
		}
		return nil
	})
	// The budget holds: no third attempt within the window (probes keep
	// failing meanwhile; at least two rounds).
	testcluster.WaitFor(t, 30*time.Second, "the exhausted budget reported", func() error {
		if v := metricValueLabels(t, cp, "erlmcp_controlplane_heal_actions_total", `outcome="suppressed"`); v != "2" {
			return fmt.Errorf("suppressed = %q", v)
		}
		return nil
	})
	time.Sleep(5 * time.Second)
	if a, b, c := act.restartsOf("worker-2"), act.restartsOf("worker-3"), act.restartsOf("worker-1"); a != 2 || b != 2 || c != 0 {
		t.Fatalf("restarts: worker-2 %d, worker-3 %d (want 2 each: MaxAttempts), healthy worker-1 %d (want 0)", a, b, c)
	}

	hist := readHealHistory(t, cli, e.Prefix)
	reasons := map[string]string{}
	var starts []time.Time
	for _, h := range hist {
		if h.Kind != HistoryHeal || h.Action != ActionRestart {
			t.Fatalf("unexpected history entry %+v", h)
		}
		if h.Outcome != "succeeded" || h.End.Before(h.Start) {
			t.Fatalf("history entry %+v: want outcome succeeded with end after start", h)
		}
		reasons[h.Node] = h.Reason
		if h.Node == "worker-2" {
			starts = append(starts, h.Start)
		}
	}
	if len(hist) != 4 {
		t.Fatalf("history has %d entries, want 4: %+v", len(hist), hist)
	}
	if !strings.Contains(reasons["worker-2"], "stuck") {
		t.Errorf("worker-2 reason %q does not say stuck", reasons["worker-2"])
	}
	if !strings.Contains(reasons["worker-3"], "lease lost") {
		t.Errorf("worker-3 reason %q does not say lease lost", reasons["worker-3"])
	}
	if len(starts) == 2 && starts[1].Sub(starts[0]) < cfg.Autoheal.Backoff {
		t.Errorf("second restart %s after the first, want at least the backoff %s", starts[1].Sub(starts[0]), cfg.Autoheal.Backoff)
	}
	if v := metricValueLabels(t, cp, "erlmcp_controlplane_heal_actions_total", `outcome="succeeded"`); v != "4" {
		t.Errorf("heal_actions_total succeeded = %q, want 4", v)
	}
}

func TestAutohealPauseResumeAndHealAgainLater(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	registerWorker(t, cli, e.Prefix, "worker-1", stuckListener(t))
	act := &recActuator{procs: workerProcs("worker-1")}
	cfg := healConfig(e)
	cfg.Autoheal.MaxAttempts = 1
	cfg.Autoheal.AttemptWindow = 3 * time.Second
	// Paused before the leader starts.
	val, _ := json.Marshal(AutohealState{Paused: true, Reason: "test", At: time.Now()})
	if _, err := cli.Put(context.Background(), AutohealKey(e.Prefix), string(val)); err != nil {
		t.Fatal(err)
	}
	cp, err := start(context.Background(), cfg, logging.Discard(), act)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Close)
	oneLeader(t, 10*time.Second, cp)
	testcluster.WaitFor(t, 10*time.Second, "autoheal_paused 1", func() error {
		if v := metricValue(t, cp, "erlmcp_controlplane_autoheal_paused"); v != "1" {
			return fmt.Errorf("paused = %q", v)
		}
		return nil
	})
	time.Sleep(6 * time.Second) // rounds enough to heal a stuck worker twice over (2 failed rounds of at most 2 s)
	if n := act.restartsOf("worker-1"); n != 0 {
		t.Fatalf("%d restarts while paused", n)
	}
	var v AutohealView
	if code := post(t, cp.AdminURL()+"/v1/autoheal/resume", "wrong", nil); code != http.StatusUnauthorized {
		t.Fatalf("resume with a wrong token: %d", code)
	}
	if code := post(t, cp.AdminURL()+"/v1/autoheal/resume?reason=done", testToken, &v); code != http.StatusOK || v.Paused || v.Reason != "done" {
		t.Fatalf("resume: %d %+v", code, v)
	}
	testcluster.WaitFor(t, 30*time.Second, "first restart after resume", func() error {
		if n := act.restartsOf("worker-1"); n != 1 {
			return fmt.Errorf("%d restarts", n)
		}
		return nil
	})
	// Still stuck: after the attempt window it is healed again.
	testcluster.WaitFor(t, 30*time.Second, "healed again after the attempt window", func() error {
		if n := act.restartsOf("worker-1"); n != 2 {
			return fmt.Errorf("%d restarts", n)
		}
		return nil
	})
	if code := get(t, cp.AdminURL()+"/v1/autoheal", testToken, &v); code != http.StatusOK || v.Actuator != "recording" || !v.HealEnabled {
		t.Fatalf("GET /v1/autoheal: %d %+v", code, v)
	}
	if code := post(t, cp.AdminURL()+"/v1/autoheal/pause", testToken, &v); code != http.StatusOK || !v.Paused {
		t.Fatalf("pause: %d %+v", code, v)
	}
}

func TestScaleUpAndDownThroughActuator(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	w1, w2 := newFakeWorker(t), newFakeWorker(t)
	registerWorker(t, cli, e.Prefix, "worker-1", w1.addr())
	registerWorker(t, cli, e.Prefix, "worker-2", w2.addr())
	act := &recActuator{procs: workerProcs("worker-1", "worker-2")}
	cfg := healConfig(e)
	cfg.Autoheal.Enabled = false
	cfg.Scale.Enabled = true
	cfg.Scale.Min, cfg.Scale.Max = 1, 5
	cfg.Scale.Window = 500 * time.Millisecond
	cfg.Scale.UpRPS, cfg.Scale.DownRPS = 100, 40
	cfg.Scale.UpCooldown, cfg.Scale.DownCooldown = 0, 2*time.Second
	w1.setRPS(300)
	w2.setRPS(300)
	cp, err := start(context.Background(), cfg, logging.Discard(), act)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Close)

	readDesired := func() DesiredDoc {
		resp, err := cli.Get(context.Background(), DesiredKey(e.Prefix, "worker"))
		if err != nil || len(resp.Kvs) == 0 {
			return DesiredDoc{}
		}
		var d DesiredDoc
		_ = json.Unmarshal(resp.Kvs[0].Value, &d)
		return d
	}
	// 600 RPS at 100 per worker: 5 (the max).
	testcluster.WaitFor(t, 30*time.Second, "scaled up to 5", func() error {
		d := readDesired()
		act.mu.Lock()
		n := len(act.procs)
		act.mu.Unlock()
		if d.Count != 5 || n != 5 {
			return fmt.Errorf("desired %+v, actuator runs %d", d, n)
		}
		return nil
	})
	if d := readDesired(); d.Direction != ScaleUp || !strings.Contains(strings.Join(d.Reasons, ";"), "rps") {
		t.Fatalf("desired doc %+v: want direction up with an rps reason", d)
	}
	w1.setRPS(10) // worker-1 least loaded: first to go
	w2.setRPS(30)
	changed := time.Now()
	testcluster.WaitFor(t, 30*time.Second, "scaled down to 1", func() error {
		if d := readDesired(); d.Count != 1 {
			return fmt.Errorf("desired %+v", d)
		}
		// desired/<pool> is written before the actuator is called.
		act.mu.Lock()
		defer act.mu.Unlock()
		if n := len(act.scales); n == 0 || act.scales[n-1] != 1 {
			return fmt.Errorf("actuator scaled to %v", act.scales)
		}
		return nil
	})
	if d := time.Since(changed); d < cfg.Scale.DownCooldown-200*time.Millisecond {
		t.Fatalf("scaled down %s after the load fell; want at least the cooldown %s", d, cfg.Scale.DownCooldown)
	}
	act.mu.Lock()
	last := act.removed[len(act.removed)-1]
	act.mu.Unlock()
	if len(last) == 0 || last[0] != "worker-1" {
		t.Fatalf("scale down removal order %v: want the least loaded worker-1 first", last)
	}
	for _, m := range []string{`direction="up"`, `direction="down"`} {
		if v := metricValueLabels(t, cp, "erlmcp_controlplane_scale_decisions_total", m); v == "" || v == "0" {
			t.Errorf("scale_decisions_total{%s} = %q", m, v)
		}
	}
	if v := metricValue(t, cp, "erlmcp_controlplane_desired_workers"); v != "1" {
		t.Errorf("desired_workers = %q", v)
	}
	var scaleHist int
	for _, h := range readHealHistory(t, cli, e.Prefix) {
		if h.Kind == HistoryScale && h.Outcome == "succeeded" {
			scaleHist++
		}
	}
	if scaleHist < 2 {
		t.Errorf("%d scale history entries, want at least 2", scaleHist)
	}
}

func metricValueLabels(t *testing.T, cp *ControlPlane, name, match string) string {
	t.Helper()
	resp, err := http.Get(cp.AdminURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	total := 0.0
	found := false
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, name+"{") && strings.Contains(line, match) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			total += v
			found = true
		}
	}
	if !found {
		return ""
	}
	return strconv.FormatFloat(total, 'f', -1, 64)
}

func post(t *testing.T, url, token string, into any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if into != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
			t.Fatalf("POST %s: decode: %v", url, err)
		}
	}
	return resp.StatusCode
}

// TestAutohealBudgetSurvivesLeaderChange: a leader spends a stuck worker's
// whole attempt budget and stops; the next leader reads the budget from
// etcd and restarts nothing within the window (without it, every new
// leader would grant a crash-looping node MaxAttempts more restarts).
func TestAutohealBudgetSurvivesLeaderChange(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	registerWorker(t, cli, e.Prefix, "worker-1", stuckListener(t))
	act1 := &recActuator{procs: workerProcs("worker-1")}
	cfg := healConfig(e)
	cfg.Common.ID = "cp-heal-1"
	cp1, err := start(context.Background(), cfg, logging.Discard(), act1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp1.Close)
	testcluster.WaitFor(t, 60*time.Second, "the first leader restarts worker-1 twice (its budget)", func() error {
		if n := act1.restartsOf("worker-1"); n < cfg.Autoheal.MaxAttempts {
			return fmt.Errorf("%d restarts", n)
		}
		return nil
	})
	resp, err := cli.Get(context.Background(), AutohealBudgetKey(e.Prefix, "worker", "worker-1"))
	if err != nil {
		t.Fatal(err)
	}
	var b HealBudget
	if len(resp.Kvs) != 1 || json.Unmarshal(resp.Kvs[0].Value, &b) != nil || len(b.Attempts) != cfg.Autoheal.MaxAttempts {
		t.Fatalf("budget key %s = %v, want %d attempts", AutohealBudgetKey(e.Prefix, "worker", "worker-1"), resp.Kvs, cfg.Autoheal.MaxAttempts)
	}
	cp1.Close()

	act2 := &recActuator{procs: workerProcs("worker-1")}
	cfg2 := cfg
	cfg2.Common.ID = "cp-heal-2"
	cp2, err := start(context.Background(), cfg2, logging.Discard(), act2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp2.Close)
	oneLeader(t, 20*time.Second, cp2)
	// The new leader judges worker-1 unhealthy again (two failed rounds)
	// and finds the budget spent: suppressed, not restarted.
	testcluster.WaitFor(t, 60*time.Second, "the new leader suppresses the restart", func() error {
		if n := act2.restartsOf("worker-1"); n != 0 {
			return fmt.Errorf("the new leader restarted worker-1 %d times: the budget started afresh", n)
		}
		if v := metricValueLabels(t, cp2, "erlmcp_controlplane_heal_actions_total", `outcome="suppressed"`); v != "1" {
			return fmt.Errorf("suppressed = %q", v)
		}
		return nil
	})
	if n := act2.restartsOf("worker-1"); n != 0 {
		t.Fatalf("the new leader restarted worker-1 %d times within the attempt window", n)
	}

	// A process the actuator no longer runs loses its budget key.
	act2.mu.Lock()
	act2.procs = nil
	act2.mu.Unlock()
	testcluster.WaitFor(t, 30*time.Second, "the departed worker's budget deleted", func() error {
		resp, err := cli.Get(context.Background(), AutohealBudgetPrefix(e.Prefix), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return err
		}
		if resp.Count != 0 {
			return fmt.Errorf("%d budget keys left", resp.Count)
		}
		return nil
	})
}
