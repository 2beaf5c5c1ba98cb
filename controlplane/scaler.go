package controlplane

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// ScaleConfig is load-based scaling of one worker pool.
//
// Load comes from scraping every registered worker's /metrics (requests by
// code, the request-duration histogram, process CPU seconds, sessions
// created) rather than from membership's load field: the worker already
// counts all of it for Prometheus, one scrape per worker per tick gives
// every signal at once, and it costs etcd no write per worker per second.
//
// Each signal has a scale-up threshold above its scale-down threshold
// (hysteresis): the pool grows when any signal per worker is above its up
// threshold, and shrinks only when every signal would still be below its
// down threshold with fewer workers. A zero up threshold turns a signal off.
type ScaleConfig struct {
	// Enabled turns scaling on (it needs an actuator).
	Enabled bool
	// Pool is the pool scaled (its processes and members are role Pool).
	Pool string
	// Min and Max bound the desired count.
	Min, Max int
	// Window is how far back rates are computed over.
	Window time.Duration
	// RPS per worker (all MCP requests).
	UpRPS, DownRPS float64
	// P95 request latency of the pool.
	UpP95, DownP95 time.Duration
	// CPU cores per worker (process_cpu_seconds_total rate).
	UpCPU, DownCPU float64
	// New sessions per second per worker (workers are stateless, so the
	// rate of sessions they create is the session load they carry).
	UpSessions, DownSessions float64
	// UpCooldown and DownCooldown are the least time since the last change
	// before growing or shrinking again.
	UpCooldown, DownCooldown time.Duration
}

// DefaultScaleConfig: off; 1..10 workers; up at 200 RPS, 250 ms p95, 0.8
// cores or 50 new sessions/s per worker, down below 80 RPS, 100 ms, 0.3
// cores and 20 sessions/s; 30 s between growth steps, 5 min before a
// shrink.
func DefaultScaleConfig() ScaleConfig {
	return ScaleConfig{
		Pool: "worker", Min: 1, Max: 10, Window: 10 * time.Second,
		UpRPS: 200, DownRPS: 80,
		UpP95: 250 * time.Millisecond, DownP95: 100 * time.Millisecond,
		UpCPU: 0.8, DownCPU: 0.3,
		UpSessions: 50, DownSessions: 20,
		UpCooldown: 30 * time.Second, DownCooldown: 5 * time.Minute,
	}
}

// Validate says what is wrong.
func (c ScaleConfig) Validate() error {
	switch {
	case c.Pool == "":
		return errors.New("--scale-pool is empty")
	case c.Min < 0 || c.Max < 1 || c.Min > c.Max:
		return fmt.Errorf("--scale-min %d / --scale-max %d: want 0 <= min <= max and max >= 1", c.Min, c.Max)
	case c.Window <= 0:
		return fmt.Errorf("--scale-window %s: must be positive", c.Window)
	case c.UpCooldown < 0 || c.DownCooldown < 0:
		return fmt.Errorf("--scale-up-cooldown %s / --scale-down-cooldown %s: must not be negative", c.UpCooldown, c.DownCooldown)
	}
	for _, s := range []struct {
		name     string
		up, down float64
	}{
		{"rps", c.UpRPS, c.DownRPS},
		{"p95", c.UpP95.Seconds(), c.DownP95.Seconds()},
		{"cpu", c.UpCPU, c.DownCPU},
		{"sessions", c.UpSessions, c.DownSessions},
	} {
		if s.up < 0 || s.down < 0 {
			return fmt.Errorf("--scale-up-%s / --scale-down-%s: must not be negative", s.name, s.name)
		}
		if s.up > 0 && s.down >= s.up {
			return fmt.Errorf("--scale-down-%s %g must be below --scale-up-%s %g (hysteresis)", s.name, s.down, s.name, s.up)
		}
	}
	return nil
}

// ScaleSignals is the pool's measured load.
type ScaleSignals struct {
	// Valid is false until rates could be computed (two scrapes).
	Valid bool
	// Workers is the number of serving workers measured.
	Workers int
	// Pool totals per second, and the pool's p95 latency.
	RPS, CPU, Sessions float64
	P95                time.Duration
}

// ScaleState is what desired/<pool> held before.
type ScaleState struct {
	// Desired is the last desired count (0 with no document).
	Desired int
	// Changed is when it was last changed.
	Changed time.Time
}

// Scale directions.
const (
	ScaleUp   = "up"
	ScaleDown = "down"
	ScaleNone = "none"
)

// ScaleDecision is Decide's answer.
type ScaleDecision struct {
	Desired   int
	Direction string
	Reasons   []string
}

