package controlplane

import (
	"fmt"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
)

func TestRegionProbesRecordAndSnapshot(t *testing.T) {
	p := newRegionProbes()
	t0 := time.Unix(1000, 0)
	if _, _, ok := p.snapshot(t0, time.Second); ok {
		t.Fatal("a snapshot before any round must not be usable")
	}
	ms := []membership.Member{{ID: "w1", Region: "east"}}
	for i := range 4 {
		p.record(t0.Add(time.Duration(i)*time.Second), map[string]bool{"east": i%2 == 0, "west": true}, ms, 3)
	}
	rounds, gotMs, ok := p.snapshot(t0.Add(3500*time.Millisecond), time.Second)
	if !ok || len(gotMs) != 1 {
		t.Fatalf("snapshot: ok %v members %v", ok, gotMs)
	}
	if len(rounds["east"]) != 3 || rounds["east"][0].at != t0.Add(time.Second) || rounds["east"][0].ok || !rounds["east"][1].ok {
		t.Fatalf("east keeps the last 3 rounds, oldest first: %+v", rounds["east"])
	}
	// The copy is the caller's: changing it leaves the history alone.
	rounds["east"][0].ok = true
	if again, _, _ := p.snapshot(t0.Add(3500*time.Millisecond), time.Second); again["east"][0].ok {
		t.Fatal("snapshot shares its slices with the history")
	}
	// A region gone from a round is forgotten.
	p.record(t0.Add(4*time.Second), map[string]bool{"west": true}, ms, 3)
	if rounds, _, _ := p.snapshot(t0.Add(4*time.Second), time.Second); len(rounds) != 1 || len(rounds["west"]) != 3 {
		t.Fatalf("after east vanished: %+v", rounds)
	}
	// Stale: the prober has not finished a round for longer than maxAge.
	if _, _, ok := p.snapshot(t0.Add(6*time.Second), time.Second); ok {
		t.Fatal("a stale history must not be usable")
	}
	select {
	case <-p.round:
	default:
		t.Fatal("record did not signal the round")
	}
}

// TestStandbyFailsOverRegionFromItsOwnProbes: the leader dies together
// with the active region's workers (a region failure that takes the leader
// with it). The standby has been probing all along, so the failover it
// makes once elected is judged from rounds it saw before the election
// (the history entry starts before the term), not from a window it only
// starts filling after it.
func TestStandbyFailsOverRegionFromItsOwnProbes(t *testing.T) {
	e := testcluster.StartEtcd(t)
	eastWorker := eastActiveWestStandby(t, e, 10*time.Second)

	// The election lease (3 s) outlasts the FailAfter (4) rounds of 100 ms
	// many times over, even on a loaded machine.
	ca, cb := testConfig(e, "cp-a"), testConfig(e, "cp-b")
	for _, c := range []*Config{&ca, &cb} {
		c.Common.Region = "west"
		c.ProbeInterval = 100 * time.Millisecond
		c.ElectionTTL = 3 * time.Second
	}
	a, b := startCP(t, ca), startCP(t, cb)
	l := oneLeader(t, 10*time.Second, a, b)
	standby := other(a, b, l)
	testcluster.WaitFor(t, 5*time.Second, "the standby's first probe round", func() error {
		if _, _, ok := standby.probes.snapshot(time.Now(), time.Second); !ok {
			return fmt.Errorf("no round yet")
		}
		return nil
	})

	crashed := make(chan struct{})
	go func() { defer close(crashed); l.crash() }()
	eastWorker.Close()
	t.Cleanup(func() { <-crashed })

	testcluster.WaitFor(t, 10*time.Second, "the standby sees east failing", func() error {
		rounds, _, _ := standby.probes.snapshot(time.Now(), time.Second)
		bad := 0
		for _, r := range rounds["east"] {
			if !r.ok {
				bad++
			}
		}
		if bad < standby.cfg.Detector.FailAfter {
			return fmt.Errorf("%d failed rounds of east", bad)
		}
		return nil
	})
	if standby.IsLeader() {
		t.Fatal("the standby was elected before it saw the region fail: the election lease did not hold (machine overloaded?)")
	}

	oneLeader(t, ca.ElectionTTL+5*time.Second, standby)
	var h HistoryEntry
	testcluster.WaitFor(t, 5*time.Second, "the new leader's region failover", func() error {
		var hist []HistoryEntry
		get(t, standby.AdminURL()+"/v1/history", testToken, &hist)
		for _, e := range hist {
			if e.Kind == HistoryRegionFailover && e.From == "east" && e.To == "west" && e.Outcome == "succeeded" {
				h = e
				return nil
			}
		}
		return fmt.Errorf("history %+v", hist)
	})
	since := standby.lead.Load().since
	if !h.Start.Before(since) {
		t.Fatalf("the failover starts at %s, not before the term (%s): the new leader did not use the rounds it probed as a standby", h.Start, since)
	}
	t.Logf("region failed over %s after the new term began; its first failed round was %s before it", h.End.Sub(since), since.Sub(h.Start))
}

func TestRegionFailingOnlyOnAFreshFailedRound(t *testing.T) {
	cp := &ControlPlane{cfg: Config{ProbeInterval: time.Second}, probes: newRegionProbes()}
	if cp.regionFailing("east") {
		t.Fatal("no round yet: not failing")
	}
	now := time.Now()
	cp.probes.record(now, map[string]bool{"east": false, "west": true}, nil, 4)
	if !cp.regionFailing("east") || cp.regionFailing("west") || cp.regionFailing("mars") {
		t.Fatal("east's last round failed, west's passed, mars is unknown")
	}
	cp.probes.record(now, map[string]bool{"east": true, "west": true}, nil, 4)
	if cp.regionFailing("east") {
		t.Fatal("east's last round passed")
	}
	cp.probes.record(now.Add(-time.Minute), map[string]bool{"east": false}, nil, 4)
	if cp.regionFailing("east") {
		t.Fatal("a stale round (the prober stuck) must not hold autoheal back")
	}
}
