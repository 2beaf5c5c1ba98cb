package front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/membership"
)

func workers(n int, versions ...string) []membership.Member {
	ms := make([]membership.Member, n)
	for i := range ms {
		ms[i] = membership.Member{Role: membership.RoleWorker, ID: fmt.Sprintf("w%d", i+1), Addr: fmt.Sprintf("127.0.0.1:%d", i+1)}
		if i < len(versions) {
			ms[i].Version = versions[i]
		}
	}
	return ms
}

// state returns the state of the worker at addr, nil if the pool does not
// know it.
func (p *pool) state(addr string) *workerState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.states[addr]
}

// idle reports whether no request is in flight to st's worker and no
// confirmation of it runs.
func (st *workerState) idle() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.idleLocked()
}

// markDownAddr and isDownAddr are markDown and isDown by address, for
// tests that only have one; an unknown address is never down.
func (p *pool) markDownAddr(addr string) {
	if st := p.state(addr); st != nil {
		p.markDown(st)
	}
}

func (p *pool) isDownAddr(addr string) bool {
	st := p.state(addr)
	return st != nil && p.isDown(st)
}

// A worker that stays in membership keeps its cooldown; one that leaves
// forgets it, and comes back clean.
func TestPoolStateAcrossMembershipChanges(t *testing.T) {
	p := newPool(time.Minute)
	p.set(workers(2))
	p.markDownAddr("127.0.0.1:1")
	st := p.state("127.0.0.1:1")
	p.set(workers(3))
	if !p.isDownAddr("127.0.0.1:1") || p.state("127.0.0.1:1") != st {
		t.Fatal("a worker that stayed lost its state")
	}
	p.set(workers(3)[1:])
	if p.isDownAddr("127.0.0.1:1") || p.state("127.0.0.1:1") != nil {
		t.Fatal("an idle worker that left kept its state")
	}
	p.set(workers(3))
	if p.isDownAddr("127.0.0.1:1") {
		t.Fatal("a worker that came back kept its old cooldown")
	}
}

// A worker that leaves membership with a request in flight and comes back
// keeps the state that request is tracked in, so the detector still
// cancels it (the pool kept in-flight requests by address before).
func TestPoolDepartedWorkerInflightStillAborted(t *testing.T) {
	p := newPool(time.Minute)
	p.set(workers(2))
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	a := &attempt{pool: p, st: p.state("127.0.0.1:1"), cancel: cancel}
	p.track(a, "127.0.0.1:1")
	p.markDownAddr("127.0.0.1:1")
	p.set(workers(2)[1:])
	if p.isDownAddr("127.0.0.1:1") {
		t.Fatal("a departed worker is still cooling down")
	}
	p.set(workers(2))
	var b *backend
	for _, x := range p.list() {
		if x.addr == "127.0.0.1:1" {
			b = x
		}
	}
	if b == nil || b.st != a.st {
		t.Fatal("the worker came back with a new state while a request to it was in flight")
	}
	if n := p.abort(b.st, errWorkerDown); n != 1 || !errors.Is(context.Cause(ctx), errWorkerDown) {
		t.Fatalf("abort cancelled %d (cause %v), want the one in flight", n, context.Cause(ctx))
	}
	a.done()
	p.set(workers(2)[1:])
	if p.state("127.0.0.1:1") != nil {
		t.Fatal("a departed worker's state outlived its last request")
	}
}

