package front

import (
	"time"

	"github.com/erlmcp/erlmcp/internal/membership"
)

// vanishGrace keeps routing to a worker whose membership key vanished
// although the worker never said it was draining, for a grace period.
//
// Why: a key can vanish under a live worker. etcd revokes a lease it
// believes expired, and does so for every lease at once when a paused
// etcd leader resumes (etcd issues 12528 and 15247: its revocations are
// forwarded to the new leader). Each worker registers again within about
// a second, but dropping every worker at once left the front answering
// "no worker is registered" to every request meanwhile. A worker that
// really died is taken out of rotation by the health detector (failed
// requests and probes) long before its key expires, so keeping its entry
// a little longer routes nothing to it; a worker that drains says so in
// membership first and leaves at once.
//
// It is not safe for concurrent use: the front calls it under membersMu.
type vanishGrace struct {
	grace time.Duration
	now   func() time.Time

	// seen holds the last value of every non-draining worker in the last
	// snapshot, and of those vanished within the grace; gone says when
	// each of the latter vanished.
	seen map[string]membership.Member
	gone map[string]time.Time
}

func newVanishGrace(grace time.Duration, now func() time.Time) *vanishGrace {
	return &vanishGrace{grace: grace, now: now, seen: map[string]membership.Member{}, gone: map[string]time.Time{}}
}

// apply returns the workers to route to for membership snapshot ms: ms,
// plus every worker that vanished from it without draining less than the
// grace ago. next is when a worker kept so reaches the end of its grace
// (apply must then run again), 0 when none is kept. vanished lists the
// workers this snapshot newly keeps, for the log.
func (g *vanishGrace) apply(ms []membership.Member) (out []membership.Member, next time.Duration, vanished []string) {
	now := g.now()
	present := make(map[string]bool, len(ms))
	for _, m := range ms {
		if m.Role != membership.RoleWorker {
			continue
		}
		present[m.ID] = true
		delete(g.gone, m.ID)
		if m.Draining {
			delete(g.seen, m.ID) // leaving on purpose: no grace
			continue
		}
		g.seen[m.ID] = m
	}
	out = ms
	for id, m := range g.seen {
		if present[id] {
			continue
		}
		since, ok := g.gone[id]
		if !ok {
			since = now
			g.gone[id] = now
			vanished = append(vanished, id)
		}
		left := g.grace - now.Sub(since)
		if left <= 0 {
			delete(g.seen, id)
			delete(g.gone, id)
			continue
		}
		out = append(out, m)
		if next == 0 || left < next {
			next = left
		}
	}
	return out, next, vanished
}
