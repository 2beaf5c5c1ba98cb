package loadgen

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/loadgen/loadgentest"
)

func TestParseFault(t *testing.T) {
	cases := []struct {
		in      string
		want    Fault
		wantErr string
	}{
		{in: "kill:worker@3s", want: Fault{Action: ActionKill, Target: TargetWorker, At: 3 * time.Second, MaxFailover: time.Second, HasMax: true, MaxErrors: -1}},
		{in: "stop:store-leader@2s?hold=4s", want: Fault{Action: ActionStop, Target: TargetStoreLeader, At: 2 * time.Second, Hold: 4 * time.Second, MaxFailover: 2 * time.Second, HasMax: true, MaxErrors: -1}},
		{in: "stop:region=us-east-1@1500ms?hold=15s&max=12s&errors=40", want: Fault{Action: ActionStop, Target: "region=us-east-1", At: 1500 * time.Millisecond, Hold: 15 * time.Second, MaxFailover: 12 * time.Second, HasMax: true, MaxErrors: 40}},
		{in: "kill:controlplane-leader@1s", want: Fault{Action: ActionKill, Target: TargetCPLeader, At: time.Second, HasMax: true, MaxErrors: -1}},
		{in: "rolling-restart@2s", want: Fault{Action: ActionRollingRestart, At: 2 * time.Second, HasMax: false, MaxErrors: 0}},
		{in: "term:id=worker-2@0s", want: Fault{Action: ActionTerm, Target: "id=worker-2", MaxErrors: -1}},
		{in: "kill:worker", wantErr: "want ACTION:TARGET@AT"},
		{in: "kill:worker@soon", wantErr: "not a duration"},
		{in: "nuke:worker@1s", wantErr: "unknown action"},
		{in: "kill:printer@1s", wantErr: "unknown target"},
		{in: "kill:region=@1s", wantErr: "unknown target"},
		{in: "kill:worker@1s?hold=2s", wantErr: "hold applies only to stop"},
		{in: "partition:store-leader@1s?hold=5s", want: Fault{Action: ActionPartition, Target: TargetStoreLeader, At: time.Second, Hold: 5 * time.Second, MaxFailover: 2 * time.Second, HasMax: true, MaxErrors: -1}},
		{in: "partition:worker@1s", wantErr: "partition cuts off one store node"},
		{in: "stop:worker@1s?color=red", wantErr: "unknown option"},
		{in: "stop:worker@1s?errors=-1", wantErr: "errors="},
	}
	for _, c := range cases {
		got, err := ParseFault(c.in)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("ParseFault(%q) error %v, want one containing %q", c.in, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseFault(%q): %v", c.in, err)
			continue
		}
		c.want.Spec = c.in
		if got != c.want {
			t.Errorf("ParseFault(%q) = %+v, want %+v", c.in, got, c.want)
		}
	}
}

