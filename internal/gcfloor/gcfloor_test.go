package gcfloor

import (
	"errors"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name       string
		cfg        Config
		live, scan uint64
		want       int
	}{
		{"no floor", Config{Percent: 200}, 10 * mib, 11 * mib, 200},
		{"live heap above the floor", Config{Percent: 200, MinHeap: 256 * mib}, 300 * mib, 310 * mib, 200},
		{"floor at live heap", Config{Percent: 200, MinHeap: 256 * mib}, 256 * mib, 260 * mib, 200},
		// goal = 16 + 16*1500/100 = 256.
		{"small heap reaches the floor", Config{Percent: 200, MinHeap: 256 * mib}, 16 * mib, 16 * mib, 1500},
		// Rounded up: the goal is never below the floor.
		{"rounds up", Config{Percent: 100, MinHeap: 256 * mib}, 16 * mib, 16*mib + 1, 1500},
		{"floor needs less than Percent", Config{Percent: 400, MinHeap: 40 * mib}, 10 * mib, 10 * mib, 400},
		// The runtime's minimum goal, 4 MiB * GOGC/100, reaches the
		// floor at 6400 for 256 MiB: never more.
		{"capped by the runtime's minimum", Config{Percent: 200, MinHeap: 256 * mib}, 1, 1, 6400},
		{"nothing scannable (before the first collection)", Config{Percent: 200, MinHeap: 256 * mib}, 0, 0, 6400},
		{"cap below Percent", Config{Percent: 400, MinHeap: 8 * mib}, 0, 0, 400},
		{"capped at MaxPercent", Config{Percent: 100, MinHeap: MaxMinHeap}, 1, 1, MaxPercent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Percent(tc.cfg, tc.live, tc.scan); got != tc.want {
				t.Errorf("Percent(%+v, live %d, scan %d) = %d, want %d", tc.cfg, tc.live, tc.scan, got, tc.want)
			}
		})
	}
}

func TestStartRefusesBadConfig(t *testing.T) {
	for _, cfg := range []Config{{Percent: 0}, {Percent: 100, MinHeap: MaxMinHeap + 1}} {
		if _, err := Start(cfg); !errors.Is(err, ErrInvalid) {
			t.Errorf("Start(%+v): %v, want ErrInvalid", cfg, err)
		}
	}
}

func TestFromMiB(t *testing.T) {
	if c, err := FromMiB(200, 256); err != nil || c != (Config{Percent: 200, MinHeap: 256 << 20}) {
		t.Errorf("FromMiB(200, 256) = %+v, %v", c, err)
	}
	for _, tc := range []struct {
		percent, mib int
		want         string
	}{
		{200, -1, "--gc-min-heap-mib -1"},
		{200, MaxMinHeap>>20 + 1, "--gc-min-heap-mib 1048577"},
		{0, 256, "--gc-percent 0"},
	} {
		if _, err := FromMiB(tc.percent, tc.mib); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("FromMiB(%d, %d) = %v, want an error naming %q", tc.percent, tc.mib, err, tc.want)
		}
		if _, err := StartMiB(tc.percent, tc.mib); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("StartMiB(%d, %d) = %v, want ErrInvalid naming %q", tc.percent, tc.mib, err, tc.want)
		}
	}
}

func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// waitGOGC collects until GOGC satisfies ok (the tuner retunes from a
// finalizer after a collection) or 10s pass.
func waitGOGC(t *testing.T, what string, ok func(int) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok(gogc()) {
		if time.Now().After(deadline) {
			t.Fatalf("GOGC %d after 10s: want %s", gogc(), what)
		}
		runtime.GC()
		time.Sleep(time.Millisecond) // the finalizer goroutine runs after the GC
	}
}

// With a floor far above this test's heap, GOGC goes up after
// collections and follows the live heap; stop puts it back to Percent and
// later collections leave it there.
func TestStartRetunesAfterCollections(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	stop, err := Start(Config{Percent: 150, MinHeap: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	waitGOGC(t, "above 150 for a 1 GiB floor", func(p int) bool { return p > 150 })
	// A larger live heap needs a lower GOGC for the same floor.
	high := gogc()
	keep := make([][]byte, 64)
	for i := range keep {
		keep[i] = make([]byte, 1<<20)
	}
	waitGOGC(t, "lower with 64 MiB more live heap", func(p int) bool { return p < high && p > 150 })
	runtime.KeepAlive(keep)
	stop()
	stop() // idempotent
	if p := gogc(); p != 150 {
		t.Fatalf("GOGC %d after stop, want 150", p)
	}
	for range 3 {
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	if p := gogc(); p != 150 {
		t.Fatalf("GOGC %d after collections past stop, want 150", p)
	}
}

func TestStartWithoutFloorSetsPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	stop, err := Start(Config{Percent: 250})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	runtime.GC()
	if p := gogc(); p != 250 {
		t.Fatalf("GOGC %d, want 250", p)
	}
}
