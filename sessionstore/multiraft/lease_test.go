package multiraft

import (
	"context"
	"errors"
	"testing"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
)

// readValue is a linearizable read of key on node n of shard 0.
func readValue(ctx context.Context, n *Node, key string) (string, error) {
	if _, err := n.ReadIndex(ctx, 0); err != nil {
		return "", err
	}
	v, _ := value(n, 0, key)
	return v, nil
}

// A leader with a lease answers reads without a ReadIndex round, and the
// reads still see the latest acknowledged write; with ReadIndexOnly every
// read takes a round.
func TestLeaseReadsSkipRounds(t *testing.T) {
	for _, readIndexOnly := range []bool{false, true} {
		c := newTestCluster(t, 3, func(cfg *Config) { cfg.ReadIndexOnly = readIndexOnly })
		c.bootstrap(0)
		lead := c.node(c.leader(0, 5*time.Second))
		before := lead.Stats()
		const n = 200
		for i := 0; i < n; i++ {
			want := "v" + string(rune('a'+i%26))
			c.mustPut(0, "k", want)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			got, err := readValue(ctx, lead, "k")
			cancel()
			if err != nil || got != want {
				t.Fatalf("read %d on the leader = %q, %v; want %q", i, got, err, want)
			}
		}
		st := lead.Stats()
		leased, rounds := st.LeaseReads-before.LeaseReads, st.ReadIndexRounds-before.ReadIndexRounds
		t.Logf("ReadIndexOnly=%v: %d reads, %d by lease, %d rounds", readIndexOnly, n, leased, rounds)
		if readIndexOnly && (leased != 0 || rounds < n) {
			t.Fatalf("ReadIndexOnly: %d lease reads, %d rounds for %d reads; want 0 and one round each", leased, rounds, n)
		}
		if !readIndexOnly && (leased < n/2 || rounds > n/2) {
			t.Fatalf("leases: %d lease reads, %d rounds for %d reads; want most reads by lease", leased, rounds, n)
		}
		c.shutdown()
	}
}

// A leader cut off from its followers (isolated, or paused like SIGSTOP)
// serves lease reads only until its lease ends, which is before the others
// can elect a new leader: once the new leader has acknowledged a write, no
// read on the old one succeeds (a stale read would return the old value).
func TestLeaseEndsBeforeANewLeader(t *testing.T) {
	for _, fault := range []string{"isolate", "pause"} {
		t.Run(fault, func(t *testing.T) {
			c := newTestCluster(t, 3, nil)
			c.bootstrap(0)
			old := c.leader(0, 5*time.Second)
			c.mustPut(0, "k", "before")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if _, err := readValue(ctx, c.node(old), "k"); err != nil {
				t.Fatal(err)
			}
			cancel()
			oldNode := c.node(old)
			leasedBefore := oldNode.Stats().LeaseReads
			if fault == "pause" {
				c.pause(old)
				defer c.unpause(old)
			} else {
				c.isolate(old)
			}
			// Right after the cut the lease still answers (so leases are
			// really in use here).
			ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
			_, early := readValue(ctx, oldNode, "k")
			cancel()
			c.waitLeaderOtherThan(0, old, 5*time.Second)
			if _, err := c.propose(0, putCmd("k", "after"), 5*time.Second); err != nil {
				t.Fatal(err)
			}
			ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
			got, err := readValue(ctx, oldNode, "k")
			cancel()
			if err == nil {
				t.Fatalf("read on the cut-off old leader after the new leader's write = %q, nil; want no answer (its lease must have ended)", got)
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Logf("read on the old leader: %v", err)
			}
			if early != nil || oldNode.Stats().LeaseReads == leasedBefore {
				t.Fatalf("the read right after the cut was not a lease read (%v): the test did not exercise leases", early)
			}
		})
	}
}

// waitLeaderOtherThan waits until a store other than not leads shard.
func (c *testCluster) waitLeaderOtherThan(shard uint32, not StoreID, d time.Duration) StoreID {
	c.t.Helper()
	var lead StoreID
	waitFor(c.t, d, "a new leader", func() bool {
		lead = c.currentLeader(shard)
		return lead != 0 && lead != not
	})
	return lead
}

// While a leadership transfer is under way the leader answers no read from
// its lease: the transfer's target is elected through the followers' lease.
func TestTransferEndsLease(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(0)
	old := c.leader(0, 5*time.Second)
	c.mustPut(0, "k", "v")
	n := c.node(old)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := readValue(ctx, n, "k"); err != nil {
		t.Fatal(err)
	}
	var target StoreID
	for _, s := range c.stores() {
		if s != old {
			target = s
			break
		}
	}
	// The target never hears its TimeoutNow, so the transfer stays under
	// way (until raft gives it up after an election timeout).
	c.partition(old, target)
	before := n.Stats().LeaseReads
	tctx, tcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_ = n.TransferLeader(tctx, 0, ReplicaID(target))
	tcancel()
	if _, err := readValue(ctx, n, "k"); err != nil {
		t.Fatalf("read during the transfer: %v", err)
	}
	if got := n.Stats().LeaseReads - before; got != 0 {
		t.Fatalf("%d lease reads while a transfer was under way; want 0 (a ReadIndex round)", got)
	}
}

