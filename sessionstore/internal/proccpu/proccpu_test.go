package proccpu

import (
	"runtime"
	"testing"
	"time"
)

// Spinning for a while shows up as CPU time (on the platforms that report
// it).
func TestUsedGrowsWithWork(t *testing.T) {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		t.Skip("no rusage here")
	}
	before := Used()
	deadline := time.Now().Add(50 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x++
	}
	if after := Used(); after <= before {
		t.Fatalf("CPU time did not grow over 50ms of spinning (%d iterations): %v -> %v", x, before, after)
	}
}
