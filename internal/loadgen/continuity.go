package loadgen

import (
	"math"
	"sort"
	"time"
)

// Continuity follows one logical client (a session slot) through the run:
// the values its session counter returns and the windows in which it could
// not be served. It is pure: the caller passes every time stamp, so tests
// drive it with a made-up clock. It is not safe for concurrent use; each
// slot carries one request at a time.
//
// Counter rules, for a counter that starts at 0 in a new session and whose
// every acknowledged increment by By returns the new value:
//   - the expected value is last+By; increments whose outcome is unknown
//     (the request failed: it may or may not have been applied) allow the
//     value to be up to that many increments further on;
//   - a value below the expected one is acknowledged writes lost (the value
//     went back), (expected-value)/By of them, unless it is exactly By after
//     a larger value: then the counter restarted from zero, which is a lost
//     session;
//   - a value above what the unknown increments explain is skipped
//     increments.
//
// Availability: a run of failures opens a gap at the start of its first
// failed request (the first moment the session was asked for and not
// served; the time the slot sat unused before it says nothing about the
// service); the next success closes it. The longest gap is the slot's
// failover time. The caller retries a failing slot at once, so a gap ends
// when the service is back.
type Continuity struct {
	By int64

	// counter state of the current session
	last    int64 // last acknowledged value (0 for a new session)
	pending int64 // increments sent since last ack whose outcome is unknown

	// availability
	failing   bool
	failStart time.Time
	maxGap    time.Duration
	gaps      int
	gapLog    []gapRec // every closed gap, for attributing them to faults

	// tallies
	Acks             int64 // acknowledged increments
	WritesLost       int64 // acknowledged increments that vanished (value went back)
	WritesLostEvents int64 // times the value went back
	Skipped          int64 // increments that appeared without being sent
	SkipEvents       int64 // times the value jumped ahead
	Absorbed         int64 // unknown-outcome increments that turned out applied
	SessionsLost     map[string]int64
}

// Verdict is what one counter value meant.
type Verdict int

// Verdicts of Counter.
const (
	CounterOK Verdict = iota
	CounterWentBack
	CounterSkipped
	CounterReset
)

func (v Verdict) String() string {
	switch v {
	case CounterOK:
		return "ok"
	case CounterWentBack:
		return "went back"
	case CounterSkipped:
		return "skipped"
	case CounterReset:
		return "reset"
	}
	return "?"
}

// NewContinuity returns a tracker for a counter that moves by by.
func NewContinuity(by int64) *Continuity {
	if by <= 0 {
		by = 1
	}
	return &Continuity{By: by, SessionsLost: map[string]int64{}}
}

// Counter records a counter value acknowledged by the server and says what
// it meant.
func (c *Continuity) Counter(v int64) Verdict {
	expected := c.last + c.By
	pending := c.pending
	last := c.last
	c.last = v
	c.pending = 0
	c.Acks++
	switch {
	case v >= expected && v <= expected+pending*c.By:
		c.Absorbed += (v - expected) / c.By
		return CounterOK
	case v > expected:
		extra := v - expected - pending*c.By
		c.Skipped += (extra + c.By - 1) / c.By
		c.SkipEvents++
		c.Absorbed += pending
		return CounterSkipped
	case v == c.By && last >= c.By:
		c.lose("counter_reset")
		c.last = v
		return CounterReset
	default:
		c.WritesLost += (expected - v + c.By - 1) / c.By
		c.WritesLostEvents++
		return CounterWentBack
	}
}

// CounterUnknown records an increment whose outcome is unknown (the request
// failed after it may have reached the server).
func (c *Continuity) CounterUnknown() { c.pending++ }

// Lost records that the session was found gone (reason e.g. "http_404") and
// starts counting from a new session.
func (c *Continuity) Lost(reason string) { c.lose(reason) }

func (c *Continuity) lose(reason string) {
	c.SessionsLost[reason]++
	c.Restart()
}

