package multiraft

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	errInjectedEIO    = errors.New("injected: fsync: input/output error")
	errInjectedENOSPC = errors.New("injected: write: no space left on device")
)

// mustRefuse checks that n refuses proposals and reads with
// ErrStorageUnavailable naming its directory.
func mustRefuse(t *testing.T, n *Node, shard uint32) {
	t.Helper()
	serr := n.StorageErr()
	if !errors.Is(serr, ErrStorageUnavailable) || !strings.Contains(serr.Error(), n.cfg.Dir) {
		t.Fatalf("StorageErr = %v, want ErrStorageUnavailable naming %s", serr, n.cfg.Dir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := n.Propose(ctx, shard, putCmd("refused", "x"))
	if !errors.Is(err, ErrStorageUnavailable) {
		t.Fatalf("propose on a refusing node: want ErrStorageUnavailable, got %v", err)
	}
	if errors.Is(err, ErrResultUnknown) {
		t.Fatalf("a proposal refused up front is not committed, its outcome is known: %v", err)
	}
	if _, err := n.ReadIndex(ctx, shard); !errors.Is(err, ErrStorageUnavailable) {
		t.Fatalf("read on a refusing node: want ErrStorageUnavailable, got %v", err)
	}
	if err := n.CreateReplica(99, NewReplicaID(n.Store(), 0), nil); !errors.Is(err, ErrStorageUnavailable) {
		t.Fatalf("create replica on a refusing node: want ErrStorageUnavailable, got %v", err)
	}
}

// waitHealthy waits until store s has recovered from a storage failure.
func (c *testCluster) waitHealthy(s StoreID, d time.Duration) {
	c.t.Helper()
	waitFor(c.t, d, fmt.Sprintf("store %d storage healthy", s), func() bool {
		return c.node(s).StorageErr() == nil
	})
}

// A leader whose commit fails (a write error, or an fsync error after the
// data reached the file) acknowledges nothing: the proposal fails with
// ErrStorageUnavailable, the node refuses work while the fault lasts, the
// other two replicas keep the shard available, and once the disk works the
// node restarts its groups from disk and catches up. The failed write is
// never visible: the survivors' later writes win on every replica.
func TestLeaderStorageFailureRecovers(t *testing.T) {
	for _, tc := range []struct {
		name        string
		write, sync error
	}{
		{name: "failed write", write: errInjectedENOSPC},
		{name: "failed fsync", sync: errInjectedEIO},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCluster(t, 3, nil)
			c.bootstrap(1, 2)
			c.mustPut(1, "k", "ok")
			c.mustPut(2, "k", "ok")
			lead := c.leader(1, 10*time.Second)
			n := c.node(lead)
			c.disk(lead).set(tc.write, tc.sync, 0)

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := n.Propose(ctx, 1, putCmd("k", "lost"))
			cancel()
			if !errors.Is(err, ErrStorageUnavailable) {
				t.Fatalf("propose during the fault: want ErrStorageUnavailable, got %v", err)
			}
			if !errors.Is(err, tc.write) && !errors.Is(err, tc.sync) {
				t.Fatalf("error does not wrap the cause: %v", err)
			}
			mustRefuse(t, n, 1)
			if n.Stats().StorageFailures == 0 {
				t.Fatal("StorageFailures not counted")
			}

			// The survivors keep both shards available.
			c.mustPut(1, "k", "survivors")
			c.mustPut(2, "k", "survivors")
			mustRefuse(t, n, 2) // still failing: the probe fails too

			c.disk(lead).set(nil, nil, 0)
			c.waitHealthy(lead, 10*time.Second)
			if n.Stats().StorageRecoveries == 0 {
				t.Fatal("StorageRecoveries not counted")
			}
			c.waitValue(1, "k", "survivors", 10*time.Second)
			c.waitValue(2, "k", "survivors", 10*time.Second)
			// "lost" was never committed after "survivors": the CAS from
			// "survivors" succeeds on the whole group, including the
			// recovered replica.
			res, err := c.propose(1, casCmd("k", "survivors", "final"), 10*time.Second)
			if err != nil || !strings.Contains(string(res), `"ok":true`) {
				t.Fatalf("cas after recovery: %s, %v", res, err)
			}
			c.waitValue(1, "k", "final", 10*time.Second)
			// The recovered node serves linearizable reads again.
			ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := n.ReadIndex(ctx, 1); err != nil {
				t.Fatalf("read on the recovered node: %v", err)
			}
		})
	}
}

