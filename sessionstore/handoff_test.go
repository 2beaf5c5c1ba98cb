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

// TestHandoffTriesAnotherTarget: the first target the stopping leader
// picks cannot hear it (its messages to that store are dropped, so the
// transfer's TimeoutNow never arrives and raft silently gives the
// transfer up); the handoff tries the other voter and the shard is led
// there when Close returns, well before an election could have run
// (election timeout 2-4 s here).
func TestHandoffTriesAnotherTarget(t *testing.T) {
	stores := []string{"a", "b", "c"}
	c := newRCluster(t, 1, stores...)
	for _, s := range stores {
		cfg := c.cfgs[s]
		cfg.RaftTickInterval = 200 * time.Millisecond
		c.cfgs[s] = cfg
	}
	c.place(0, 1, stores, nil, nil)
	c.start(stores...)
	cl := c.client()
	if _, err := cl.Create(ctxT(t), "h", nil, 0); err != nil {
		t.Fatal(err)
	}
	c.caughtUp(0, stores...)
	lead := c.leader(0)
	st, err := c.status(lead, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Progress is sorted by replica id and both followers are equally up
	// to date: the first follower listed is the first pick. Cut it off.
	var first, other string
	for _, p := range st.Progress {
		if p.ID == st.Replica {
			continue
		}
		for _, s := range stores {
			if multiraft.StoreID(clusterstate.RaftStoreID(s)) == p.ID.Store() {
				if first == "" {
					first = s
				} else {
					other = s
				}
			}
		}
	}
	c.net.block(lead, first)
	c.kill(lead)
	st, err = c.status(other, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Role != "leader" {
		t.Fatalf("%s is %s (leader %v) right after %s stopped; want it to lead: the handoff should have tried it after %s did not take over", other, st.Role, st.Leader, lead, first)
	}
}
