package sessionstore_test

import (
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/sessionstore/multiraft"
)

// TestCloseHandsOffLeadership: a node that stops gracefully hands every
// shard it leads to a peer before its replication stops, so when Close
// returns the other replicas already follow a leader on another store.
// The ticks are slow here (election timeout 2-4 s): without the handoff
// the followers would still name the stopped node as their leader.
// Closing the last node, whose peers are gone, does not wait for the
// handoff bound.
func TestCloseHandsOffLeadership(t *testing.T) {
	stores := []string{"a", "b", "c"}
	const shards = 6
	c := newRCluster(t, shards, stores...)
	for _, s := range stores {
		cfg := c.cfgs[s]
		cfg.RaftTickInterval = 200 * time.Millisecond
		c.cfgs[s] = cfg
	}
	for sh := range shards {
		c.place(sh, 1, stores, nil, nil)
	}
	c.start(stores...)
	cl := c.client()
	ctx := ctxT(t)
	for sh := range shards {
		if _, err := cl.Create(ctx, idInShard(sh, shards, "h"), nil, 0); err != nil {
			t.Fatal(err)
		}
		c.caughtUp(uint32(sh), stores...)
	}
	// The store leading most shards stops.
	led := map[string][]uint32{}
	for sh := range uint32(shards) {
		l := c.leader(sh)
		led[l] = append(led[l], sh)
	}
	victim := stores[0]
	for _, s := range stores {
		if len(led[s]) > len(led[victim]) {
			victim = s
		}
	}
	gone := multiraft.StoreID(clusterstate.RaftStoreID(victim))
	c.kill(victim)
	for _, sh := range led[victim] {
		for _, s := range stores {
			if s == victim {
				continue
			}
			st, err := c.status(s, sh)
			if err != nil {
				t.Fatal(err)
			}
			if st.Leader == 0 || st.Leader.Store() == gone {
				t.Fatalf("shard %d: %s follows leader %v right after %s stopped; want a leader on another store", sh, s, st.Leader, victim)
			}
		}
	}
	// Every shard takes writes on its new leader.
	for sh := range shards {
		if _, err := cl.Create(ctx, idInShard(sh, shards, "after"), nil, 0); err != nil {
			t.Fatalf("shard %d after the handoff: %v", sh, err)
		}
	}
	// The rest stop too; the last one has no registered peer to hand to.
	rest := []string{}
	for _, s := range stores {
		if s != victim {
			rest = append(rest, s)
		}
	}
	c.kill(rest[0])
	start := time.Now()
	c.kill(rest[1])
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("closing the last node took %v: it waited for peers that are gone", d)
	}
}