// Restart starts counting from a new session (after an intentional DELETE or
// a lost session was replaced): the counter is expected to start again at 0.
func (c *Continuity) Restart() {
	c.last = 0
	c.pending = 0
}

// LostTotal is the number of sessions lost, whatever the reason.
func (c *Continuity) LostTotal() int64 {
	var n int64
	for _, v := range c.SessionsLost {
		n += v
	}
	return n
}

// Success records a request answered successfully, completed at now.
func (c *Continuity) Success(now time.Time) {
	if c.failing {
		c.closeGap(now)
	}
}

// Failure records a request, started at start, that failed at now.
func (c *Continuity) Failure(start, now time.Time) {
	if c.failing {
		return
	}
	c.failing = true
	c.failStart = start
}

func (c *Continuity) closeGap(now time.Time) {
	if g := now.Sub(c.failStart); g > c.maxGap {
		c.maxGap = g
	}
	c.gapLog = append(c.gapLog, gapRec{start: c.failStart, end: now})
	c.gaps++
	c.failing = false
}

// Finish closes the run at end: a gap still open counts up to end.
func (c *Continuity) Finish(end time.Time) {
	if c.failing {
		c.closeGap(end)
	}
}

// MaxGap is the slot's longest window without service (its failover time).
func (c *Continuity) MaxGap() time.Duration { return c.maxGap }

// Gaps is the number of failure runs the slot went through.
func (c *Continuity) Gaps() int { return c.gaps }

// Failing reports whether the slot's last request failed.
func (c *Continuity) Failing() bool { return c.failing }

// ContinuitySummary adds up the trackers of every slot.
type ContinuitySummary struct {
	CounterAcks          int64            `json:"counter_acks"`
	WritesLost           int64            `json:"writes_lost"`
	WritesLostEvents     int64            `json:"writes_lost_events"`
	Skipped              int64            `json:"skipped"`
	SkipEvents           int64            `json:"skip_events"`
	UnknownApplied       int64            `json:"unknown_outcome_applied"`
	SessionsLost         int64            `json:"sessions_lost"`
	SessionsLostByReason map[string]int64 `json:"sessions_lost_by_reason"`
	SlotsWithGaps        int              `json:"slots_with_gaps"`
	FailoverMax          time.Duration    `json:"-"`
	FailoverP99          time.Duration    `json:"-"`
	FailoverMaxMS        float64          `json:"failover_max_ms"`
	FailoverP99MS        float64          `json:"failover_p99_ms"`
}

// Summarize adds up trackers. Failover p99 is over every slot, a slot that
// never failed counting as 0, by nearest rank.
func Summarize(ts []*Continuity) ContinuitySummary {
	s := ContinuitySummary{SessionsLostByReason: map[string]int64{}}
	gaps := make([]time.Duration, 0, len(ts))
	for _, c := range ts {
		s.CounterAcks += c.Acks
		s.WritesLost += c.WritesLost
		s.WritesLostEvents += c.WritesLostEvents
		s.Skipped += c.Skipped
		s.SkipEvents += c.SkipEvents
		s.UnknownApplied += c.Absorbed
		for k, v := range c.SessionsLost {
			s.SessionsLostByReason[k] += v
			s.SessionsLost += v
		}
		if c.gaps > 0 {
			s.SlotsWithGaps++
		}
		gaps = append(gaps, c.maxGap)
	}
	if len(gaps) > 0 {
		sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
		s.FailoverMax = gaps[len(gaps)-1]
		s.FailoverP99 = gaps[nearestRank(0.99, len(gaps))]
	}
	s.FailoverMaxMS = ms(s.FailoverMax)
	s.FailoverP99MS = ms(s.FailoverP99)
	return s
}

// nearestRank is the index of the q-quantile in n sorted values.
func nearestRank(q float64, n int) int {
	i := int(math.Ceil(q*float64(n))) - 1
	if i < 0 {
		i = 0
	}
	if i >= n {
		i = n - 1
	}
	return i
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
