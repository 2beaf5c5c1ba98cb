package front

import (
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/erlmcp/erlmcp/internal/membership"
)

// backend is one worker requests may go to.
type backend struct {
	id   string
	addr string   // membership Addr, the health key
	url  *url.URL // scheme and host to dial
	// health is the URL of its /healthz (on HTTPAddr when it has one).
	health string
	// version is its membership version, which a traffic split selects on.
	version string
	// st is the state of addr, shared by every backend value of that
	// address across membership changes (pool.set).
	st *workerState
}

// workerState is what the front knows about one worker address. Every
// request reads or writes some of it (pick reads downUntil, each read of
// the answer counts in answers, a success clears downUntil), so those
// fields are atomics and a request takes no lock shared with requests to
// other workers; the times are pool.mono readings. The hot path reads no
// clock: time.Now was a third of the pool's CPU in BenchmarkPoolRequest.
type workerState struct {
	// downUntil: skipped while others are available until then (0: never
	// marked down).
	downUntil atomic.Int64
	// answers counts the reads that brought bytes of the worker's
	// answers: a confirmation compares it before and after its probes
	// to learn whether the worker answered meanwhile, which needs no time.
	answers atomic.Uint64
	// confirming: a confirmation (health.go) of this worker runs;
	// confirmedUp is when one last found it up.
	confirming  atomic.Bool
	confirmedUp atomic.Int64

	// mu guards inflight, the requests in flight to this worker (so a
	// worker found down can have them cancelled), and retired. It is the
	// one lock a request takes (twice: track and untrack), and only
	// requests to the same worker share it.
	mu       sync.Mutex
	inflight map[*attempt]struct{}
	// retired (under mu): pool.set dropped this state from the pool. A
	// request that picked the worker from an older snapshot must not be
	// tracked here, where no abort would find it (pool.track).
	retired bool
}

func newWorkerState() *workerState {
	return &workerState{inflight: map[*attempt]struct{}{}}
}

// idleLocked reports whether nothing refers to st but the pool: no
// request in flight and no confirmation running. A worker that left
// membership keeps its state until then, so a confirmation that ends later
// (or a worker that comes back at once) still finds the requests it must
// cancel. Callers hold st.mu.
func (st *workerState) idleLocked() bool { return len(st.inflight) == 0 && !st.confirming.Load() }

// retireIfIdle marks st retired if it is idle, in one critical section
// with the check: a track between the two would otherwise add a request to
// a state the pool is about to forget.
func (st *workerState) retireIfIdle() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.idleLocked() {
		return false
	}
	st.retired = true
	return true
}

// pool holds the routable workers and what is known of their health.
// Membership changes (set) take mu and publish a new snapshot; requests
// only read the snapshot and each worker's atomics.
type pool struct {
	cooldown time.Duration
	// epoch is what mono counts from: a day before the pool started, so
	// a zero time field means "long ago" (never marked down, never
	// confirmed up) rather than "at start".
	epoch time.Time

	// backends is the current []*backend, sorted by id; read-only once
	// published.
	backends atomic.Pointer[[]*backend]
	// next is the round-robin counter.
	next atomic.Uint64
	// traffic is the deploy split (traffic.go); splitSum the sum of the
	// weights of every split pick so far, whose crossings of multiples of
	// 100 send a pick to the new version.
	traffic  atomic.Pointer[Traffic]
	splitSum atomic.Int64

	mu sync.Mutex
	// states by address: those of the current workers, and those of
	// departed ones not yet idle.
	states map[string]*workerState
}

func newPool(cooldown time.Duration) *pool {
	p := &pool{cooldown: cooldown, epoch: time.Now().Add(-24 * time.Hour), states: map[string]*workerState{}}
	p.backends.Store(&[]*backend{})
	p.traffic.Store(&Traffic{})
	return p
}

// mono is the time in nanoseconds since p.epoch (monotonic: both
// time.Now readings carry the monotonic clock).
func (p *pool) mono() int64 { return int64(time.Since(p.epoch)) }

// set replaces the pool with the non-draining workers among ms. A worker
// that stays keeps its state; one that leaves forgets its cooldown, so
// coming back it starts clean.
func (p *pool) set(ms []membership.Member) {
	var bs []*backend
	for _, m := range ms {
		if m.Role != membership.RoleWorker || m.Draining || m.Addr == "" {
			continue
		}
		u, err := url.Parse(workerURL(m.Addr))
		if err != nil || u.Host == "" {
			continue
		}
		health := u.String() + "/healthz"
		if m.HTTPAddr != "" {
			health = workerURL(m.HTTPAddr) + "/healthz"
		}
		bs = append(bs, &backend{id: m.ID, addr: m.Addr, url: u, health: health, version: m.Version})
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].id < bs[j].id })
	p.mu.Lock()
	defer p.mu.Unlock()
	current := make(map[string]bool, len(bs))
	for _, b := range bs {
		st := p.states[b.addr]
		if st == nil {
			st = newWorkerState()
			p.states[b.addr] = st
		}
		b.st = st
		current[b.addr] = true
	}
	for addr, st := range p.states {
		if current[addr] {
			continue
		}
		st.downUntil.Store(0)
		if st.retireIfIdle() {
			delete(p.states, addr)
		}
	}
	p.backends.Store(&bs)
}