// TestFaultReportsAttribution: failures and unserved windows count against
// the fault whose window they overlap; others are outside every fault.
func TestFaultReportsAttribution(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	runs := []*faultRun{
		{f: Fault{Spec: "a", MaxFailover: time.Second, HasMax: true, MaxErrors: -1}, started: true, injected: at(2), done: at(2)},
		{f: Fault{Spec: "b", MaxFailover: 500 * time.Millisecond, HasMax: true, MaxErrors: 1}, started: true, injected: at(10), done: at(12)},
		{f: Fault{Spec: "c", MaxErrors: 0}}, // never injected
	}
	fails := []failureRec{
		{start: at(1.9), end: at(2.1), kind: "conn_reset"}, // a
		{start: at(2.5), end: at(3.5), kind: "timeout"},    // a (within settle 2s)
		{start: at(7), end: at(7.1), kind: "http_500"},     // outside
		{start: at(11), end: at(11.5), kind: "timeout"},    // b
		{start: at(13), end: at(13.2), kind: "timeout"},    // b (settle)
	}
	gaps := []gapRec{
		{start: at(1.8), end: at(2.6)}, // a: 800ms
		{start: at(6.9), end: at(7.2)}, // outside
		{start: at(10.5), end: at(12)}, // b: 1.5s
	}
	oks := []gapRec{
		{start: at(0), end: at(0.5)},   // baseline: 500ms
		{start: at(2.0), end: at(2.2)}, // a: shorter than baseline
		{start: at(9), end: at(9.5)},   // outside
		{start: at(12), end: at(14)},   // b: 2s stall
	}
	reps, outside := faultReports(runs, t0, at(20), 2*time.Second, stallRule{}, 4, fails, gaps, oks)
	if outside != 1 {
		t.Errorf("outside = %d, want 1", outside)
	}
	a, b, c := reps[0], reps[1], reps[2]
	if a.Errors != 2 || a.MaxErrors != 4 || a.FailoverMS != 800 || a.BaselineMaxMS != 500 || !a.Passed {
		t.Errorf("fault a: %+v", a)
	}
	if b.Errors != 2 || b.ErrorGapMS != 1500 || b.StallMS != 2000 || b.FailoverMS != 1500 || b.Passed || len(b.Violations) != 2 {
		t.Errorf("fault b: want 2 errors, gap 1500ms, stall 2000ms (1500 over baseline), two violations; got %+v", b)
	}
	if w := b.WorstGap; w == nil || w.StartS != 10.5 || w.EndS != 12 || len(w.Failures) != 1 || !strings.HasPrefix(w.Failures[0], "+11.0s–11.5s timeout") {
		t.Errorf("fault b's worst gap: want 10.5s–12s with the timeout at 11s in it; got %+v", w)
	}
	if c.Passed || len(c.Violations) != 1 || !strings.Contains(c.Violations[0], "not injected") {
		t.Errorf("fault c: %+v", c)
	}
}

// TestFaultReportsStall: a slow answer is a stall of a stop fault only
// when it waited while the process was stopped, and counts only when it
// exceeds the slowest answer outside faults by more than the resolution;
// after a kill, slow answers while the cluster recovers count too.
func TestFaultReportsStall(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	zero := func(spec, action string, inj, done float64) *faultRun {
		return &faultRun{f: Fault{Spec: spec, Action: action, HasMax: true, MaxErrors: -1}, started: true, injected: at(inj), done: at(done)}
	}
	runs := []*faultRun{
		zero("noise", ActionStop, 10, 11),  // merely slow answers
		zero("paused", ActionStop, 20, 21), // a request waited on it
		zero("killed", ActionKill, 30, 30), // a slow answer after the kill
		zero("later", ActionStop, 40, 41),  // stalls a request in the kill's window
	}
	oks := []gapRec{
		{start: at(0), end: at(0.5)},      // baseline: 500ms
		{start: at(10.2), end: at(10.76)}, // noise: 60ms over the baseline
		{start: at(13), end: at(14)},      // after the pause: not its stall
		{start: at(20.1), end: at(21.3)},  // paused: 700ms over
		{start: at(30.5), end: at(32)},    // killed: 1000ms over
		{start: at(34), end: at(41.5)},    // waited on the later stop: not the kill's
	}
	reps, _ := faultReports(runs, t0, at(50), 5*time.Second, stallRule{resolution: 100 * time.Millisecond}, 4, nil, nil, oks)
	noise, paused, killed, later := reps[0], reps[1], reps[2], reps[3]
	if noise.FailoverMS != 0 || !noise.Passed || noise.StallMS != 560 {
		t.Errorf("noise: want stall 560ms counted as failover 0 and a pass; got %+v", noise)
	}
	if paused.FailoverMS != 700 || paused.Passed {
		t.Errorf("paused: want failover 700ms and a miss; got %+v", paused)
	}
	if killed.FailoverMS != 1000 || killed.Passed {
		t.Errorf("killed: want failover 1000ms and a miss; got %+v", killed)
	}
	if later.FailoverMS != 7000 {
		t.Errorf("later: want failover 7000ms; got %+v", later)
	}
}

