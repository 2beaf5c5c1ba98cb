package multiraft

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Concurrent proposals on many shards share fsyncs: the number of group
// commits (Stats.Syncs, one bbolt commit each) on all three nodes together
// is far below the number of proposals, although every proposal needs a
// durable append on at least two nodes.
func TestGroupCommitSharesFsyncs(t *testing.T) {
	c := newTestCluster(t, 3, nil)
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
			n := c.node(leaders[sh])
			for i := range perClient {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := n.Propose(ctx, sh, putCmd(fmt.Sprint("c", cl), fmt.Sprint(i)))
				cancel()
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