// list returns the current workers in round-robin order. The slice is
// shared: callers must not change it.
func (p *pool) list() []*backend { return *p.backends.Load() }

// pick returns the next worker in round-robin order that is not in tried,
// preferring workers not cooling down after a failure; nil when every
// worker was tried. The rotation runs over the preferred workers only, so
// a cooling-down worker's share spreads evenly over the others.
func (p *pool) pick(tried map[string]bool) *backend {
	// The clock is read only when some worker is cooling down.
	var now int64
	// Backed by arrays on the stack: picking allocates nothing for up to
	// 16 workers (more spill to the heap, as append does).
	var hbuf, cbuf [16]*backend
	healthy, cooling := hbuf[:0], cbuf[:0]
	for _, b := range p.list() {
		switch {
		case tried[b.addr]:
		case p.cooling(b.st, &now):
			cooling = append(cooling, b)
		default:
			healthy = append(healthy, b)
		}
	}
	cands := healthy
	if len(cands) == 0 {
		// Every untried worker is cooling down: try one anyway rather than
		// refuse the client.
		cands = cooling
	}
	cands = p.splitByTraffic(cands)
	if len(cands) == 0 {
		return nil
	}
	return cands[(p.next.Add(1)-1)%uint64(len(cands))]
}

// markDown skips st's worker for the cooldown while others are available.
func (p *pool) markDown(st *workerState) { st.downUntil.Store(p.mono() + int64(p.cooldown)) }

// markUp ends st's cooldown. Every successful request calls it: the load
// first keeps the common case (not down) from writing the shared field.
func (p *pool) markUp(st *workerState) {
	if st.downUntil.Load() != 0 {
		st.downUntil.Store(0)
	}
}

// isDown reports whether st's worker is cooling down.
func (p *pool) isDown(st *workerState) bool {
	var now int64
	return p.cooling(st, &now)
}

// cooling reports whether st is marked down at *now, reading the clock
// into *now (if 0) only when st was ever marked down.
func (p *pool) cooling(st *workerState, now *int64) bool {
	until := st.downUntil.Load()
	if until == 0 {
		return false
	}
	if *now == 0 {
		*now = p.mono()
	}
	return *now < until
}

// track registers a request in flight to the worker at addr, on a.st,
// the state of the backend it picked; untrack removes it. The snapshot
// that backend came from may be stale: when set has since retired a.st
// (the worker left membership and nothing was in flight), the request is
// tracked on the pool's state of addr instead, created if the worker has
// not come back, and a.st is changed to it, so an abort of the worker's
// state still finds the request whether or not the worker rejoins.
// Callers call it before the attempt is used elsewhere (a.st is not
// synchronised).
func (p *pool) track(a *attempt, addr string) {
	st := a.st
	st.mu.Lock()
	if !st.retired {
		st.inflight[a] = struct{}{}
		st.mu.Unlock()
		return
	}
	// Rare: released first, as set takes p.mu before a state's mu.
	st.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	st = p.states[addr]
	if st == nil {
		// Kept until a later set finds it idle, as for any departed worker.
		st = newWorkerState()
		p.states[addr] = st
	}
	// Not retired: set retires only under p.mu, held here.
	st.mu.Lock()
	st.inflight[a] = struct{}{}
	st.mu.Unlock()
	a.st = st
}

func (p *pool) untrack(st *workerState, a *attempt) {
	st.mu.Lock()
	delete(st.inflight, a)
	st.mu.Unlock()
}

// abort cancels every request in flight to st's worker with cause and
// returns how many there were.
func (p *pool) abort(st *workerState, cause error) int {
	st.mu.Lock()
	as := st.inflight
	st.inflight = map[*attempt]struct{}{}
	st.mu.Unlock()
	for a := range as {
		a.cancel(cause)
	}
	return len(as)
}

// answered records that st's worker sent bytes of an answer.
func (p *pool) answered(st *workerState) { st.answers.Add(1) }

// answerMark is what answeredSince compares with.
func (p *pool) answerMark(st *workerState) uint64 { return st.answers.Load() }

// answeredSince reports whether st's worker answered anything after
// answerMark returned mark.
func (p *pool) answeredSince(st *workerState, mark uint64) bool { return st.answers.Load() != mark }

// startConfirm claims the right to run the confirmation probes of st's
// worker; it is false while another confirmation of it runs, so a burst
// of suspicions costs one probe sequence, and for quiet after one that
// found it up: when every answer is slow (a loaded machine), each slow
// request would otherwise start a probe the moment the last one ended.
func (p *pool) startConfirm(st *workerState, quiet time.Duration) bool {
	// Claim first, then check: endConfirm writes confirmedUp before it
	// releases the claim, so the owner of the claim reads the final value.
	if !st.confirming.CompareAndSwap(false, true) {
		return false
	}
	if p.mono()-st.confirmedUp.Load() < int64(quiet) {
		st.confirming.Store(false)
		return false
	}
	return true
}

// endConfirm ends a confirmation; up says it found the worker answering.
func (p *pool) endConfirm(st *workerState, up bool) {
	if up {
		st.confirmedUp.Store(p.mono())
	}
	st.confirming.Store(false)
}
