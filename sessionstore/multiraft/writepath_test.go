package multiraft

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	pb "go.etcd.io/raft/v3/raftpb"
)

// A committed entry is handed to the applier, and its proposer answered,
// without waiting for the fsync of entries appended in the same loop
// iteration (applyEarly). The leader's disk takes 300ms per fsync: A's
// append takes one, and B, proposed once a follower has acknowledged A,
// is appended in the next iteration, the one that also commits A. A's
// answer must come before that iteration's fsync ends (the leader's
// Syncs count one more than before A, not two).
func TestAnswerDoesNotWaitForNextAppend(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) {
		// The loop stalls 300ms per fsync; slow ticks keep elections out
		// of it.
		cfg.TickInterval, cfg.ElectionTicks = 100*time.Millisecond, 30
	})
	c.bootstrap(1)
	lead := c.leader(1, 30*time.Second)
	c.mustPut(1, "warm", "1")
	n := c.node(lead)
	c.disk(lead).set(nil, nil, 300*time.Millisecond)
	defer c.disk(lead).set(nil, nil, 0)

	st, err := n.Status(1)
	if err != nil {
		t.Fatal(err)
	}
	idxA := st.Commit + 1
	syncs0 := n.Stats().Syncs
	type answer struct {
		syncs uint64
		err   error
	}
	aC := make(chan answer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := n.Propose(ctx, 1, putCmd("a", "1"))
		aC <- answer{n.Stats().Syncs, err}
	}()
	waitFor(t, 30*time.Second, "a follower's acknowledgement of A", func() bool {
		st, err := n.Status(1)
		if err != nil {
			return false
		}
		for _, p := range st.Progress {
			if p.ID != st.Replica && p.Match >= idxA {
				return true
			}
		}
		return false
	})
	bC := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := n.Propose(ctx, 1, putCmd("b", "1"))
		bC <- err
	}()
	a := <-aC
	if a.err != nil {
		t.Fatalf("A: %v", a.err)
	}
	if err := <-bC; err != nil {
		t.Fatalf("B: %v", err)
	}
	if d := a.syncs - syncs0; d > 1 {
		t.Fatalf("A was answered after %d WAL fsyncs of the leader: it waited for the append of B", d)
	}
}

// A node keeps serving the shards it has nothing to persist for while its
// WAL fsync runs (walwriter.go). Store f's disk takes 2s per fsync and a
// client keeps writing to shard 1, so f (a follower of both shards) is
// nearly always inside an fsync of shard 1's entries. Reads of shard 2
// through f need f to forward a read-index request and to take the answer
// into a Ready, nothing durable: they must not wait for the fsync. When
// the loop itself synced, each of them waited for the fsync in progress
// and then for the next one (the forward was a follower's message of an
// iteration that appended shard 1's entries), 2s at least.
func TestReadsDoNotWaitForOtherShardsFsync(t *testing.T) {
	c, f := slowFollowerCluster(t, syncDelay)
	defer c.keepProposing(1)()
	syncs0 := c.node(f).Stats().Syncs
	waitFor(t, 30*time.Second, "store f inside a slow fsync of shard 1", func() bool {
		return c.node(f).Stats().Syncs > syncs0
	})

	const reads = 5
	var took []time.Duration
	for range reads {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t0 := time.Now()
		err := c.node(f).Read(ctx, 2, func(*bolt.Bucket) error { return nil })
		cancel()
		if err != nil {
			t.Fatalf("read of shard 2 on store %d: %v", f, err)
		}
		took = append(took, time.Since(t0))
	}
	slices.Sort(took)
	t.Logf("reads of shard 2 on store %d during its %v fsyncs of shard 1: %v", f, syncDelay, took)
	// The median, so that one read slowed by a starved CPU does not
	// fail the test; half the fsync is far above a read's own cost here
	// and far below what a read waiting for the fsync takes.
	if med := took[reads/2]; med >= syncDelay/2 {
		t.Fatalf("reads of shard 2 waited for store %d's fsyncs of shard 1: median %v, all %v", f, med, took)
	}
}

