package front

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
)

func (e *env) registerVersion(id, addr, version string) {
	e.t.Helper()
	m := membership.Member{Role: membership.RoleWorker, ID: id, Addr: addr, Region: "r", Zone: "z", Version: version}
	reg, err := membership.Register(context.Background(), e.cli, e.etcd.Prefix, m, 2*time.Second, logging.Discard())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = reg.Close(context.Background()) })
}

// setTraffic writes the split and waits until the front's /healthz shows it.
func (e *env) setTraffic(t Traffic) {
	e.t.Helper()
	b, _ := json.Marshal(t)
	if _, err := e.cli.Put(context.Background(), TrafficKey(e.etcd.Prefix), string(b)); err != nil {
		e.t.Fatal(err)
	}
	testcluster.WaitFor(e.t, 10*time.Second, "front to apply the split", func() error {
		if got := e.front.pool.currentTraffic(); got.Version != t.Version || got.Weight != t.Weight {
			return fmt.Errorf("front applies %+v", got)
		}
		return nil
	})
}

// TestTrafficSplitFollowsWeight: with two old workers and one new, a 10 %
// split sends 10 of 100 requests to the new one, 100 % sends all, 0 % none,
// and deleting the key spreads requests over all three again.
func TestTrafficSplitFollowsWeight(t *testing.T) {
	e := startFront(t, nil)
	var o1, o2, n1 atomic.Int64
	e.registerVersion("worker-1", hostport(testWorker(t, "o1", &o1, nil)), "v1")
	e.registerVersion("worker-2", hostport(testWorker(t, "o2", &o2, nil)), "v1")
	e.registerVersion("worker-3", hostport(testWorker(t, "n1", &n1, nil)), "v2")
	e.waitWorkers(3)

	send := func(n int) {
		for i := range n {
			resp, body := post(t, e.url, fmt.Sprintf(`{"n":%d}`, i))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
		}
	}
	reset := func() { o1.Store(0); o2.Store(0); n1.Store(0) }

	for _, tc := range []struct{ weight, wantNew int }{{10, 10}, {50, 50}, {100, 100}, {0, 0}} {
		e.setTraffic(Traffic{Version: "v2", Weight: tc.weight})
		reset()
		send(100)
		if got := n1.Load(); got != int64(tc.wantNew) {
			t.Fatalf("weight %d: new worker got %d of 100 requests, want %d (old: %d, %d)", tc.weight, got, tc.wantNew, o1.Load(), o2.Load())
		}
		if o1.Load()+o2.Load() != int64(100-tc.wantNew) {
			t.Fatalf("weight %d: old workers got %d+%d", tc.weight, o1.Load(), o2.Load())
		}
	}

	if _, err := e.cli.Delete(context.Background(), TrafficKey(e.etcd.Prefix)); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 10*time.Second, "split cleared", func() error {
		if got := e.front.pool.currentTraffic(); got != (Traffic{}) {
			return fmt.Errorf("still %+v", got)
		}
		return nil
	})
	reset()
	send(99)
	if o1.Load() != 33 || o2.Load() != 33 || n1.Load() != 33 {
		t.Fatalf("without a split want 33 each, got %d %d %d", o1.Load(), o2.Load(), n1.Load())
	}
}

// TestTrafficSplitFallsBackWhenOneSideIsEmpty: all traffic to a version
// with no worker must not refuse clients; a bad value keeps the last split.
func TestTrafficSplitFallsBackWhenOneSideIsEmpty(t *testing.T) {
	e := startFront(t, nil)
	var o1 atomic.Int64
	e.registerVersion("worker-1", hostport(testWorker(t, "o1", &o1, nil)), "v1")
	e.waitWorkers(1)
	e.setTraffic(Traffic{Version: "v9", Weight: 100})
	for i := range 5 {
		if resp, body := post(t, e.url, fmt.Sprintf(`{"n":%d}`, i)); resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
	}
	if o1.Load() != 5 {
		t.Fatalf("old worker served %d of 5", o1.Load())
	}
	if _, err := e.cli.Put(context.Background(), TrafficKey(e.etcd.Prefix), `{"version":"v9","weight":300}`); err != nil {
		t.Fatal(err)
	}
	// A later good write proves the watch went past the bad one.
	e.setTraffic(Traffic{Version: "v9", Weight: 40})
	if _, err := ParseTraffic([]byte(`{"version":"v9","weight":300}`)); err == nil {
		t.Fatal("weight 300 accepted")
	}
	if _, err := ParseTraffic([]byte(`{"weight":5}`)); err == nil {
		t.Fatal("a weight without a version accepted")
	}
}
