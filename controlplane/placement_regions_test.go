package controlplane

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
)

// TestRaftPlacementWaitsForRegionsThenSpreads runs the HA run's case
// against a real etcd: the cluster has three regions, but only stores of
// two of them (one doubled) have registered. Initial placement must wait
// the settle time instead of placing at once, and once the third region's
// store registers the planner's spread rule must move every shard to span
// all three regions.
func TestRaftPlacementWaitsForRegionsThenSpreads(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx := context.Background()
	// The region loop writes these for every region a member names; here
	// they are there from the start, so the region count is known.
	for i, name := range []string{"r1", "r2", "r3"} {
		d := RegionDoc{Name: name, Role: RegionSecondary, State: RegionStandby, Weight: 1}
		if i == 0 {
			d.Role, d.State = RegionPrimary, RegionActive
		}
		v, _ := json.Marshal(d)
		if _, err := cli.Put(ctx, RegionKey(e.Prefix, name), string(v)); err != nil {
			t.Fatal(err)
		}
	}
	// r3 has a healthy worker but no store yet (in erlmcp up the workers
	// and control planes of a region often register before its store): a
	// region without a live member is failed by the detector and, rightly,
	// not waited for.
	w3 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }))
	t.Cleanup(w3.Close)
	wr, err := membership.Register(ctx, cli, e.Prefix, membership.Member{Role: membership.RoleWorker, ID: "w-r3", Region: "r3", Zone: "r3-a",
		Addr: strings.TrimPrefix(w3.URL, "http://")}, 2*time.Second, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wr.Close(ctx) })
	cfg := raftConfig(e, "cp-a")
	const settle = 2 * time.Second
	cfg.PlacementSettle = settle
	startCP(t, cfg)

	region := map[string]string{"s1": "r1", "s2": "r2", "s4": "r1", "s3": "r3"}
	start := time.Now()
	var first []*fakeStore
	for _, id := range []string{"s1", "s2", "s4"} {
		first = append(first, addStore(t, cli, e.Prefix, id, region[id], region[id]+"-a"))
	}
	side := startStoreSide(t, e, first...)
	placed := func() error {
		for _, d := range readDocs(t, cli, e.Prefix, cfg.ShardCount) {
			if len(d.Replicas) != 3 {
				return fmt.Errorf("shard %d: %+v", d.Shard.Shard, d.Replicas)
			}
		}
		return nil
	}
	testcluster.WaitFor(t, 30*time.Second, "placement after the settle time", placed)
	// Seen placed no earlier than it was written, which was no earlier
	// than the settle time after the first store registered; without the
	// wait for regions it is written as soon as the three stores are seen.
	if waited := time.Since(start); waited < settle {
		t.Fatalf("placed %s after the first store registered, before the %s settle time, with the stores in 2 of 3 regions", waited, settle)
	}

	s3 := addStore(t, cli, e.Prefix, "s3", "r3", "r3-a")
	side.mu.Lock()
	side.stores[s3.id] = s3
	side.mu.Unlock()
	testcluster.WaitFor(t, 60*time.Second, "every shard's voters in three regions, no move in flight", func() error {
		for _, d := range readDocs(t, cli, e.Prefix, cfg.ShardCount) {
			seen := map[string]bool{}
			for _, r := range d.Replicas {
				if r.Role != clusterstate.RoleVoter {
					return fmt.Errorf("shard %d has learner %s", d.Shard.Shard, r.Store)
				}
				seen[region[r.Store]] = true
			}
			if len(d.Replicas) != 3 || len(seen) != 3 {
				return fmt.Errorf("shard %d: %+v", d.Shard.Shard, d.Replicas)
			}
		}
		if ops := readOps(t, cli, e.Prefix); len(ops) != 0 {
			return fmt.Errorf("%d operators in flight", len(ops))
		}
		return nil
	})
}