// A follower acknowledges an append only once the entries are durable in
// its WAL, although its loop goes on while the WAL writer syncs, and the
// writer's fsync covers only what was handed to it before the fsync began:
// an entry that arrives during an fsync waits for the next one. Store f's
// disk takes 2s per fsync and a client keeps writing to shard 2, so f's
// writer is always inside an fsync of shard 2's entries; 300ms into one of
// them (t0) an entry of shard 1 is proposed. It reaches f after t0 and
// needs a whole fsync begun after it arrived, so shard 1's leader cannot
// see f match it before t0 + 2s: a bound from the injected delay, not from
// the machine's speed. A writer that also marked durable the batches
// queued during its fsync would acknowledge it when the fsync in progress
// ends, about 1.7s after t0.
func TestFollowerAcksOnlyDurableEntries(t *testing.T) {
	c, f := slowFollowerCluster(t, syncDelay)
	fid := NewReplicaID(f, 0)
	defer c.keepProposing(2)()
	syncs0 := c.node(f).Stats().Syncs
	waitFor(t, 30*time.Second, "store f to end a slow fsync of shard 2", func() bool {
		return c.node(f).Stats().Syncs > syncs0
	})
	// The writes kept queueing during that fsync: the next one began as it
	// ended and runs until about 1.7s after t0.
	time.Sleep(300 * time.Millisecond)

	n := c.node(c.leader(1, 30*time.Second))
	st, err := n.Status(1)
	if err != nil {
		t.Fatal(err)
	}
	idx := st.Commit + 1 // shard 1 is idle: its next entry is ours
	t0 := time.Now()
	errC := make(chan error, 1)
	go func() {
		// Committed by the leader and the third store, whatever f does.
		_, err := c.propose(1, putCmd("k", "1"), 30*time.Second)
		errC <- err
	}()
	var acked time.Time
	waitFor(t, 30*time.Second, "store f's acknowledgement of the entry", func() bool {
		st, err := n.Status(1)
		if err != nil {
			return false
		}
		for _, p := range st.Progress {
			if p.ID == fid && p.Match >= idx {
				acked = time.Now()
				return true
			}
		}
		return false
	})
	if err := <-errC; err != nil {
		t.Fatalf("proposal on shard 1: %v", err)
	}
	took := acked.Sub(t0)
	t.Logf("store %d acknowledged entry %d of shard 1 %v after its proposal (fsync delay %v)", f, idx, took, syncDelay)
	if took < syncDelay {
		t.Fatalf("store %d acknowledged entry %d %v after its proposal, before any fsync begun after it could end (%v): an ack before durability", f, idx, took, syncDelay)
	}
}

// A periodic checkpoint's fsyncs do not hold up the applier: with a
// checkpoint stopped between its pin and its fsyncs, writes are still
// applied and answered. Released, the checkpoint completes, and a restart
// (rollback to it, then the WAL's replay) keeps every write.
func TestCheckpointDoesNotHoldUpApplies(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1)
	lead := c.leader(1, 30*time.Second)
	c.mustPut(1, "k", "0")
	n := c.node(lead)
	entered, release := make(chan struct{}), make(chan struct{})
	var hold, free sync.Once
	unblock := func() { free.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the cluster's shutdown, which waits for it
	c.disk(lead).setCheckpointHook(func() {
		hold.Do(func() {
			close(entered)
			<-release
		})
	})
	c.mustPut(1, "k", "1") // something for a checkpoint to take
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("no checkpoint started")
	}
	ck0 := n.Stats().Checkpoints
	for i := 2; i <= 5; i++ {
		c.mustPut(1, "k", string(rune('0'+i)))
	}
	// Applied on the leader while the checkpoint waits.
	c.waitValue(1, "k", "5", 30*time.Second, lead)
	if got := n.Stats().Checkpoints; got != ck0 {
		t.Fatalf("%d checkpoints completed while one was held", got-ck0)
	}
	unblock()
	waitFor(t, 30*time.Second, "the held checkpoint to complete", func() bool {
		return n.Stats().Checkpoints > ck0
	})
	c.kill(lead)
	c.restart(lead)
	c.waitValue(1, "k", "5", 30*time.Second, lead)
}

