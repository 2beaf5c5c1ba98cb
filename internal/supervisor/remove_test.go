package supervisor

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/testcluster"
)

func TestRemoveStopsWithoutRestart(t *testing.T) {
	s := New(logging.Discard(), Options{InitialBackoff: 10 * time.Millisecond, StopTimeout: 5 * time.Second})
	stopNow(t, s)
	if err := s.Start(helperSpec(t, "a", "block")); err != nil {
		t.Fatal(err)
	}
	pid := s.PID("a")
	if err := s.Remove(context.Background(), "a"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if alive(pid) {
		t.Fatalf("pid %d alive after Remove", pid)
	}
	// Nothing restarts it, and the name is free again.
	time.Sleep(100 * time.Millisecond) // longer than InitialBackoff: a restart would have happened
	if p := s.PID("a"); p != 0 {
		t.Fatalf("a restarted as pid %d after Remove", p)
	}
	if n := s.Names(); len(n) != 0 {
		t.Fatalf("children after Remove: %v", n)
	}
	if err := s.Start(helperSpec(t, "a", "block")); err != nil {
		t.Fatalf("start again after Remove: %v", err)
	}
	if err := s.Remove(context.Background(), "nope"); err == nil {
		t.Fatal("Remove of an unknown child succeeded")
	}
}

func TestRemoveKillsStoppedAndStubbornChild(t *testing.T) {
	s := New(logging.Discard(), Options{StopTimeout: 500 * time.Millisecond})
	stopNow(t, s)
	spec := helperSpec(t, "stubborn", "ignore-term")
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	waitLogLine(t, spec.LogPath, "ready")
	pid := s.PID("stubborn")
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	err := s.Remove(context.Background(), "stubborn")
	if err == nil {
		t.Fatal("Remove of a child that ignores SIGTERM reported a clean exit")
	}
	testcluster.WaitFor(t, 5*time.Second, "stubborn child gone", func() error {
		if alive(pid) {
			return fmt.Errorf("pid %d alive", pid)
		}
		return nil
	})
}