// A replica loaded from disk ignores vote requests for an election
// timeout (it may have acknowledged a leader's lease round just before it
// stopped), then votes as raft says.
func TestVoteGuardAfterRestart(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(0)
	c.leader(0, 5*time.Second)
	c.mustPut(0, "k", "v")
	for _, s := range c.stores() {
		c.kill(s)
	}
	c.restart(1)
	n := c.node(1)
	st, err := n.Status(0)
	if err != nil {
		t.Fatal(err)
	}
	term := st.Term
	vote := func() {
		to, from, next, last := uint64(st.Replica), uint64(2), term+1, uint64(1<<20)
		// A log newer than any: the vote is due.
		msg := &pb.Message{Type: pb.MessageType_MsgVote.Enum(), To: &to, From: &from, Term: &next, LogTerm: &next, Index: &last}
		(*nodeHandler)(n).HandleMessages(2, []ShardMessage{{Shard: 0, Message: msg}})
	}
	vote()
	if st2, _ := n.Status(0); st2.Term != term {
		t.Fatalf("a vote request right after the restart moved the term %d -> %d; want it ignored", term, st2.Term)
	}
	waitFor(t, 5*time.Second, "the vote granted after the guard", func() bool {
		vote()
		st2, _ := n.Status(0)
		return st2.Term == term+1
	})
}

// A transfer's TimeoutNow can arrive late: after raft gave the transfer up
// (here: held back until then) it still forces the target's election
// through the followers' lease. So a leader that sent one serves no lease
// read for the rest of its term, and the old leader cut off afterwards
// never answers a read from before the new leader's write.
func TestLateTimeoutNowEndsLeasesForTheTerm(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.ElectionTicks = 50 })
	c.bootstrap(0)
	l := c.leader(0, 5*time.Second)
	var a StoreID
	for _, s := range c.stores() {
		if s != l {
			a = s
			break
		}
	}
	nl, na := c.node(l), c.node(a)
	c.mustPut(0, "k", "before")
	ctx := context.Background()
	if _, err := readValue(ctx, nl, "k"); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.blocked[[2]StoreID{l, a}] = true // the TimeoutNow does not reach a (yet)
	c.mu.Unlock()
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_ = nl.TransferLeader(tctx, 0, ReplicaID(a))
	cancel()
	r, err := nl.replica(0)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "raft to give the transfer up", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.rn.BasicStatus().LeadTransferee == 0
	})
	c.heal()
	st, _ := nl.Status(0)
	before := nl.Stats().LeaseReads
	for i := 0; i < 3; i++ {
		if _, err := readValue(ctx, nl, "k"); err != nil {
			t.Fatal(err)
		}
	}
	if got := nl.Stats().LeaseReads - before; got != 0 {
		t.Fatalf("%d lease reads in the term of a TimeoutNow; want 0", got)
	}
	c.isolate(l)
	to, from, term := uint64(a), uint64(l), st.Term
	(*nodeHandler)(na).HandleMessages(l, []ShardMessage{{Shard: 0, Message: &pb.Message{Type: pb.MessageType_MsgTimeoutNow.Enum(), To: &to, From: &from, Term: &term}}})
	waitFor(t, 5*time.Second, "the transfer target to lead", func() bool {
		s, _ := na.Status(0)
		return s.Role == "leader"
	})
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	if _, err := na.Propose(pctx, 0, putCmd("k", "after")); err != nil {
		t.Fatal(err)
	}
	pcancel()
	rctx, rcancel := context.WithTimeout(ctx, 100*time.Millisecond)
	got, err := readValue(rctx, nl, "k")
	rcancel()
	if err == nil && got == "before" {
		t.Fatalf("stale read on the old leader: %q after %q was acknowledged", got, "after")
	}
}

// Lease reads stop while the store layer says the cluster's timing is not
// uniform (SetLeaseReads(false)), and come back with it.
func TestSetLeaseReads(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(0)
	n := c.node(c.leader(0, 5*time.Second))
	c.mustPut(0, "k", "v")
	ctx := context.Background()
	count := func() uint64 {
		before := n.Stats().LeaseReads
		for i := 0; i < 20; i++ {
			if _, err := readValue(ctx, n, "k"); err != nil {
				t.Fatal(err)
			}
		}
		return n.Stats().LeaseReads - before
	}
	n.SetLeaseReads(false)
	if got := count(); got != 0 {
		t.Fatalf("%d lease reads with leases off; want 0", got)
	}
	n.SetLeaseReads(true)
	if got := count(); got == 0 {
		t.Fatal("no lease read with leases back on")
	}
}