// durablePrefix: a committed entry counts as durable only when the WAL
// holds it, i.e. up to the WAL's last index and before the first entry
// the same Ready appends; a follower whose uncommitted tail a new leader
// replaces (entries 5.. of term 2 over the WAL's 5..7 of term 1) may see
// the new 5 and 6 committed in that Ready, and they are not durable yet.
func TestDurablePrefix(t *testing.T) {
	ents := func(term uint64, idx ...uint64) []*pb.Entry {
		var out []*pb.Entry
		for _, i := range idx {
			out = append(out, &pb.Entry{Index: new(i), Term: new(term)})
		}
		return out
	}
	for _, tc := range []struct {
		name      string
		committed []*pb.Entry
		last      uint64
		appended  []*pb.Entry
		want      int
	}{
		{"all in the WAL", ents(1, 3, 4, 5), 7, nil, 3},
		{"some past the WAL", ents(1, 6, 7, 8, 9), 7, ents(1, 8, 9), 2},
		{"none in the WAL", ents(1, 8), 7, ents(1, 8), 0},
		{"tail replaced by a new leader", ents(2, 4, 5, 6), 7, ents(2, 5, 6), 1},
		{"whole tail replaced", ents(2, 5, 6), 7, ents(2, 5, 6), 0},
	} {
		if got := durablePrefix(tc.committed, tc.last, tc.appended); got != tc.want {
			t.Errorf("%s: durablePrefix = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestStatsAddCoversEveryField: Stats.Add sums every counter, so a field
// added later is not silently left out of the benchmarks' sums.
func TestStatsAddCoversEveryField(t *testing.T) {
	var one Stats
	var fill func(v reflect.Value)
	fill = func(v reflect.Value) {
		for i := range v.NumField() {
			f := v.Field(i)
			switch f.Kind() {
			case reflect.Struct:
				fill(f)
			case reflect.Uint64, reflect.Int64:
				if f.Kind() == reflect.Uint64 {
					f.SetUint(1)
				} else {
					f.SetInt(1)
				}
			default:
				t.Fatalf("Stats field %s of kind %s: extend this test and Stats.Add", v.Type().Field(i).Name, f.Kind())
			}
		}
	}
	fill(reflect.ValueOf(&one).Elem())
	var check func(v reflect.Value, path string)
	check = func(v reflect.Value, path string) {
		for i := range v.NumField() {
			f, name := v.Field(i), path+v.Type().Field(i).Name
			switch f.Kind() {
			case reflect.Struct:
				check(f, name+".")
			case reflect.Uint64:
				if f.Uint() != 2 {
					t.Errorf("Stats.Add: %s = %d, want 2", name, f.Uint())
				}
			case reflect.Int64:
				if f.Int() != 2 {
					t.Errorf("Stats.Add: %s = %d, want 2", name, f.Int())
				}
			}
		}
	}
	check(reflect.ValueOf(one.Add(one)), "")
}

// keepProposing writes to shard over and over, from a goroutine, until the
// function it returns is called (which waits for the goroutine). Errors (a
// leader change) just mean try again: a slow follower's fsyncs stay busy
// while the leader and the other follower commit.
func (c *testCluster) keepProposing(shard uint32) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			_, _ = c.propose(shard, putCmd("w", fmt.Sprint(i)), 10*time.Second)
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

// syncDelay is how long every fsync of slowFollowerCluster's follower takes.
const syncDelay = 2 * time.Second

// slowFollowerCluster is 3 stores with shards 1 and 2, both written once and
// replicated to f, the store that leads neither, whose fsyncs then take
// delay each (until the test ends). Slow ticks keep elections out of
// those fsyncs (and out of a 2s fsync on a loop that waits in it).
func slowFollowerCluster(t *testing.T, delay time.Duration) (*testCluster, StoreID) {
	t.Helper()
	c := newTestCluster(t, 3, func(cfg *Config) {
		cfg.TickInterval, cfg.ElectionTicks = 100*time.Millisecond, 30
	})
	c.bootstrap(1, 2)
	l1, l2 := c.leader(1, 30*time.Second), c.leader(2, 30*time.Second)
	var f StoreID
	for _, s := range c.stores() {
		if s != l1 && s != l2 {
			f = s
			break
		}
	}
	c.mustPut(1, "warm", "1")
	c.mustPut(2, "warm", "1")
	c.waitValue(1, "warm", "1", 30*time.Second, f)
	c.waitValue(2, "warm", "1", 30*time.Second, f)
	c.disk(f).set(nil, nil, delay)
	t.Cleanup(func() { c.disk(f).set(nil, nil, 0) })
	return c, f
}

// The applier applies into one transaction that stays open while nobody
// needs its state (applyTx). With the linger timer out of the way, twenty
// writes are applied and answered without a commit, and a plain View does
// not see them yet; a linearizable read, on the leader and on each
// follower, has the transaction commit and sees the last write.
func TestReadCommitsOpenApplyTransaction(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.applyLinger = time.Hour })
	c.bootstrap(1)
	lead := c.leader(1, 30*time.Second)
	read := func(s StoreID) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var v []byte
		if err := c.node(s).Read(ctx, 1, func(b *bolt.Bucket) error {
			v = b.Get([]byte("k"))
			return nil
		}); err != nil {
			t.Fatalf("linearizable read on store %d: %v", s, err)
		}
		return string(v)
	}
	c.mustPut(1, "k", "0")
	if got := read(lead); got != "0" {
		t.Fatalf("leader read k=%q, want 0", got)
	}
	n := c.node(lead)
	st0 := n.Stats()
	for i := 1; i <= 20; i++ {
		c.mustPut(1, "k", fmt.Sprint(i))
	}
	st := n.Stats()
	if commits := st.ApplyCommits - st0.ApplyCommits; commits != 0 || st.Applied < st0.Applied+20 {
		t.Fatalf("20 writes nobody read: %d apply commits, %d entries applied; want 0 commits, 20 entries", commits, st.Applied-st0.Applied)
	}
	if v, _ := value(n, 1, "k"); v == "20" {
		t.Fatal("a plain View saw the open transaction's last write")
	}
	for _, s := range c.stores() {
		if got := read(s); got != "20" {
			t.Fatalf("store %d read k=%q after the writes, want 20", s, got)
		}
	}
	if commits := n.Stats().ApplyCommits - st0.ApplyCommits; commits != 1 {
		t.Fatalf("the leader's read made %d apply commits, want 1", commits)
	}
}

// After each round the applier commits if a replica the round applied has a
// read waiting (applyCommitDueLocked): a read that began
// waiting before its entry reached the applier spent its own request to
// commit on a transaction without that entry.
func TestApplyCommitDueForWaitingRead(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.applyLinger = time.Hour })
	c.bootstrap(1)
	lead := c.leader(1, 30*time.Second)
	n := c.node(lead)
	c.mustPut(1, "k", "1") // applied in the open transaction, not committed
	r, err := n.replica(1)
	if err != nil {
		t.Fatal(err)
	}
	// writeMu held throughout: the read added below also makes the loop
	// poke the applier, whose commit must not come first.
	n.writeMu.Lock()
	defer n.writeMu.Unlock()
	if n.apply.tx == nil {
		t.Fatal("no open apply transaction after a write nobody read")
	}
	round := n.apply.pending // the put's round: the transaction's only one
	if n.applyCommitDueLocked(round) {
		t.Fatal("commit due with no read waiting")
	}
	q := &readReq{index: ^uint64(0), ch: make(chan error, 1)}
	r.mu.Lock()
	r.readWait = append(r.readWait, q)
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.readWait = slices.DeleteFunc(r.readWait, func(w *readReq) bool { return w == q })
		r.mu.Unlock()
	}()
	if !n.applyCommitDueLocked(round) {
		t.Fatal("commit not due with a read waiting on a replica the open transaction applied")
	}
}