// TestFaultReportsStallWithinTail: the pause scenario's control-plane
// leader stop on a loaded machine. The slowest answer while it was held
// (503 ms) exceeds the few seconds before the first fault (402 ms) by more
// than the resolution, but answers while no fault was active reach 780
// ms: a merely slow answer, not a stall.
func TestFaultReportsStallWithinTail(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	runs := []*faultRun{{f: Fault{Spec: "cp", Action: ActionStop, HasMax: true, MaxErrors: -1}, started: true, injected: at(10), done: at(11)}}
	oks := []gapRec{
		{start: at(0), end: at(0.402)},     // before the fault
		{start: at(10.2), end: at(10.703)}, // during the hold
	}
	for i := 0; i < 100; i++ { // after the hold, within its window: 10 of 100 at 780 ms
		d := 50 * time.Millisecond
		if i%10 == 0 {
			d = 780 * time.Millisecond
		}
		s := at(11.5 + float64(i)*0.03)
		oks = append(oks, gapRec{start: s, end: s.Add(d)})
	}
	reps, _ := faultReports(runs, t0, at(30), 5*time.Second, stallRule{resolution: 100 * time.Millisecond}, 4, nil, nil, oks)
	if r := reps[0]; r.FailoverMS != 0 || !r.Passed || r.StallMS != 503 || r.BaselineMaxMS != 402 {
		t.Errorf("want stall 503ms over baseline 402ms counted as failover 0 and a pass; got %+v", r)
	}
}

// TestFaultReportsEarlierFaultsGap: an unserved window that opened during
// a store leader's pause and lasted into the control-plane leader's pause
// a few seconds later is the store leader's, not the control plane's.
func TestFaultReportsEarlierFaultsGap(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	runs := []*faultRun{
		{f: Fault{Spec: "store", Action: ActionStop, HasMax: true, MaxFailover: 2 * time.Second, MaxErrors: -1}, started: true, injected: at(6.9), done: at(8.3)},
		{f: Fault{Spec: "cp", Action: ActionStop, HasMax: true, MaxErrors: -1}, started: true, injected: at(9.7), done: at(12.6)},
	}
	gaps := []gapRec{{start: at(7.5), end: at(12.9)}}
	reps, _ := faultReports(runs, t0, at(20), 5*time.Second, stallRule{resolution: 100 * time.Millisecond}, 4, nil, gaps, nil)
	if reps[0].ErrorGapMS != 5400 || reps[1].ErrorGapMS != 0 || !reps[1].Passed {
		t.Errorf("want the 5.4s gap the store pause's and none the control plane's; got store %+v, cp %+v", reps[0], reps[1])
	}
}

// gateInjector makes a server answer 503 while a stop fault holds.
type gateInjector struct {
	down atomic.Bool
}

func (g *gateInjector) Inject(ctx context.Context, f Fault, log func(string, ...any)) ([]Victim, error) {
	g.down.Store(true)
	defer g.down.Store(false)
	select {
	case <-ctx.Done():
	case <-time.After(f.Hold):
	}
	return []Victim{{ID: "gate", Role: "worker", PID: 1}}, nil
}

