package controlplane

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	cfg := DefaultScaleConfig()
	cfg.Min, cfg.Max = 2, 6
	cfg.UpCooldown, cfg.DownCooldown = 30*time.Second, 5*time.Minute
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	long := now.Add(-time.Hour)
	sig := func(rps, cpu, sess float64, p95 time.Duration) ScaleSignals {
		return ScaleSignals{Valid: true, Workers: 3, RPS: rps, CPU: cpu, Sessions: sess, P95: p95}
	}
	ms := time.Millisecond
	for _, tc := range []struct {
		name    string
		st      ScaleState
		sig     ScaleSignals
		current int
		want    int
		dir     string
		why     string
	}{
		{"no doc, below min: raised at once", ScaleState{}, ScaleSignals{}, 1, 2, ScaleUp, "below --scale-min"},
		{"above max: lowered at once", ScaleState{Desired: 9, Changed: now}, sig(0, 0, 0, 0), 9, 6, ScaleDown, "above --scale-max"},
		{"no samples yet: hold", ScaleState{Desired: 3, Changed: long}, ScaleSignals{}, 3, 3, ScaleNone, "no load measured"},
		{"rps over up threshold: grow to fit", ScaleState{Desired: 3, Changed: long}, sig(900, 0, 0, 10*ms), 3, 5, ScaleUp, "rps 300.0 per worker > 200"},
		{"growth capped at max", ScaleState{Desired: 3, Changed: long}, sig(5000, 0, 0, 10*ms), 3, 6, ScaleUp, "rps"},
		{"at max and overloaded: hold", ScaleState{Desired: 6, Changed: long}, sig(5000, 0, 0, 10*ms), 6, 6, ScaleNone, "at --scale-max"},
		{"cpu over: grow", ScaleState{Desired: 2, Changed: long}, sig(10, 2.0, 0, 10*ms), 2, 3, ScaleUp, "cpu"},
		{"sessions over: grow", ScaleState{Desired: 2, Changed: long}, sig(10, 0, 130, 10*ms), 2, 3, ScaleUp, "sessions/s"},
		{"p95 over: one more", ScaleState{Desired: 3, Changed: long}, sig(10, 0, 0, 400*ms), 3, 4, ScaleUp, "p95"},
		{"up cooldown holds growth", ScaleState{Desired: 3, Changed: now.Add(-10 * time.Second)}, sig(900, 0, 0, 10*ms), 3, 3, ScaleNone, "up cooldown"},
		// Between the thresholds: 3 workers at 150 RPS each is below up
		// (200) but 2 workers would carry 225 > down (80): hold.
		{"between thresholds: hold (hysteresis)", ScaleState{Desired: 3, Changed: long}, sig(450, 0, 0, 10*ms), 3, 3, ScaleNone, "within thresholds"},
		{"idle: shrink to min", ScaleState{Desired: 5, Changed: long}, sig(1, 0.01, 0, 5*ms), 5, 2, ScaleDown, "fits 2 workers"},
		{"low load: shrink to what stays below down", ScaleState{Desired: 6, Changed: long}, sig(250, 0.1, 0, 5*ms), 6, 4, ScaleDown, "fits 4"},
		{"down cooldown holds shrink", ScaleState{Desired: 5, Changed: now.Add(-time.Minute)}, sig(1, 0, 0, 5*ms), 5, 5, ScaleNone, "down cooldown"},
		{"p95 between thresholds blocks shrink", ScaleState{Desired: 5, Changed: long}, sig(1, 0, 0, 150*ms), 5, 5, ScaleNone, "p95"},
		{"no doc: starts from the running count", ScaleState{}, sig(1, 0, 0, 5*ms), 4, 2, ScaleDown, "fits 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(cfg, tc.st, tc.sig, tc.current, now)
			if d.Desired != tc.want || d.Direction != tc.dir {
				t.Fatalf("Decide = %d %s (%v), want %d %s", d.Desired, d.Direction, d.Reasons, tc.want, tc.dir)
			}
			if !strings.Contains(strings.Join(d.Reasons, "; "), tc.why) {
				t.Fatalf("reasons %q do not mention %q", d.Reasons, tc.why)
			}
		})
	}
}