// A request that picked a worker from the snapshot before the worker left
// (its state already dropped as idle) is tracked where the detector looks:
// on the worker's state when it comes back, and on one the pool keeps
// until the request ends when it does not.
func TestPoolTrackAfterDepartureStillAborted(t *testing.T) {
	const addr = "127.0.0.1:1"
	p := newPool(time.Minute)
	p.set(workers(2))
	b := p.pick(nil)
	if b.addr != addr {
		t.Fatalf("first pick %s, want %s", b.addr, addr)
	}
	p.set(workers(2)[1:])
	if p.state(addr) != nil {
		t.Fatal("an idle worker that left kept its state")
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	a := &attempt{pool: p, st: b.st, cancel: cancel}
	p.track(a, b.addr)
	if st := p.state(addr); st == nil || a.st != st {
		t.Fatal("a request to a departed worker is tracked on a state the pool does not know")
	}
	p.set(workers(2))
	if n := p.abort(p.state(addr), errWorkerDown); n != 1 || !errors.Is(context.Cause(ctx), errWorkerDown) {
		t.Fatalf("abort of the returned worker cancelled %d (cause %v), want the one in flight", n, context.Cause(ctx))
	}
	a.done()

	// The worker does not come back: its state lasts as long as the request.
	b = nil
	for b == nil || b.addr != addr {
		b = p.pick(nil)
	}
	p.set(workers(2)[1:])
	a = &attempt{pool: p, st: b.st, cancel: func(error) {}}
	p.track(a, b.addr)
	p.set(workers(2)[1:])
	if st := p.state(addr); st == nil || a.st != st || st.idle() {
		t.Fatal("a request to a departed worker is not tracked on the pool's state of it")
	}
	a.done()
	p.set(workers(2)[1:])
	if p.state(addr) != nil {
		t.Fatal("a departed worker's state outlived its last request")
	}
}

// The lock-free split picks exactly what the remainder accumulator it
// replaced picked, including across weight changes.
func TestTrafficSplitMatchesRemainderAccumulator(t *testing.T) {
	p := newPool(time.Minute)
	p.set(workers(3, "v1", "v1", "v2"))
	rng := rand.New(rand.NewPCG(1, 2))
	acc := 0
	for i := range 5000 {
		if i%250 == 0 {
			p.setTraffic(Traffic{Version: "v2", Weight: rng.IntN(101)})
		}
		acc += p.currentTraffic().Weight
		wantNew := acc >= 100
		if wantNew {
			acc -= 100
		}
		b := p.pick(nil)
		if gotNew := b.version == "v2"; gotNew != wantNew {
			t.Fatalf("pick %d (weight %d): to the new version %v, want %v", i, p.currentTraffic().Weight, gotNew, wantNew)
		}
	}
}

// Requests from many goroutines share the rotation exactly, while
// membership updates, cooldowns and tracking run beside them (run with
// -race).
func TestPoolConcurrentUse(t *testing.T) {
	p := newPool(time.Minute)
	p.set(workers(3))
	const goroutines, picks = 8, 3000
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			local := map[string]int{}
			for range picks {
				b := p.pick(nil)
				local[b.id]++
				a := &attempt{pool: p, st: b.st, cancel: func(error) {}}
				p.track(a, b.addr)
				p.answered(a.st)
				p.markUp(a.st)
				a.done()
			}
			mu.Lock()
			for k, v := range local {
				counts[k] += v
			}
			mu.Unlock()
		})
	}
	stop := make(chan struct{})
	var side sync.WaitGroup
	side.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			// Same members (states kept), and reads a detector makes.
			p.set(workers(3))
			_ = p.isDownAddr("127.0.0.1:2")
			_ = p.startConfirm(p.state("127.0.0.1:3"), 0)
			p.endConfirm(p.state("127.0.0.1:3"), true)
		}
	})
	wg.Wait()
	close(stop)
	side.Wait()
	for _, id := range []string{"w1", "w2", "w3"} {
		if counts[id] != goroutines*picks/3 {
			t.Fatalf("picks %v, want %d each", counts, goroutines*picks/3)
		}
	}
	for _, b := range p.list() {
		if !b.st.idle() {
			t.Fatalf("%s: requests still tracked after all ended", b.id)
		}
	}
}

