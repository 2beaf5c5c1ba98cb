package e2e

import (
	"fmt"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// A process that is SIGKILLed (no supervisor to restart it) leaves
// membership within its lease TTL plus etcd's expiry check, and is back
// when it runs again.
func TestKilledMemberLeavesMembership(t *testing.T) {
	c := startUp(t, t.TempDir(), pickPorts(t))
	taken := map[int]bool{}
	addr := fmt.Sprintf("127.0.0.1:%d", freeRun(t, 1, taken))
	const ttl = 2 * time.Second

	startWorker := func() *exec.Cmd {
		cmd := exec.Command(binary, "worker", "--id", "worker-extra", "--listen", addr,
			"--etcd-endpoints", fmt.Sprintf("http://127.0.0.1:%d", c.ports.etcdClient),
			"--region", "eu-west-1", "--zone", "eu-west-1b", "--lease-ttl", ttl.String())
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	present := func() (int, bool) {
		for _, m := range c.members() {
			if m.Role == "worker" && m.ID == "worker-extra" {
				return m.PID, true
			}
		}
		return 0, false
	}

	w := startWorker()
	waitFor(t, 20*time.Second, "worker-extra registered", func() error {
		if pid, ok := present(); !ok || pid != w.Process.Pid {
			return fmt.Errorf("not registered with pid %d", w.Process.Pid)
		}
		return nil
	})
	killed := time.Now()
	if err := w.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = w.Wait()
	waitFor(t, 10*time.Second, "worker-extra gone from membership", func() error {
		if _, ok := present(); ok {
			return fmt.Errorf("still listed %s after SIGKILL", time.Since(killed).Round(time.Millisecond))
		}
		return nil
	})
	gone := time.Since(killed)
	t.Logf("SIGKILLed member left membership after %s (lease TTL %s)", gone.Round(time.Millisecond), ttl)
	// TTL, plus etcd's 0.5 s lease-expiry check, plus ctl's round trip.
	if gone > ttl+1500*time.Millisecond {
		t.Errorf("member left %s after SIGKILL; want within TTL %s + 1.5 s", gone, ttl)
	}

	w = startWorker()
	waitFor(t, 20*time.Second, "worker-extra back after restart", func() error {
		if pid, ok := present(); !ok || pid != w.Process.Pid {
			return fmt.Errorf("not back with pid %d", w.Process.Pid)
		}
		return nil
	})
	// Stop the extra worker first: it is this test's child, not up's, and
	// up's shutdown check counts every process on the cluster's etcd.
	_ = w.Process.Signal(syscall.SIGTERM)
	_ = w.Wait()
	c.stop()
}