// After any decision, the same load never flips the decision back at once:
// growing lands where shrinking is not asked for, and the reverse.
func TestDecideNoFlapping(t *testing.T) {
	cfg := DefaultScaleConfig()
	cfg.Min, cfg.Max, cfg.UpCooldown, cfg.DownCooldown = 1, 50, 0, 0
	now := time.Now()
	for rps := 0.0; rps < 5000; rps += 37 {
		for cur := 1; cur <= 50; cur++ {
			sig := ScaleSignals{Valid: true, Workers: cur, RPS: rps}
			d := Decide(cfg, ScaleState{Desired: cur, Changed: now.Add(-time.Hour)}, sig, cur, now)
			if d.Direction == ScaleNone {
				continue
			}
			again := Decide(cfg, ScaleState{Desired: d.Desired, Changed: now.Add(-time.Hour)}, sig, d.Desired, now)
			if again.Direction != ScaleNone && again.Direction != d.Direction {
				t.Fatalf("rps %g: %d→%d (%s) then %d (%s)", rps, cur, d.Desired, d.Direction, again.Desired, again.Direction)
			}
		}
	}
}

func TestScaleConfigValidate(t *testing.T) {
	c := DefaultScaleConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.DownRPS = c.UpRPS
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "hysteresis") {
		t.Fatalf("down = up accepted: %v", err)
	}
	c = DefaultScaleConfig()
	c.Min, c.Max = 5, 2
	if err := c.Validate(); err == nil {
		t.Fatal("min > max accepted")
	}
}

const workerMetricsText = `# TYPE erlmcp_worker_requests_total counter
erlmcp_worker_requests_total{code="200",method="tools/call",node="w1"} 90
erlmcp_worker_requests_total{code="500",method="tools/call",node="w1"} 10
erlmcp_worker_requests_total{code="202",method="notifications/initialized",node="w1"} 5
# TYPE erlmcp_worker_request_duration_seconds histogram
erlmcp_worker_request_duration_seconds_bucket{method="tools/call",le="0.01"} 80
erlmcp_worker_request_duration_seconds_bucket{method="tools/call",le="0.1"} 95
erlmcp_worker_request_duration_seconds_bucket{method="tools/call",le="+Inf"} 100
erlmcp_worker_request_duration_seconds_sum{method="tools/call"} 3
erlmcp_worker_request_duration_seconds_count{method="tools/call"} 100
# TYPE erlmcp_worker_sessions_created_total counter
erlmcp_worker_sessions_created_total{node="w1"} 7
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
`

func TestParseWorkerMetricsAndRates(t *testing.T) {
	s, err := parseWorkerMetrics(strings.NewReader(workerMetricsText))
	if err != nil {
		t.Fatal(err)
	}
	if s.requests != 105 || s.errors != 10 || s.sessions != 7 || s.cpu != 12.5 {
		t.Fatalf("sample %+v", s)
	}
	if s.buckets[0.01] != 80 || s.buckets[0.1] != 95 || s.buckets[math.Inf(1)] != 100 {
		t.Fatalf("buckets %v", s.buckets)
	}
	t0 := time.Now()
	first := workerSample{at: t0, buckets: map[float64]float64{}}
	s.at = t0.Add(10 * time.Second)
	r, ok := rateOf(first, s)
	if !ok || r.rps != 10.5 || math.Abs(r.errRate-10.0/105) > 1e-9 || r.cpu != 1.25 {
		t.Fatalf("rate %+v ok=%v", r, ok)
	}
	if _, ok := rateOf(s, first); ok {
		t.Fatal("a counter that went backwards (restart) gave a rate")
	}
	sig := poolSignals(map[string]workerRate{"w1": r, "w2": r})
	if sig.RPS != 21 || sig.Workers != 2 || sig.P95 != 100*time.Millisecond {
		t.Fatalf("signals %+v", sig)
	}
}

func TestHistogramQuantile(t *testing.T) {
	inf := math.Inf(1)
	for _, tc := range []struct {
		b    map[float64]float64
		want time.Duration
	}{
		{map[float64]float64{}, 0},
		{map[float64]float64{0.01: 0, inf: 0}, 0},
		{map[float64]float64{0.01: 96, 0.1: 100, inf: 100}, 10 * time.Millisecond},
		{map[float64]float64{0.01: 10, 0.1: 20, inf: 100}, 100 * time.Millisecond}, // in +Inf: the largest finite bound
	} {
		if got := histogramQuantile(0.95, tc.b); got != tc.want {
			t.Errorf("p95 of %v = %s, want %s", tc.b, got, tc.want)
		}
	}
}
