package loadgen

import (
	"testing"
	"time"
)

// clock is a made-up clock for the tracker.
type clock struct{ t time.Time }

func newClock() *clock { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) at(d time.Duration) time.Time { return c.t.Add(d) }

func TestContinuityInOrder(t *testing.T) {
	c := NewContinuity(1)
	for v := int64(1); v <= 100; v++ {
		if got := c.Counter(v); got != CounterOK {
			t.Fatalf("value %d: %s", v, got)
		}
	}
	if c.Acks != 100 || c.WritesLost+c.Skipped+c.LostTotal() != 0 {
		t.Fatalf("clean run: %+v", c)
	}
}

func TestContinuityBy(t *testing.T) {
	c := NewContinuity(5)
	for _, v := range []int64{5, 10, 15} {
		if got := c.Counter(v); got != CounterOK {
			t.Fatalf("value %d: %s", v, got)
		}
	}
	if got := c.Counter(30); got != CounterSkipped || c.Skipped != 2 {
		t.Fatalf("15 -> 30 by 5: %s, skipped %d, want 2", got, c.Skipped)
	}
	if got := c.Counter(20); got != CounterWentBack || c.WritesLost != 3 {
		t.Fatalf("30 -> 20 by 5: %s, writes lost %d, want 3 (20, 25, 30 acked and gone... expected 35)", got, c.WritesLost)
	}
}

func TestContinuityWentBack(t *testing.T) {
	c := NewContinuity(1)
	for v := int64(1); v <= 5; v++ {
		c.Counter(v)
	}
	// the server forgot acks 4 and 5: it had 3, answers 4
	if got := c.Counter(4); got != CounterWentBack {
		t.Fatalf("5 -> 4: %s", got)
	}
	if c.WritesLost != 2 || c.WritesLostEvents != 1 {
		t.Fatalf("writes lost %d events %d, want 2 and 1", c.WritesLost, c.WritesLostEvents)
	}
	// counting goes on from the new value
	if got := c.Counter(5); got != CounterOK {
		t.Fatalf("4 -> 5 after going back: %s", got)
	}
	// the same value twice is one write lost
	if got := c.Counter(5); got != CounterWentBack || c.WritesLost != 3 {
		t.Fatalf("5 -> 5: %s, writes lost %d", got, c.WritesLost)
	}
	if c.LostTotal() != 0 || c.Skipped != 0 {
		t.Fatalf("going back is not a lost session or a skip: %+v", c)
	}
}

func TestContinuitySkip(t *testing.T) {
	c := NewContinuity(1)
	c.Counter(1)
	c.Counter(2)
	if got := c.Counter(5); got != CounterSkipped || c.Skipped != 2 || c.SkipEvents != 1 {
		t.Fatalf("2 -> 5: %s skipped %d events %d, want 2 and 1", got, c.Skipped, c.SkipEvents)
	}
	if got := c.Counter(6); got != CounterOK {
		t.Fatalf("5 -> 6: %s", got)
	}
	// a new session whose first value is not by has skipped
	c.Restart()
	if got := c.Counter(3); got != CounterSkipped || c.Skipped != 4 {
		t.Fatalf("new session first value 3: %s skipped %d", got, c.Skipped)
	}
}

func TestContinuityUnknownOutcomes(t *testing.T) {
	c := NewContinuity(1)
	c.Counter(1)
	c.Counter(2)
	// two increments timed out: either, both or neither may have been applied
	c.CounterUnknown()
	c.CounterUnknown()
	if got := c.Counter(5); got != CounterOK || c.Absorbed != 2 {
		t.Fatalf("2 -> (2 unknown) -> 5: %s absorbed %d", got, c.Absorbed)
	}
	c.CounterUnknown()
	if got := c.Counter(6); got != CounterOK || c.Absorbed != 2 {
		t.Fatalf("5 -> (1 unknown, not applied) -> 6: %s absorbed %d", got, c.Absorbed)
	}
	// unknowns are forgotten once a value is acknowledged
	if got := c.Counter(8); got != CounterSkipped || c.Skipped != 1 {
		t.Fatalf("6 -> 8 with nothing unknown: %s skipped %d", got, c.Skipped)
	}
	// more than the unknowns explain is a skip of the excess only
	c.CounterUnknown()
	if got := c.Counter(12); got != CounterSkipped || c.Skipped != 3 {
		t.Fatalf("8 -> (1 unknown) -> 12: %s skipped %d, want 1+2", got, c.Skipped)
	}
	// unknowns never excuse going back
	c.CounterUnknown()
	if got := c.Counter(11); got != CounterWentBack || c.WritesLost != 2 {
		t.Fatalf("12 -> (1 unknown) -> 11: %s writes lost %d", got, c.WritesLost)
	}
}

func TestContinuityReset(t *testing.T) {
	c := NewContinuity(1)
	for v := int64(1); v <= 7; v++ {
		c.Counter(v)
	}
	if got := c.Counter(1); got != CounterReset {
		t.Fatalf("7 -> 1: %s, want reset", got)
	}
	if c.LostTotal() != 1 || c.SessionsLost["counter_reset"] != 1 || c.WritesLost != 0 {
		t.Fatalf("reset: lost %v writes lost %d", c.SessionsLost, c.WritesLost)
	}
	// counting goes on from the restarted counter
	if got := c.Counter(2); got != CounterOK {
		t.Fatalf("1 -> 2 after reset: %s", got)
	}
	// the first value of a session is not a reset
	c2 := NewContinuity(1)
	if got := c2.Counter(1); got != CounterOK || c2.LostTotal() != 0 {
		t.Fatalf("first value 1: %s lost %d", got, c2.LostTotal())
	}
}

