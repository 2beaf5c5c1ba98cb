package multiraft

import (
	"sync/atomic"
	"time"
)

// WriteTimings break the latency of the proposals this node led and
// answered with a result into the stages of the write path, summed over
// those proposals (divide by Count for the mean). The stages follow one
// another, so their sum is the whole time from Propose to the answer:
//
//   - Queued: until the loop took the proposal into a Ready (it waits for
//     the loop's turn and, when the shard's previous Ready is in flight in
//     the WAL writer, for that Ready's fsync: walwriter.go);
//   - LeaderSync: until the WAL writer's fsync that covered its entry
//     ended (the fsync in progress when it was handed over, if any, then
//     its own);
//   - Quorum: until the loop saw it committed (a follower's append,
//     fsync and acknowledgement; the loop finishing the leader's own
//     Ready once durable; the next Ready of the shard);
//   - ApplyQueued: until the loop handed it to the applier (at once when
//     its entry is durable here, as on a leader; else the rest of the
//     iteration that saw it committed);
//   - Applied: until the applier answered it.
//
// Iterations sums the loop iterations each proposal spanned.
type WriteTimings struct {
	Count                                            uint64
	Queued, LeaderSync, Quorum, ApplyQueued, Applied time.Duration
	Iterations                                       uint64
}

// FollowerTimings: a follower's appends, from receiving the first append
// message of an iteration to sending its acknowledgement (after its fsync).
type FollowerTimings struct {
	Count uint64
	Time  time.Duration
}

// writeStamps are one proposal's times through the write path (see
// WriteTimings). start and iter0 are set under the replica's lock by
// propose, ready by placeProposals (loop, lock held), durable, committed
// and handed by the loop before the applier can see the proposal's entry
// (the applier's queue orders those writes before its reads).
type writeStamps struct {
	start, ready, durable, committed, handed time.Time
	iter0                                    uint64
}

type timingCounters struct {
	count, queued, leaderSync, quorum, applyQueued, applied, iters atomic.Uint64
	followerCount, followerNanos                                   atomic.Uint64
}

// record adds a proposal answered now to the counters; proposals the loop
// never saw committed (conf changes answered on the loop, legacy path
// oddities) are left out.
func (t *timingCounters) record(s *writeStamps, iter uint64, now time.Time) {
	if s.handed.IsZero() || s.ready.IsZero() {
		return
	}
	durable := s.durable
	if durable.IsZero() || durable.After(s.committed) {
		durable = s.committed
	}
	t.count.Add(1)
	t.queued.Add(nanos(s.ready.Sub(s.start)))
	t.leaderSync.Add(nanos(durable.Sub(s.ready)))
	t.quorum.Add(nanos(s.committed.Sub(durable)))
	t.applyQueued.Add(nanos(s.handed.Sub(s.committed)))
	t.applied.Add(nanos(now.Sub(s.handed)))
	t.iters.Add(iter - s.iter0)
}

func nanos(d time.Duration) uint64 {
	if d < 0 {
		return 0
	}
	return uint64(d)
}

func (t *timingCounters) writes() WriteTimings {
	return WriteTimings{
		Count:       t.count.Load(),
		Queued:      time.Duration(t.queued.Load()),
		LeaderSync:  time.Duration(t.leaderSync.Load()),
		Quorum:      time.Duration(t.quorum.Load()),
		ApplyQueued: time.Duration(t.applyQueued.Load()),
		Applied:     time.Duration(t.applied.Load()),
		Iterations:  t.iters.Load(),
	}
}

func (t *timingCounters) follower() FollowerTimings {
	return FollowerTimings{Count: t.followerCount.Load(), Time: time.Duration(t.followerNanos.Load())}
}

// Sub is w minus an earlier reading o.
func (w WriteTimings) Sub(o WriteTimings) WriteTimings {
	return WriteTimings{
		Count:       w.Count - o.Count,
		Queued:      w.Queued - o.Queued,
		LeaderSync:  w.LeaderSync - o.LeaderSync,
		Quorum:      w.Quorum - o.Quorum,
		ApplyQueued: w.ApplyQueued - o.ApplyQueued,
		Applied:     w.Applied - o.Applied,
		Iterations:  w.Iterations - o.Iterations,
	}
}

// Report hands report each stage's mean in ms and the loop iterations per
// write, under the units the benchmarks print (testing.B.ReportMetric
// fits); nothing when no write was counted.
func (w WriteTimings) Report(report func(float64, string)) {
	if w.Count == 0 {
		return
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(w.Count) / float64(time.Millisecond) }
	report(ms(w.Queued), "w-queued-ms")
	report(ms(w.LeaderSync), "w-lsync-ms")
	report(ms(w.Quorum), "w-quorum-ms")
	report(ms(w.ApplyQueued), "w-applyq-ms")
	report(ms(w.Applied), "w-apply-ms")
	report(float64(w.Iterations)/float64(w.Count), "w-iters")
}

// Add is w plus o (sums over nodes).
func (w WriteTimings) Add(o WriteTimings) WriteTimings {
	return WriteTimings{
		Count:       w.Count + o.Count,
		Queued:      w.Queued + o.Queued,
		LeaderSync:  w.LeaderSync + o.LeaderSync,
		Quorum:      w.Quorum + o.Quorum,
		ApplyQueued: w.ApplyQueued + o.ApplyQueued,
		Applied:     w.Applied + o.Applied,
		Iterations:  w.Iterations + o.Iterations,
	}
}
