package multiraft

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// A leader caches the snapshot it generates for a learner. A second
// learner added before the log is compacted again must not be sent that
// snapshot: its ConfState predates the second learner, which rejects it
// ("not in the ConfState") every time and never catches up (seen as a
// repair that never finished under `erlmcp up`).
func TestSecondLearnerGetsSnapshotWithItsConf(t *testing.T) {
	c := newTestCluster(t, 5, func(cfg *Config) { cfg.CompactThreshold = 20; cfg.CompactRetain = 5 })
	peers := []ReplicaID{NewReplicaID(1, 0), NewReplicaID(2, 0), NewReplicaID(3, 0)}
	for _, p := range peers {
		if err := c.node(p.Store()).CreateReplica(1, p, peers); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 40 {
		c.mustPut(1, fmt.Sprint("k", i%5), fmt.Sprint(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, store := range []StoreID{4, 5} {
		id := NewReplicaID(store, 1)
		if err := c.node(store).CreateReplica(1, id, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.node(c.leader(1, 5*time.Second)).AddLearner(ctx, 1, id); err != nil {
			t.Fatal(err)
		}
		// No write in between: the log is not compacted again, so the
		// leader still holds the snapshot it made for store 4.
		c.waitValue(1, "k4", "39", 10*time.Second, store)
	}
}
