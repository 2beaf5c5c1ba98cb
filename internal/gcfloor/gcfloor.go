// Package gcfloor keeps the Go garbage collector's heap goal at or above a
// floor, retuning GOGC after every collection.
//
// Why: a store node's live heap is small (tens of MiB for an empty or
// lightly loaded node) while every call allocates tens of KiB of
// short-lived garbage (gRPC frames, Raft messages, bbolt pages). With a
// goal of a few times a small live heap the collector runs several times a
// second; each cycle's stop-the-world phases and mark work (a quarter of
// the CPU, half of one of two cores) stall calls for milliseconds, which
// is what a p99 at a steady load is made of. A goal of at least MinHeap
// makes small heaps collect rarely; once the live heap is large the
// ordinary percentage rules, so memory still grows with the data as with
// GOGC alone. GOMEMLIMIT, when set, still wins: the runtime collects
// sooner to stay under it whatever GOGC says.
//
// This is the "GC tuner" that large Go services use in place of a heap
// ballast: it changes only the runtime's GC percentage, from a finalizer
// that runs once per collection.
package gcfloor

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// MaxPercent caps the GOGC the floor may ask for (a near-empty heap would
// otherwise ask for millions).
const MaxPercent = 100000

// runtimeHeapMinimum is the Go runtime's own floor of the heap goal at
// GOGC 100 (defaultHeapMinimum, 4 MiB); it scales with GOGC, so a GOGC of
// P makes the goal at least 4 MiB * P/100 whatever the live heap: Percent
// never asks for more than makes that minimum MinHeap.
const runtimeHeapMinimum = 4 << 20

// MaxMinHeap bounds Config.MinHeap (1 TiB): beyond, the arithmetic would
// overflow, and no machine here has the memory.
const MaxMinHeap = 1 << 40

// Config configures the GC target.
type Config struct {
	// Percent is the GC target above the floor, as GOGC (100 is the Go
	// runtime's default).
	Percent int
	// MinHeap is the floor of the heap goal in bytes; 0 leaves GOGC at
	// Percent.
	MinHeap uint64
}

// Validate reports a setting that cannot work, saying what to change.
func (c Config) Validate() error {
	if c.Percent < 1 {
		return fmt.Errorf("--gc-percent %d: must be positive (100 is the Go runtime's default)", c.Percent)
	}
	if c.MinHeap > MaxMinHeap {
		return fmt.Errorf("GC heap floor %d bytes is above the %d (1 TiB) this supports: give a smaller floor (--gc-min-heap-mib)", c.MinHeap, uint64(MaxMinHeap))
	}
	return nil
}

// FromMiB is the Config of a process's --gc-percent and --gc-min-heap-mib
// flags, or the error that says which flag to change.
func FromMiB(percent, minHeapMiB int) (Config, error) {
	if minHeapMiB < 0 || minHeapMiB > MaxMinHeap>>20 {
		return Config{}, fmt.Errorf("--gc-min-heap-mib %d: must be 0 (no floor) to %d", minHeapMiB, MaxMinHeap>>20)
	}
	c := Config{Percent: percent, MinHeap: uint64(minHeapMiB) << 20}
	return c, c.Validate()
}

// StartMiB is Start with the Config of FromMiB: what the erlmcp commands
// call with their --gc-percent and --gc-min-heap-mib.
func StartMiB(percent, minHeapMiB int) (stop func(), err error) {
	cfg, err := FromMiB(percent, minHeapMiB)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return Start(cfg)
}

// ErrInvalid is returned by Start for a Config that fails Validate.
var ErrInvalid = errors.New("gcfloor: invalid config")

// Start sets the process's GC target to cfg.Percent and, with a MinHeap,
// retunes it after every collection so the next goal is at least MinHeap.
// It does not block. stop (idempotent) ends the retuning at the next
// collection and sets GOGC back to cfg.Percent. The GC target is
// process-wide: run one at a time.
func Start(cfg Config) (stop func(), err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	debug.SetGCPercent(cfg.Percent)
	if cfg.MinHeap == 0 {
		return func() {}, nil
	}
	t := &tuner{cfg: cfg}
	t.adjust()
	t.arm()
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if !t.stopped {
			t.stopped = true
			debug.SetGCPercent(cfg.Percent)
		}
	}, nil
}

type tuner struct {
	cfg     Config
	samples [3]metrics.Sample // finalizer goroutine
	// mu orders a retune against stop, so a retune never follows it.
	mu      sync.Mutex
	stopped bool
}

// sentinel is garbage the moment arm returns: its finalizer runs after the
// next collection, retunes, and arms a new one. The pointer keeps it out of
// the tiny allocator, whose objects may never be finalized.
type sentinel struct {
	t *tuner
	_ [8]byte
}

func (t *tuner) arm() {
	runtime.SetFinalizer(&sentinel{t: t}, func(s *sentinel) {
		if s.t.adjust() {
			s.t.arm()
		}
	})
}

// adjust sets GOGC for the collection that just ended and reports whether
// the tuner still runs. Finalizer goroutine (or Start): never
// concurrently.
func (t *tuner) adjust() bool {
	t.samples[0].Name = "/gc/heap/live:bytes"
	t.samples[1].Name = "/gc/scan/stack:bytes"
	t.samples[2].Name = "/gc/scan/globals:bytes"
	metrics.Read(t.samples[:])
	var v [3]uint64
	for i, s := range t.samples {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = s.Value.Uint64()
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	debug.SetGCPercent(Percent(t.cfg, v[0], v[0]+v[1]+v[2]))
	return true
}

// Percent is the GOGC that makes the next heap goal at least cfg.MinHeap
// and never below cfg.Percent, for a live heap of live bytes and scannable
// memory (live heap, stacks, globals) of scan bytes: the runtime's goal is
// live + scan*GOGC/100, and at least runtimeHeapMinimum*GOGC/100, so the
// result never exceeds the GOGC that makes that minimum MinHeap (else a
// near-empty heap, as before the first collection, would get a goal of
// gigabytes).
func Percent(cfg Config, live, scan uint64) int {
	if cfg.MinHeap <= live {
		return cfg.Percent
	}
	ceil := min(ceilDiv(cfg.MinHeap*100, runtimeHeapMinimum), MaxPercent)
	p := ceil
	if scan > 0 {
		p = min(ceilDiv((cfg.MinHeap-live)*100, scan), ceil)
	}
	return int(max(p, uint64(cfg.Percent)))
}

func ceilDiv(a, b uint64) uint64 { return (a + b - 1) / b }