func TestContinuity404AndRestart(t *testing.T) {
	c := NewContinuity(1)
	c.Counter(1)
	c.Counter(2)
	c.Lost("http_404")
	if c.LostTotal() != 1 || c.SessionsLost["http_404"] != 1 {
		t.Fatalf("404: %v", c.SessionsLost)
	}
	// the replacement session starts from 0
	if got := c.Counter(1); got != CounterOK {
		t.Fatalf("new session after 404, value 1: %s", got)
	}
	// an intentional DELETE + initialize is a restart, not a loss
	c.Counter(2)
	c.Restart()
	if got := c.Counter(1); got != CounterOK || c.LostTotal() != 1 {
		t.Fatalf("after restart: %s lost %d", got, c.LostTotal())
	}
}

func TestContinuityGaps(t *testing.T) {
	clk := newClock()
	c := NewContinuity(1)
	c.Success(clk.at(1 * time.Second))
	c.Success(clk.at(2 * time.Second))
	// failures from 2.5 s to 4 s, next success at 5 s: gap from the start
	// of the first failed request (2.5 s, not the last success at 2 s: the
	// slot was not asked for in between) to the next success (5 s)
	c.Failure(clk.at(2500*time.Millisecond), clk.at(3*time.Second))
	c.Failure(clk.at(3*time.Second), clk.at(4*time.Second))
	if !c.Failing() {
		t.Fatal("not failing after failures")
	}
	c.Success(clk.at(5 * time.Second))
	if c.MaxGap() != 2500*time.Millisecond || c.Gaps() != 1 {
		t.Fatalf("gap %s (%d gaps), want 2.5s", c.MaxGap(), c.Gaps())
	}
	// a shorter gap later does not lower the max; a longer one raises it
	c.Failure(clk.at(5100*time.Millisecond), clk.at(5200*time.Millisecond))
	c.Success(clk.at(6 * time.Second))
	if c.MaxGap() != 2500*time.Millisecond || c.Gaps() != 2 {
		t.Fatalf("after short gap: %s (%d)", c.MaxGap(), c.Gaps())
	}
	c.Failure(clk.at(7*time.Second), clk.at(8*time.Second))
	c.Success(clk.at(10 * time.Second))
	if c.MaxGap() != 3*time.Second {
		t.Fatalf("after long gap: %s, want 3s", c.MaxGap())
	}
}

func TestContinuityGapNeverServedAndOpenAtEnd(t *testing.T) {
	clk := newClock()
	// never served until 3 s: the gap runs from the first attempt
	c := NewContinuity(1)
	c.Failure(clk.at(1*time.Second), clk.at(2*time.Second))
	c.Success(clk.at(3 * time.Second))
	if c.MaxGap() != 2*time.Second {
		t.Fatalf("never-served gap %s, want 2s", c.MaxGap())
	}
	// still failing when the run ends: the gap counts up to the end
	d := NewContinuity(1)
	d.Success(clk.at(1 * time.Second))
	d.Failure(clk.at(2*time.Second), clk.at(3*time.Second))
	d.Finish(clk.at(9 * time.Second))
	if d.MaxGap() != 7*time.Second || d.Failing() {
		t.Fatalf("open gap %s, want 7s", d.MaxGap())
	}
	// Finish without a failure changes nothing
	e := NewContinuity(1)
	e.Success(clk.at(time.Second))
	e.Finish(clk.at(9 * time.Second))
	if e.MaxGap() != 0 || e.Gaps() != 0 {
		t.Fatalf("no failure: gap %s", e.MaxGap())
	}
}

func TestSummarize(t *testing.T) {
	clk := newClock()
	var ts []*Continuity
	for i := 0; i < 200; i++ {
		c := NewContinuity(1)
		c.Success(clk.at(0))
		if i < 3 {
			// three slots with gaps of 1, 2, 3 s
			c.Failure(clk.at(0), clk.at(time.Millisecond))
			c.Success(clk.at(time.Duration(i+1) * time.Second))
		}
		c.Counter(1)
		ts = append(ts, c)
	}
	ts[5].Counter(0) // went back: expected 2, got 0: 2 writes lost
	ts[6].Counter(5) // skipped 3
	ts[7].Lost("http_404")
	ts[8].Counter(2)
	ts[8].Counter(1) // reset
	s := Summarize(ts)
	if s.FailoverMax != 3*time.Second {
		t.Errorf("failover max %s, want 3s", s.FailoverMax)
	}
	// p99 over 200 slots is the 198th smallest: 197 slots without a gap,
	// then the 1 s gap
	if s.FailoverP99 != time.Second || s.FailoverP99MS != 1000 {
		t.Errorf("failover p99 %s (%v ms), want 1s", s.FailoverP99, s.FailoverP99MS)
	}
	if s.SlotsWithGaps != 3 || s.WritesLost != 2 || s.Skipped != 3 || s.SessionsLost != 2 ||
		s.SessionsLostByReason["http_404"] != 1 || s.SessionsLostByReason["counter_reset"] != 1 || s.CounterAcks != 204 {
		t.Errorf("summary %+v", s)
	}
	if e := Summarize(nil); e.FailoverMax != 0 || e.SessionsLost != 0 {
		t.Errorf("empty summary %+v", e)
	}
}