// Decide computes the desired worker count. current is the count to start
// from when desired/<pool> does not exist yet (the processes running).
// It is pure: the scale loop feeds it measurements and the stored state.
func Decide(cfg ScaleConfig, st ScaleState, sig ScaleSignals, current int, now time.Time) ScaleDecision {
	cur := st.Desired
	if cur <= 0 {
		cur = current
	}
	switch {
	case cur < cfg.Min:
		return ScaleDecision{cfg.Min, ScaleUp, []string{fmt.Sprintf("%d below --scale-min %d", cur, cfg.Min)}}
	case cur > cfg.Max:
		return ScaleDecision{cfg.Max, ScaleDown, []string{fmt.Sprintf("%d above --scale-max %d", cur, cfg.Max)}}
	}
	hold := func(why string) ScaleDecision { return ScaleDecision{cur, ScaleNone, []string{why}} }
	if !sig.Valid {
		return hold("no load measured yet")
	}
	since := now.Sub(st.Changed)
	per := func(total float64, n int) float64 { return total / float64(max(n, 1)) }

	// Growth: the largest count any signal asks for.
	up := cur
	var upWhy []string
	for _, s := range []struct {
		name      string
		total, th float64
	}{
		{"rps", sig.RPS, cfg.UpRPS},
		{"cpu", sig.CPU, cfg.UpCPU},
		{"sessions/s", sig.Sessions, cfg.UpSessions},
	} {
		if s.th > 0 && per(s.total, cur) > s.th {
			need := int(math.Ceil(s.total / s.th))
			up = max(up, need)
			upWhy = append(upWhy, fmt.Sprintf("%s %.1f per worker > %g", s.name, per(s.total, cur), s.th))
		}
	}
	if cfg.UpP95 > 0 && sig.P95 > cfg.UpP95 {
		up = max(up, cur+1)
		upWhy = append(upWhy, fmt.Sprintf("p95 %s > %s", sig.P95.Round(time.Millisecond), cfg.UpP95))
	}
	if up = min(up, cfg.Max); up > cur {
		if !st.Changed.IsZero() && since < cfg.UpCooldown {
			return hold(fmt.Sprintf("would grow to %d (%s) but in up cooldown (%s of %s)", up, strings.Join(upWhy, ", "), since.Round(time.Second), cfg.UpCooldown))
		}
		return ScaleDecision{up, ScaleUp, upWhy}
	}
	if len(upWhy) > 0 {
		return hold("at --scale-max: " + strings.Join(upWhy, ", "))
	}

	// Shrink: the fewest workers at which every signal stays below its down
	// threshold.
	if cfg.UpP95 > 0 && sig.P95 >= cfg.DownP95 {
		return hold(fmt.Sprintf("p95 %s not below %s", sig.P95.Round(time.Millisecond), cfg.DownP95))
	}
	down := cfg.Min
	for _, s := range []struct {
		total, up, th float64
	}{
		{sig.RPS, cfg.UpRPS, cfg.DownRPS},
		{sig.CPU, cfg.UpCPU, cfg.DownCPU},
		{sig.Sessions, cfg.UpSessions, cfg.DownSessions},
	} {
		if s.up <= 0 {
			continue
		}
		// Smallest n with total/n < th.
		down = max(down, int(math.Floor(s.total/s.th))+1)
	}
	if down >= cur {
		return hold("load within thresholds")
	}
	if !st.Changed.IsZero() && since < cfg.DownCooldown {
		return hold(fmt.Sprintf("would shrink to %d but in down cooldown (%s of %s)", down, since.Round(time.Second), cfg.DownCooldown))
	}
	return ScaleDecision{down, ScaleDown, []string{fmt.Sprintf("load fits %d workers: rps %.1f, cpu %.2f, sessions/s %.1f, p95 %s (all below the down thresholds)",
		down, sig.RPS, sig.CPU, sig.Sessions, sig.P95.Round(time.Millisecond))}}
}

// workerSample is one scrape of a worker's /metrics.
type workerSample struct {
	at       time.Time
	requests float64 // all requests
	errors   float64 // 5xx answers
	cpu      float64 // process CPU seconds
	sessions float64 // sessions created
	// buckets are the request-duration histogram's cumulative counts by
	// upper bound, summed over methods.
	buckets map[float64]float64
}

// workerRate is one worker's load over the window.
type workerRate struct {
	rps, errRate, cpu, sessions float64
	requests                    float64 // requests in the window
	buckets                     map[float64]float64
}

// rateOf compares the oldest and newest sample of one process (counters
// only grow within a process, so a drop means a restart: no rate).
func rateOf(first, last workerSample) (workerRate, bool) {
	dt := last.at.Sub(first.at).Seconds()
	if dt <= 0 || last.requests < first.requests || last.cpu < first.cpu {
		return workerRate{}, false
	}
	r := workerRate{
		requests: last.requests - first.requests,
		cpu:      (last.cpu - first.cpu) / dt,
		sessions: (last.sessions - first.sessions) / dt,
		buckets:  map[float64]float64{},
	}
	r.rps = r.requests / dt
	if r.requests > 0 {
		r.errRate = (last.errors - first.errors) / r.requests
	}
	for le, c := range last.buckets {
		r.buckets[le] = c - first.buckets[le]
	}
	return r, true
}

// poolSignals sums the workers' rates; p95 comes from the merged histogram
// deltas (the upper bound of the bucket holding the 95th percentile).
func poolSignals(rates map[string]workerRate) ScaleSignals {
	sig := ScaleSignals{Valid: len(rates) > 0, Workers: len(rates)}
	merged := map[float64]float64{}
	for _, r := range rates {
		sig.RPS += r.rps
		sig.CPU += r.cpu
		sig.Sessions += r.sessions
		for le, c := range r.buckets {
			merged[le] += c
		}
	}
	sig.P95 = histogramQuantile(0.95, merged)
	return sig
}

// histogramQuantile returns the upper bound of the bucket that holds
// quantile q of cumulative bucket counts (0 with no observations; the
// largest finite bound when it falls in +Inf).
func histogramQuantile(q float64, buckets map[float64]float64) time.Duration {
	les := make([]float64, 0, len(buckets))
	for le := range buckets {
		les = append(les, le)
	}
	sort.Float64s(les)
	if len(les) == 0 {
		return 0
	}
	total := buckets[les[len(les)-1]]
	if total <= 0 {
		return 0
	}
	lastFinite := 0.0
	for _, le := range les {
		if !math.IsInf(le, 1) {
			lastFinite = le
		}
		if buckets[le] >= q*total {
			if math.IsInf(le, 1) {
				le = lastFinite
			}
			return time.Duration(le * float64(time.Second))
		}
	}
	return time.Duration(lastFinite * float64(time.Second))
}