// While a worker leaves and rejoins over and over, every request tracked
// stays reachable through the pool's state of its worker (where the
// detector aborts), however stale the snapshot it picked from (run with
// -race).
func TestPoolChurnKeepsTrackedReachable(t *testing.T) {
	p := newPool(time.Minute)
	p.set(workers(3))
	// Each goroutine ends its first picks at once, so the departing
	// worker's state is often idle and dropped, and keeps its last ones in
	// flight to the end.
	const goroutines, picks, held = 8, 3000, 20
	var (
		mu          sync.Mutex
		lost        int
		heldByAddr  = map[string]int{}
		cancelCount atomic.Int64
	)
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			localLost := 0
			localHeld := map[string]int{}
			for i := range picks {
				b := p.pick(nil)
				keep := i >= picks-held
				a := &attempt{pool: p, st: b.st, cancel: func(error) {}}
				if keep {
					a.cancel = func(error) { cancelCount.Add(1) }
				}
				p.track(a, b.addr)
				// Tracked, the state cannot be dropped: it must be the
				// pool's state of b.addr now.
				if p.state(b.addr) != a.st {
					localLost++
				}
				if keep {
					localHeld[b.addr]++
					continue
				}
				a.done()
			}
			mu.Lock()
			lost += localLost
			for k, v := range localHeld {
				heldByAddr[k] += v
			}
			mu.Unlock()
		})
	}
	stop := make(chan struct{})
	var side sync.WaitGroup
	side.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if i%2 == 0 {
				p.set(workers(3)[1:])
			} else {
				p.set(workers(3))
			}
		}
	})
	wg.Wait()
	close(stop)
	side.Wait()
	p.set(workers(3))
	if lost > 0 {
		t.Errorf("%d tracked requests were not on the pool's state of their worker", lost)
	}
	total := 0
	for _, addr := range []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"} {
		n := p.abort(p.state(addr), errWorkerDown)
		if n != heldByAddr[addr] {
			t.Errorf("%s: abort found %d requests in flight, want %d", addr, n, heldByAddr[addr])
		}
		total += n
	}
	if total != goroutines*held || cancelCount.Load() != goroutines*held {
		t.Fatalf("aborts reached %d requests (%d cancelled), want %d", total, cancelCount.Load(), goroutines*held)
	}
}

// One confirmation at a time, and none within quiet of one that found the
// worker up.
func TestStartConfirmClaimAndQuiet(t *testing.T) {
	p := newPool(time.Minute)
	p.set(workers(1))
	st := p.state("127.0.0.1:1")
	if !p.startConfirm(st, time.Hour) {
		t.Fatal("first confirmation refused")
	}
	if p.startConfirm(st, 0) {
		t.Fatal("second confirmation while one runs")
	}
	p.endConfirm(st, false)
	if !p.startConfirm(st, time.Hour) {
		t.Fatal("refused after a confirmation that found the worker down")
	}
	p.endConfirm(st, true)
	if p.startConfirm(st, time.Hour) {
		t.Fatal("started within quiet of finding the worker up")
	}
	if !p.startConfirm(st, 0) {
		t.Fatal("refused with no quiet period")
	}
}

// BenchmarkPoolRequest is the pool's share of one proxied request (pick,
// track, first byte, success, untrack) from parallel goroutines.
func BenchmarkPoolRequest(b *testing.B) {
	p := newPool(time.Minute)
	p.set(workers(3))
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w := p.pick(nil)
			a := &attempt{pool: p, st: w.st, cancel: func(error) {}}
			p.track(a, w.addr)
			a.firstByte()
			p.markUp(w.st)
			a.firstByte() // a body read
			a.done()
		}
	})
}

// A confirmation learns whether the worker answered during its probes.
func TestAnsweredSinceMark(t *testing.T) {
	p := newPool(time.Minute)
	p.set(workers(2))
	st, other := p.state("127.0.0.1:1"), p.state("127.0.0.1:2")
	p.answered(st)
	mark := p.answerMark(st)
	p.answered(other)
	if p.answeredSince(st, mark) {
		t.Fatal("an answer before the mark (or another worker's) counted")
	}
	a := &attempt{pool: p, st: st, body: io.NopCloser(strings.NewReader("x"))}
	if _, err := a.Read(make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
	if !p.answeredSince(st, mark) {
		t.Fatal("a read of the answer after the mark did not count")
	}
}
