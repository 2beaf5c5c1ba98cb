package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/localcluster"
	"github.com/erlmcp/erlmcp/internal/membership"
	clientv3 "go.etcd.io/etcd/client/v3"
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
	// The time the member leaves is when etcd deletes its key (lease
	// expiry), seen by a watch; polling ctl members would add a process
	// start and an admin round trip per poll to the figure.
	cli, _ := etcdClient(t, c.dataDir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := membership.Key(localcluster.Prefix, membership.RoleWorker, "worker-extra")
	resp, err := cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("worker-extra's key %s: %v (%d keys)", key, err, len(resp.Kvs))
	}
	wc := cli.Watch(ctx, key, clientv3.WithRev(resp.Header.Revision+1))
	killed := time.Now()
	if err := w.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = w.Wait()
	var gone time.Duration
	for gone == 0 {
		wr, ok := <-wc
		if !ok || wr.Err() != nil {
			t.Fatalf("watching %s: closed or failed (%v) %s after SIGKILL; the key was not deleted in time", key, wr.Err(), time.Since(killed).Round(time.Millisecond))
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				gone = time.Since(killed)
			}
		}
	}
	t.Logf("SIGKILLed member left membership after %s (lease TTL %s)", gone.Round(time.Millisecond), ttl)
	// TTL, plus etcd's 0.5 s lease-expiry check, the revoke's commit and
	// a slow machine's scheduling.
	if gone > ttl+1500*time.Millisecond {
		t.Errorf("member left %s after SIGKILL; want within TTL %s + 1.5 s", gone, ttl)
	}
	waitFor(t, 10*time.Second, "worker-extra gone from ctl members", func() error {
		if _, ok := present(); ok {
			return fmt.Errorf("still listed %s after SIGKILL", time.Since(killed).Round(time.Millisecond))
		}
		return nil
	})

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