// A follower whose fsync fails does not acknowledge the append: with the
// third replica cut off, the leader cannot commit and the client gets no
// success. Once the disk works and the partition heals, the group commits
// again and the follower catches up.
func TestFollowerFailedFsyncNotAcknowledged(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1)
	c.mustPut(1, "k", "ok")
	lead := c.leader(1, 10*time.Second)
	f1, f2 := lead%3+1, (lead+1)%3+1
	c.waitValue(1, "k", "ok", 10*time.Second)
	c.partition(lead, f2)
	c.disk(f1).set(nil, errInjectedEIO, 0)

	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	_, err := c.node(lead).Propose(ctx, 1, putCmd("k", "unsynced"))
	cancel()
	if err == nil {
		t.Fatal("a write was acknowledged although the only reachable follower failed to fsync it")
	}
	waitFor(t, 10*time.Second, "follower refusing", func() bool { return c.node(f1).StorageErr() != nil })
	mustRefuse(t, c.node(f1), 1)
	if v, _ := value(c.node(lead), 1, "k"); v != "ok" {
		t.Fatalf("leader applied %q without a durable quorum", v)
	}

	c.disk(f1).set(nil, nil, 0)
	c.heal()
	c.waitHealthy(f1, 10*time.Second)
	c.mustPut(1, "k", "after")
	c.waitValue(1, "k", "after", 10*time.Second)
}

// A slow disk on one replica slows nothing down to failure: writes keep
// committing (on the other two) and the slow replica stays healthy and in
// sync.
func TestSlowFsyncReplicaKeepsUp(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1)
	c.mustPut(1, "k", "0")
	lead := c.leader(1, 10*time.Second)
	slow := lead%3 + 1
	c.disk(slow).set(nil, nil, 30*time.Millisecond)
	for i := range 20 {
		c.mustPut(1, "k", fmt.Sprint(i))
	}
	c.waitValue(1, "k", "19", 10*time.Second)
	if err := c.node(slow).StorageErr(); err != nil {
		t.Fatalf("slow disk reported as failed: %v", err)
	}
	c.disk(slow).set(nil, nil, 0)
}

// A real full disk: store 3's directory is a small tmpfs. Filling it makes
// store 3 refuse with ENOSPC while the others keep serving; freeing space
// makes it recover and catch up. Needs root (CI runs as root).
func TestFullDiskTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs not permitted: %v: %s", err, out)
	}
	// Registered before the cluster, so it runs after the cluster's
	// shutdown has closed the files on it.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	c := newTestCluster(t, 3, func(cfg *Config) {
		if cfg.Store == 3 {
			cfg.Dir = filepath.Join(mnt, "3")
		}
	})
	c.bootstrap(1)
	c.mustPut(1, "k", "start")
	c.waitValue(1, "k", "start", 10*time.Second)

	// Fill the tmpfs up but for a little.
	filler := filepath.Join(mnt, "filler")
	fillDisk(t, filler)
	big := strings.Repeat("x", 64<<10)
	var i int
	waitFor(t, 60*time.Second, "store 3 refusing writes on a full disk", func() bool {
		i++
		// The survivors commit them.
		if _, err := c.propose(1, putCmd(fmt.Sprint("big", i%50), big), 30*time.Second); err != nil {
			t.Fatalf("64 KiB put %d: %v", i, err)
		}
		return c.node(3).StorageErr() != nil
	})
	serr := c.node(3).StorageErr()
	if !errors.Is(serr, syscall.ENOSPC) {
		t.Fatalf("StorageErr = %v, want it to wrap ENOSPC", serr)
	}
	t.Logf("store 3 refuses: %v", serr)
	mustRefuse(t, c.node(3), 1)
	c.mustPut(1, "k", "while-full")

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	c.waitHealthy(3, 20*time.Second)
	c.waitValue(1, "k", "while-full", 20*time.Second)
	c.mustPut(1, "k", "after")
	c.waitValue(1, "k", "after", 20*time.Second)
}

// fillDisk writes path until its filesystem is full, then frees 256 KiB so
// the node's next few commits still fit.
func fillDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	var size int64
	for {
		n, err := f.Write(buf)
		size += int64(n)
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(max(size-256<<10, 0)); err != nil {
		t.Fatal(err)
	}
}
