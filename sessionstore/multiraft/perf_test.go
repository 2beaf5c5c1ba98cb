package multiraft

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Concurrent proposals on many shards share fsyncs: the number of group
// commits (Stats.Syncs, one bbolt commit each) on all three nodes together
// is far below the number of proposals, although every proposal needs a
// durable append on at least two nodes.
//
// Every store's disk takes 2ms per fsync (a plain SSD; the machine's own
// may take microseconds, and then a loop iteration can end before the next
// proposal arrives, which says nothing about group commit): the proposals
// that arrive during one fsync must share the next.
func TestGroupCommitSharesFsyncs(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	for _, s := range c.stores() {
		c.disk(s).set(nil, nil, 2*time.Millisecond)
	}
	shards := []uint32{0, 1, 2, 3, 4, 5, 6, 7}
	c.bootstrap(shards...)
	leaders := map[uint32]StoreID{}
	for _, sh := range shards {
		leaders[sh] = c.leader(sh, 5*time.Second)
	}
	// Settle: let elections' own writes finish before measuring.
	for _, sh := range shards {
		c.mustPut(sh, "warm", "1")
	}
	before := map[StoreID]Stats{}
	for _, s := range c.stores() {
		before[s] = c.node(s).Stats()
	}
	const clients, perClient = 64, 10
	var wg sync.WaitGroup
	var ok, failed atomic.Int64
	start := time.Now()
	for cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sh := shards[cl%len(shards)]
			for i := range perClient {
				// A leader deposed by a starved election timer (10ms
				// ticks on a loaded machine) refuses the proposal or
				// drops it uncommitted: propose retries on the new one.
				_, err := c.propose(sh, putCmd(fmt.Sprint("c", cl), fmt.Sprint(i)), 20*time.Second)
				if err != nil {
					failed.Add(1)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var syncs, leaderSyncs uint64
	leaderSet := map[StoreID]bool{}
	for _, s := range leaders {
		leaderSet[s] = true
	}
	for _, s := range c.stores() {
		d := c.node(s).Stats().Syncs - before[s].Syncs
		syncs += d
		if leaderSet[s] {
			leaderSyncs += d
		}
	}
	if failed.Load() > 0 {
		t.Fatalf("%d proposals failed", failed.Load())
	}
	props := uint64(ok.Load())
	t.Logf("%d proposals from %d clients on %d shards in %v: %d group commits on 3 nodes (%.2f proposals per commit per node; %.1f commits per proposal cluster-wide)",
		props, clients, len(shards), elapsed, syncs, 3*float64(props)/float64(syncs), float64(syncs)/float64(props))
	// Without group commit every proposal costs at least one commit on the
	// leader and one on a follower (2 per proposal, typically 3+).
	if syncs*2 > props {
		t.Fatalf("group commit not effective: %d commits for %d proposals", syncs, props)
	}
}

// Heartbeats of many shards to the same peer travel in one Send (one
// stream message): on an idle cluster with 16 shards the number of sends
// per tick does not grow with the shards; each send carries many messages.
func TestHeartbeatsBatchedAcrossShards(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	var shards []uint32
	for i := range uint32(16) {
		shards = append(shards, i)
	}
	c.bootstrap(shards...)
	for _, sh := range shards {
		c.leader(sh, 5*time.Second)
	}
	before := map[StoreID]Stats{}
	for _, s := range c.stores() {
		before[s] = c.node(s).Stats()
	}
	start := time.Now()
	waitFor(t, 5*time.Second, "idle traffic", func() bool { return time.Since(start) > 500*time.Millisecond })
	elapsed := time.Since(start)
	ticks := float64(elapsed) / float64(10*time.Millisecond)
	for _, s := range c.stores() {
		st := c.node(s).Stats()
		sends, msgs := st.Sends-before[s].Sends, st.Messages-before[s].Messages
		perSend := float64(msgs) / float64(sends)
		t.Logf("store %d: %d messages in %d sends over %.0f ticks (%.1f messages per send, %.1f sends per tick)",
			s, msgs, sends, ticks, perSend, float64(sends)/ticks)
		if perSend < 3 {
			t.Fatalf("store %d: heartbeats not batched: %.1f messages per send", s, perSend)
		}
		// 2 peers × (heartbeats + responses) per tick, with slack for
		// ticks that straddle loop iterations.
		if float64(sends)/ticks > 8 {
			t.Fatalf("store %d: %.1f sends per tick", s, float64(sends)/ticks)
		}
	}
}

// Concurrent linearizable reads of one shard share ReadIndex requests: the
// loop hands every read queued since its last iteration to raft as one
// request (one heartbeat round to a quorum), so the rounds are far fewer
// than the reads, and every read still sees the write acknowledged before
// it started. (Without leases, which answer most reads with no round.)
func TestConcurrentReadsShareReadIndex(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.ReadIndexOnly = true })
	c.bootstrap(0)
	leader := c.node(c.leader(0, 5*time.Second))
	c.mustPut(0, "k", "v0")
	before := leader.Stats()
	const readers, perReader = 64, 10
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Pointer[error]
	for w := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perReader {
				if w == 0 {
					// A write between reads: the reads after it must see it.
					if _, err := c.propose(0, putCmd("k", fmt.Sprint("v", i+1)), 10*time.Second); err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, &err)
						return
					}
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				var got string
				err := leader.Read(ctx, 0, func(b *bolt.Bucket) error {
					got = string(b.Get([]byte("k")))
					return nil
				})
				cancel()
				if err == nil && w == 0 && got != fmt.Sprint("v", i+1) {
					err = fmt.Errorf("read %q after writing v%d", got, i+1)
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, &err)
				}
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d reads failed; first: %v", f, *firstErr.Load())
	}
	st := leader.Stats()
	reads, rounds := st.Reads-before.Reads, st.ReadIndexRounds-before.ReadIndexRounds
	t.Logf("%d reads by %d concurrent readers in %d ReadIndex rounds (%.1f reads per round)", reads, readers, rounds, float64(reads)/float64(rounds))
	if reads != readers*perReader {
		t.Fatalf("counted %d reads, made %d", reads, readers*perReader)
	}
	// How many reads share a round above depends on how fast a round is
	// against the readers' pace (logged, not asserted). What the loop
	// guarantees: every read queued while it was busy goes out in one
	// round. Hold the loop, queue a read per reader, let it go.
	before = leader.Stats()
	r, err := leader.replica(0)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var releaseOnce sync.Once
	let := func() { releaseOnce.Do(func() { close(release) }) }
	defer let() // a failed wait must not leave the loop held (Close would hang)
	held := make(chan struct{})
	go leader.onLoop(func() error { close(held); <-release; return nil })
	<-held
	errs := make(chan error, readers)
	for range readers {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			errs <- leader.Read(ctx, 0, func(b *bolt.Bucket) error { return nil })
		}()
	}
	waitFor(t, 5*time.Second, "every reader queued", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.readQueue) == readers
	})
	let()
	for range readers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	st = leader.Stats()
	rounds = st.ReadIndexRounds - before.ReadIndexRounds
	t.Logf("%d reads queued behind a busy loop went out in %d ReadIndex rounds", readers, rounds)
	if rounds != 1 {
		t.Fatalf("reads not batched: %d queued reads took %d ReadIndex rounds, want 1", readers, rounds)
	}
}
