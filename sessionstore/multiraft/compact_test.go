package multiraft

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
)

// logOf is store s's view of shard's log: its first index and bytes held.
func logOf(c *testCluster, s StoreID, shard uint32) (first, bytes uint64, ok bool) {
	n := c.node(s)
	if n == nil {
		return 0, 0, false
	}
	r, err := n.replica(shard)
	if err != nil {
		return 0, 0, false
	}
	first, _, _ = r.st.bounds()
	return first, r.st.logBytes(), true
}

// A log of large entries is compacted by its bytes long before it holds
// CompactThreshold entries, so it never holds much more than
// CompactThresholdBytes (here 100 KB are written, 32 KiB the bound); a
// replica restarted afterwards still has every write.
func TestCompactionBoundsLogBytes(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) {
		cfg.CompactThresholdBytes = 32 << 10
		cfg.CompactRetainBytes = 8 << 10
	})
	c.bootstrap(1)
	pad := strings.Repeat("x", 1000)
	for i := range 100 {
		c.mustPut(1, fmt.Sprint("k", i%5), fmt.Sprint(i, pad))
	}
	c.waitValue(1, "k4", fmt.Sprint(99, pad), 10*time.Second)
	// Compaction follows a checkpoint (every 100ms): wait for it on all.
	for _, s := range c.stores() {
		waitFor(t, 10*time.Second, fmt.Sprintf("store %d's log compacted to at most 32 KiB", s), func() bool {
			first, bytes, ok := logOf(c, s, 1)
			return ok && first > 1 && bytes <= 32<<10
		})
	}
	lag := c.stores()[0]
	c.kill(lag)
	c.restart(lag)
	c.waitValue(1, "k0", fmt.Sprint(95, pad), 10*time.Second, lag)
	c.mustPut(1, "after", "1")
	c.waitValue(1, "after", "1", 10*time.Second, lag)
}

// A new WAL segment's checkpoint copies only the retained part of each
// log: rotation compacts first, even when no threshold was reached (here
// the thresholds are never reached).
func TestRotationCompactsTheCheckpoint(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) {
		cfg.segmentBytes = 32 << 10
		cfg.CompactThresholdBytes = 1 << 30
		cfg.CompactRetainBytes = 4 << 10
	})
	c.bootstrap(1)
	pad := strings.Repeat("y", 1000)
	const writes = 300
	for i := range writes {
		c.mustPut(1, fmt.Sprint("k", i%5), fmt.Sprint(i, pad))
	}
	c.waitValue(1, "k4", fmt.Sprint(writes-1, pad), 10*time.Second)
	s := c.stores()[1]
	waitFor(t, 10*time.Second, "a rotation compacted the log", func() bool {
		first, _, ok := logOf(c, s, 1)
		return ok && first > 1
	})
	dir := c.node(s).cfg.Dir
	c.kill(s)
	logs, seq, err := replayWAL(filepath.Join(dir, walDirName))
	if err != nil || seq < 3 {
		t.Fatalf("replay: segment %d, %v; want a rotated segment", seq, err)
	}
	// The segment holds its checkpoint (at most 4 KiB of entries plus
	// those not applied durably yet, up to a raft.db checkpoint's worth)
	// and what came after it (about a segment): far less than the 300 KB
	// written, all of which a checkpoint without compaction copies.
	if got := entriesSize(logs[1].ents); got > writes*1016/2 {
		t.Fatalf("the newest segment holds %d bytes of shard 1's log; want the retained part and what followed the rotation", got)
	}
	c.restart(s)
	c.waitValue(1, "k3", fmt.Sprint(writes-2, pad), 10*time.Second, s)
}

// retainFrom keeps the newest entries up to the applied index within both
// bounds, and never goes below the compaction point.
func TestRetainFrom(t *testing.T) {
	st := &raftStorage{trunc: indexTerm{10, 1}}
	for i := uint64(11); i <= 20; i++ {
		st.appendDurable(entriesOf(i, 84)) // entrySize 100
	}
	if st.logBytes() != 1000 {
		t.Fatalf("logBytes %d, want 1000", st.logBytes())
	}
	for _, c := range []struct{ applied, maxEntries, maxBytes, want uint64 }{
		{18, 100, 1 << 20, 10}, // everything up to 18 fits: nothing to drop
		{18, 3, 1 << 20, 15},   // keep 16..18
		{18, 100, 250, 16},     // keep 17..18 (300 bytes would not fit)
		{18, 1, 50, 18},        // not even one fits: drop through 18
		{25, 2, 1 << 20, 18},   // applied beyond the log: up to its end
	} {
		if got := st.retainFrom(c.applied, c.maxEntries, c.maxBytes); got != c.want {
			t.Errorf("retainFrom(%d, %d, %d) = %d, want %d", c.applied, c.maxEntries, c.maxBytes, got, c.want)
		}
	}
	st.compactTo(indexTerm{15, 1})
	if st.logBytes() != 500 {
		t.Fatalf("logBytes after compaction %d, want 500", st.logBytes())
	}
	st.appendDurable(entriesOf(19, 184)) // replaces 19 and 20 with one of 200
	if st.logBytes() != 500 {
		t.Fatalf("logBytes after a conflicting append %d, want 500", st.logBytes())
	}
	st.resetTo(indexTerm{30, 2})
	if st.logBytes() != 0 {
		t.Fatalf("logBytes after a reset %d, want 0", st.logBytes())
	}
}

func entriesOf(index uint64, dataBytes int) []*pb.Entry {
	return []*pb.Entry{{Index: new(index), Term: new(uint64(1)), Data: make([]byte, dataBytes)}}
}

// appendDurable appends in place (it copied the whole log on every
// append, a third of the store's allocations with long logs) and still
// replaces a conflicting tail.
func TestAppendDurableInPlace(t *testing.T) {
	st := &raftStorage{trunc: indexTerm{0, 0}}
	for i := uint64(1); i <= 1000; i++ {
		st.appendDurable(entriesOf(i, 10))
	}
	var batches [][]*pb.Entry // built first: the measured appends only append
	for i := uint64(1001); i <= 1201; i++ {
		batches = append(batches, entriesOf(i, 10))
	}
	allocs := testing.AllocsPerRun(200, func() {
		st.appendDurable(batches[0])
		batches = batches[1:]
	})
	if allocs >= 0.5 {
		t.Fatalf("%.2f allocations per append to a log of 1000 entries; want it appended in place", allocs)
	}
	st.appendDurable([]*pb.Entry{{Index: new(uint64(1100)), Term: new(uint64(2))}}) // cuts 1101..1201
	if _, last, _ := st.bounds(); last != 1100 {
		t.Fatalf("last index %d after a conflicting append at 1100, want 1100", last)
	}
	if term, err := st.Term(1100); err != nil || term != 2 {
		t.Fatalf("term of 1100: %d, %v; want 2", term, err)
	}
	if term, err := st.Term(1099); err != nil || term != 1 {
		t.Fatalf("term of 1099: %d, %v; want 1", term, err)
	}
}
