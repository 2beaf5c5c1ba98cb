package etcdwatch_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/etcdwatch"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	clientv3 "go.etcd.io/etcd/client/v3"
)

type latest struct {
	mu   sync.Mutex
	snap etcdwatch.Snapshot
	n    int
}

func (l *latest) set(s etcdwatch.Snapshot) { l.mu.Lock(); l.snap = s; l.n++; l.mu.Unlock() }
func (l *latest) get() (etcdwatch.Snapshot, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.snap, l.n
}

func TestRunFollowsPutsDeletesAndCompaction(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := e.Prefix + "w/"
	if _, err := cli.Put(ctx, p+"a", "1"); err != nil {
		t.Fatal(err)
	}
	var l latest
	done := make(chan error, 1)
	go func() {
		done <- etcdwatch.Run(ctx, cli, p, etcdwatch.Options{Resync: 200 * time.Millisecond}, l.set)
	}()
	want := func(what string, check func(map[string][]byte) bool) {
		t.Helper()
		testcluster.WaitFor(t, 5*time.Second, what, func() error {
			s, _ := l.get()
			if !check(s.KVs) {
				return testcluster.Errorf("snapshot %v", s.KVs)
			}
			return nil
		})
	}
	want("initial list", func(m map[string][]byte) bool { return string(m[p+"a"]) == "1" })
	_, _ = cli.Put(ctx, p+"b", "2")
	_, _ = cli.Delete(ctx, p+"a")
	_, _ = cli.Put(ctx, e.Prefix+"other", "x") // outside the prefix
	want("put and delete", func(m map[string][]byte) bool { _, a := m[p+"a"]; return !a && string(m[p+"b"]) == "2" && len(m) == 1 })

	// Compact past everything; the periodic re-list and the watch restart
	// from a fresh revision must still deliver later changes.
	r, _ := cli.Put(ctx, p+"c", "3")
	if _, err := cli.Compact(ctx, r.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	_, _ = cli.Put(ctx, p+"d", "4")
	want("after compaction", func(m map[string][]byte) bool { return string(m[p+"c"]) == "3" && string(m[p+"d"]) == "4" })
	_, n1 := l.get()
	want("periodic resync", func(map[string][]byte) bool { _, n := l.get(); return n > n1 })

	cancel()
	select {
	case err := <-done:
		if err != context.Canceled {
			t.Fatalf("Run returned %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