func (g *gateInjector) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.down.Load() {
			http.Error(w, "paused", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// TestRunWithFault: a 600 ms outage injected 1 s into a 3 s run is
// measured as a failover of about that long, its errors are the fault's,
// none are outside it, and its budget decides the verdict both ways.
func TestRunWithFault(t *testing.T) {
	for _, tc := range []struct {
		max  string
		pass bool
	}{{"5s", true}, {"100ms", false}} {
		t.Run("max="+tc.max, func(t *testing.T) {
			backend := loadgentest.NewFaulty(t, loadgentest.Fault{})
			g := &gateInjector{}
			srv := httptest.NewServer(g.wrap(backend.Config.Handler))
			defer srv.Close()
			cfg := testConfig(srv.URL)
			cfg.Duration = 3 * time.Second
			cfg.Sessions, cfg.Concurrency = 4, 4
			cfg.Budgets.MaxErrorsPct = 0
			f, err := ParseFault("stop:worker@1s?hold=600ms&max=" + tc.max + "&errors=100000")
			if err != nil {
				t.Fatal(err)
			}
			cfg.Faults, cfg.Injector = []Fault{f}, g
			r, progress := mustRun(t, cfg)
			if !strings.Contains(progress, "fault stop:worker@1s") {
				t.Errorf("progress does not log the fault:\n%s", progress)
			}
			if len(r.Faults) != 1 {
				t.Fatalf("faults %+v", r.Faults)
			}
			fr := r.Faults[0]
			if fr.Errors == 0 || fr.ErrorsByKind["http_503"] != fr.Errors || r.Errors.OutsideFaults != 0 {
				t.Errorf("fault errors %d by kind %v, outside %d", fr.Errors, fr.ErrorsByKind, r.Errors.OutsideFaults)
			}
			if fr.FailoverMS < 500 || fr.FailoverMS > 2000 {
				t.Errorf("failover %.0fms, want about 600ms", fr.FailoverMS)
			}
			if fr.Passed != tc.pass || r.Passed != tc.pass {
				t.Errorf("fault passed %v, run passed %v, want %v; violations %v", fr.Passed, r.Passed, tc.pass, r.Violations)
			}
			if r.Continuity.SessionsLost != 0 || r.Continuity.WritesLost != 0 {
				t.Errorf("continuity %+v", r.Continuity)
			}
		})
	}
}

// TestRunFailsOverToFallbackURL: when the first endpoint goes away the
// clients move to the second, which serves the same sessions.
func TestRunFailsOverToFallbackURL(t *testing.T) {
	backend := loadgentest.NewFaulty(t, loadgentest.Fault{})
	first := httptest.NewServer(backend.Config.Handler)
	second := httptest.NewServer(backend.Config.Handler)
	defer second.Close()
	cfg := testConfig(first.URL)
	cfg.Fallbacks = []string{second.URL + "/mcp"}
	cfg.Duration = 2 * time.Second
	cfg.Sessions, cfg.Concurrency = 4, 4
	cfg.Budgets.MaxErrorsPct = 100
	timer := time.AfterFunc(700*time.Millisecond, func() {
		first.CloseClientConnections()
		first.Close()
	})
	defer timer.Stop()
	r, _ := mustRun(t, cfg)
	if r.Continuity.SessionsLost != 0 || r.Continuity.WritesLost != 0 {
		t.Errorf("continuity %+v", r.Continuity)
	}
	if r.Errors.Total > int64(cfg.Concurrency)*2 {
		t.Errorf("errors %d: want at most the requests in flight when the first endpoint closed", r.Errors.Total)
	}
	if r.Continuity.FailoverMax > time.Second {
		t.Errorf("failover %s: want the fallback taken at once", r.Continuity.FailoverMax)
	}
	if r.Requests < 20 {
		t.Errorf("only %d requests", r.Requests)
	}
}

// TestRunFaultTail: the load outlasts --duration until the last fault is
// over plus the tail, so a slow fault (a rolling restart) is loaded
// throughout.
func TestRunFaultTail(t *testing.T) {
	backend := loadgentest.NewFaulty(t, loadgentest.Fault{})
	g := &gateInjector{}
	srv := httptest.NewServer(g.wrap(backend.Config.Handler))
	defer srv.Close()
	cfg := testConfig(srv.URL)
	cfg.Duration = time.Second
	cfg.Sessions, cfg.Concurrency = 2, 2
	cfg.Budgets.MaxErrorsPct = 0
	f, err := ParseFault("stop:worker@500ms?hold=1500ms&max=10s&errors=100000")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Faults, cfg.Injector, cfg.FaultTail = []Fault{f}, g, 700*time.Millisecond
	r, _ := mustRun(t, cfg)
	if r.Elapsed < 2.6 || r.Elapsed > 6 {
		t.Errorf("run lasted %.2fs, want about 0.5+1.5+0.7 s", r.Elapsed)
	}
	if len(r.Faults) != 1 || r.Faults[0].DoneAtS < 1.9 {
		t.Errorf("faults %+v", r.Faults)
	}
}

// TestFaultReportsStallReference: seed 22's store-follower SIGKILL on a
// loaded machine. Its slowest answer (378 ms) exceeded the 3 s lead-in's
// slowest (269 ms) by more than the resolution, but the fault-free run on
// the same cluster just before held a 1392 ms answer: not a stall. A real
// stall above the reference still counts, measured from the run's own
// answers outside faults, not from the reference.
func TestFaultReportsStallReference(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	runs := []*faultRun{
		{f: Fault{Spec: "follower", Action: ActionKill, HasMax: true, MaxErrors: -1}, started: true, injected: at(4), done: at(4.5)},
		{f: Fault{Spec: "leader", Action: ActionStop, HasMax: true, MaxErrors: -1}, started: true, injected: at(20), done: at(23)},
	}
	oks := []gapRec{
		{start: at(0), end: at(0.269)},  // the lead-in
		{start: at(5), end: at(5.378)},  // after the follower's kill
		{start: at(21), end: at(22.9)},  // waited on the stopped leader
		{start: at(40), end: at(40.05)}, // after every window
	}
	for _, tc := range []struct {
		ref              time.Duration
		follower, leader float64
	}{
		{0, 109, 1631},                     // without a reference: the lead-in decides
		{1392 * time.Millisecond, 0, 1631}, // the follower's answer is within the fault-free tail
		{2000 * time.Millisecond, 0, 0},    // so is the leader's, on a machine that slow
	} {
		reps, _ := faultReports(runs, t0, at(45), 5*time.Second, stallRule{resolution: 100 * time.Millisecond, reference: tc.ref}, 4, nil, nil, oks)
		f, l := reps[0], reps[1]
		if f.FailoverMS != tc.follower || f.Passed != (tc.follower == 0) || f.StallReferenceMS != ms(tc.ref) {
			t.Errorf("reference %s: follower: want failover %.0fms; got %+v", tc.ref, tc.follower, f)
		}
		if l.FailoverMS != tc.leader || l.Passed != (tc.leader == 0) {
			t.Errorf("reference %s: leader: want failover %.0fms; got %+v", tc.ref, tc.leader, l)
		}
	}
}

// TestSteadyMaxLeavesOutInitialize: a run's sessions all initialize at its
// start on cold connections; that is not how slow a steady answer gets.
func TestSteadyMaxLeavesOutInitialize(t *testing.T) {
	r := &Report{Ops: map[Op]OpReport{
		OpInit:    {Latency: Latency{Max: 1392}},
		OpEcho:    {Latency: Latency{Max: 352.5}},
		OpCounter: {Latency: Latency{Max: 513.25}},
	}}
	if got, want := r.SteadyMax(), 513250*time.Microsecond; got != want {
		t.Fatalf("SteadyMax %s, want %s", got, want)
	}
	if got := (&Report{}).SteadyMax(); got != 0 {
		t.Fatalf("empty report: SteadyMax %s, want 0", got)
	}
}

// A p95 budget at a --rate holds only if the rate was held: sends the
// workers missed mean a lighter load than asked.
func TestP95BudgetNeedsTheRateHeld(t *testing.T) {
	b := Budgets{MaxErrorsPct: 1, MaxP95: 100 * time.Millisecond}
	run := func(rate float64, missed int64) []string {
		r := &Report{Config: ReportConfig{Rate: rate}, Requests: 1000, MissedSends: missed, Latency: Latency{P95: 40}}
		return r.check(b)
	}
	if v := run(100, 10); len(v) != 0 {
		t.Errorf("1%% missed sends: violations %v, want none", v)
	}
	if v := run(100, 11); len(v) != 1 || !strings.Contains(v[0], "--rate 100/s not held: 11 sends missed") {
		t.Errorf("1.1%% missed sends: violations %v, want the rate not held", v)
	}
	if v := run(0, 500); len(v) != 0 {
		t.Errorf("closed loop: violations %v, want none", v)
	}
	b.MaxP95 = 0
	if v := run(100, 500); len(v) != 0 {
		t.Errorf("no p95 budget: violations %v, want none", v)
	}
}
