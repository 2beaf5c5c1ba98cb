package multiraft

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Leaders are elected for 8 shards on 3 nodes; proposals commit and apply
// on every replica; a follower answers NotLeaderError with the right hint.
func TestElectAndReplicate(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	shards := []uint32{0, 1, 2, 3, 4, 5, 6, 7}
	c.bootstrap(shards...)
	for _, sh := range shards {
		lead := c.leader(sh, 5*time.Second)
		res, err := c.node(lead).Propose(context.Background(), sh, putCmd("k", fmt.Sprint("v", sh)))
		if err != nil {
			t.Fatalf("shard %d: %v", sh, err)
		}
		var r kvResult
		if err := json.Unmarshal(res, &r); err != nil || !r.OK {
			t.Fatalf("shard %d: result %s %v", sh, res, err)
		}
		// A follower refuses with the leader's id as hint.
		for _, s := range c.stores() {
			if s == lead {
				continue
			}
			_, err := c.node(s).Propose(context.Background(), sh, putCmd("x", "y"))
			var nl *NotLeaderError
			if !errors.As(err, &nl) {
				t.Fatalf("shard %d follower %d: want NotLeaderError, got %v", sh, s, err)
			}
			if nl.Leader != 0 && nl.Leader.Store() != lead {
				t.Fatalf("shard %d: hint %v, leader %d", sh, nl.Leader, lead)
			}
		}
	}
	for _, sh := range shards {
		c.waitValue(sh, "k", fmt.Sprint("v", sh), 5*time.Second)
	}
	// Status on the leader reports every member's progress.
	lead := c.leader(0, 5*time.Second)
	st, err := c.node(lead).Status(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Voters) != 3 || len(st.Progress) != 3 || st.Applied < 2 || st.Commit < st.Applied {
		t.Fatalf("status: %+v", st)
	}
}

// Reads through ReadIndex on a follower see a write acknowledged by the
// leader just before.
func TestReadIndexOnFollower(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1)
	for i := range 20 {
		c.mustPut(1, "r", fmt.Sprint(i))
		lead := c.leader(1, 5*time.Second)
		for _, s := range c.stores() {
			if s == lead {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var got string
			err := c.node(s).Read(ctx, 1, func(b *bolt.Bucket) error { got = string(b.Get([]byte("r"))); return nil })
			cancel()
			if err != nil {
				t.Fatalf("read on %d: %v", s, err)
			}
			if got != fmt.Sprint(i) {
				t.Fatalf("follower %d read %q after write %d acknowledged", s, got, i)
			}
		}
	}
}

// Stats.ApplyPages counts the raft.db pages the applier's transactions
// wrote: each commit writes at least one page of data and the meta page.
func TestStatsCountApplyPages(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1)
	l := c.leader(1, 30*time.Second)
	st0 := c.node(l).Stats()
	const puts = 5
	for i := range puts {
		c.mustPut(1, fmt.Sprintf("k%d", i), "v")
	}
	// A linearizable read has the applier commit what it applied.
	if err := c.node(l).Read(context.Background(), 1, func(*bolt.Bucket) error { return nil }); err != nil {
		t.Fatal(err)
	}
	st := c.node(l).Stats()
	commits, pages := st.ApplyCommits-st0.ApplyCommits, st.ApplyPages-st0.ApplyPages
	t.Logf("%d apply commits wrote %d pages", commits, pages)
	if commits == 0 || pages < 2*commits {
		t.Fatalf("%d apply commits counted %d pages written; want at least 2 per commit", commits, pages)
	}
}
