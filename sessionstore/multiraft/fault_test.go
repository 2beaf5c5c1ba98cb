package multiraft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// The leader of a shard is killed: a new leader is elected, every write
// acknowledged before survives, new writes commit, and the old leader
// catches up when it comes back.
func TestLeaderKilledFailover(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1, 2)
	for i := range 10 {
		c.mustPut(1, fmt.Sprint("k", i), fmt.Sprint(i))
	}
	old := c.leader(1, 5*time.Second)
	c.kill(old)
	lead := c.leader(1, 5*time.Second)
	if lead == old {
		t.Fatal("dead node still leader")
	}
	// A linearizable read: a new leader knows the old leader's last
	// entries are committed only once it commits one of its own term, so
	// a plain View there may lag.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.node(lead).ReadIndex(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if v, _ := value(c.node(lead), 1, fmt.Sprint("k", i)); v != fmt.Sprint(i) {
			t.Fatalf("acknowledged write k%d lost on new leader: %q", i, v)
		}
	}
	c.mustPut(1, "after", "x")
	c.mustPut(2, "after", "y")
	c.restart(old)
	c.waitValue(1, "after", "x", 5*time.Second)
	c.waitValue(2, "after", "y", 5*time.Second)
}

// Every node is stopped and started again from its data dir: state, log
// and membership survive, and the shards serve again.
func TestRestartFromDisk(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1, 2, 3)
	for sh := uint32(1); sh <= 3; sh++ {
		for i := range 5 {
			c.mustPut(sh, fmt.Sprint("k", i), fmt.Sprint(sh, "-", i))
		}
	}
	// every replica has applied everything: restart must then keep each
	// replica's own state exactly, before any catch-up
	for sh := uint32(1); sh <= 3; sh++ {
		c.waitValue(sh, "k4", fmt.Sprint(sh, "-4"), 5*time.Second)
	}
	for _, s := range []StoreID{1, 2, 3} {
		c.kill(s)
	}
	for _, s := range []StoreID{1, 2, 3} {
		c.restart(s)
	}
	for sh := uint32(1); sh <= 3; sh++ {
		for _, s := range c.stores() {
			for i := range 5 {
				if v, _ := value(c.node(s), sh, fmt.Sprint("k", i)); v != fmt.Sprint(sh, "-", i) {
					t.Fatalf("store %d shard %d k%d = %q after restart", s, sh, i, v)
				}
			}
		}
		c.mustPut(sh, "new", "1")
		c.waitValue(sh, "new", "1", 5*time.Second)
	}
}

// A follower is down while the log is compacted past what it has; when it
// returns it is caught up by snapshot (MsgSnap over the Snapshot RPC).
func TestLaggingReplicaCatchesUpBySnapshot(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.CompactThreshold = 20; cfg.CompactRetain = 5 })
	c.bootstrap(1)
	c.mustPut(1, "a", "0")
	lead := c.leader(1, 5*time.Second)
	var lag StoreID
	for _, s := range c.stores() {
		if s != lead {
			lag = s
			break
		}
	}
	c.waitValue(1, "a", "0", 5*time.Second, lag)
	c.kill(lag)
	for i := range 60 {
		c.mustPut(1, fmt.Sprint("k", i%7), fmt.Sprint(i))
	}
	// Compaction follows the next checkpoint (raft.db fsynced), up to
	// 100ms later: wait for it.
	waitFor(t, 5*time.Second, "leader log compacted past index 10", func() bool {
		r, err := c.node(c.leader(1, 5*time.Second)).replica(1)
		if err != nil {
			return false
		}
		first, _, _ := r.st.bounds()
		return first >= 10
	})
	c.restart(lag)
	c.waitValue(1, "k3", "59", 10*time.Second, lag)
	if got := c.node(lag).Stats().SnapshotsApplied; got == 0 {
		t.Fatal("lagging replica caught up without a snapshot")
	}
	// and keeps replicating from the log afterwards
	c.mustPut(1, "post", "1")
	c.waitValue(1, "post", "1", 5*time.Second, lag)
}

// Placement's replacement sequence: add a learner on a new store, let it
// catch up (by snapshot), promote it, remove an old voter and destroy its
// replica; the group serves throughout.
func TestLearnerPromoteRemove(t *testing.T) {
	c := newTestCluster(t, 4, func(cfg *Config) { cfg.CompactThreshold = 20; cfg.CompactRetain = 5 })
	// shard 1 on stores 1-3 only
	peers := []ReplicaID{NewReplicaID(1, 0), NewReplicaID(2, 0), NewReplicaID(3, 0)}
	for _, p := range peers {
		if err := c.node(p.Store()).CreateReplica(1, p, peers); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 40 {
		c.mustPut(1, fmt.Sprint("k", i%5), fmt.Sprint(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	newID := NewReplicaID(4, 1)
	if err := c.node(4).CreateReplica(1, newID, nil); err != nil {
		t.Fatal(err)
	}
	lead := c.leader(1, 5*time.Second)
	if err := c.node(lead).AddLearner(ctx, 1, newID); err != nil {
		t.Fatal(err)
	}
	c.waitValue(1, "k4", "39", 10*time.Second, 4)
	st, _ := c.node(4).Status(1)
	if st.Role != "learner" {
		t.Fatalf("new replica role %q", st.Role)
	}
	// promote (retry while the leader still sees it probing)
	waitFor(t, 10*time.Second, "promote", func() bool {
		err := c.node(c.leader(1, 5*time.Second)).Promote(ctx, 1, newID)
		if err != nil && !errors.Is(err, ErrLearnerNotReady) {
			var nl *NotLeaderError
			if !errors.As(err, &nl) {
				t.Fatalf("promote: %v", err)
			}
		}
		return err == nil
	})
	// remove a voter that is not the leader
	lead = c.leader(1, 5*time.Second)
	victim := StoreID(1)
	if lead == 1 {
		victim = 2
	}
	if err := c.node(lead).RemoveReplica(ctx, 1, NewReplicaID(victim, 0)); err != nil {
		t.Fatal(err)
	}
	if err := c.node(victim).DestroyReplica(1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.node(victim).Status(1); !errors.Is(err, ErrShardNotFound) {
		t.Fatalf("destroyed replica still there: %v", err)
	}
	c.mustPut(1, "after", "ok")
	var rest []StoreID
	for _, s := range []StoreID{1, 2, 3, 4} {
		if s != victim {
			rest = append(rest, s)
		}
	}
	c.waitValue(1, "after", "ok", 5*time.Second, rest...)
	st, err := c.node(c.leader(1, 5*time.Second)).Status(1)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Voters) != 3 || len(st.Learners) != 0 {
		t.Fatalf("config after replacement: voters %v learners %v", st.Voters, st.Learners)
	}
	for _, v := range st.Voters {
		if v.Store() == victim {
			t.Fatalf("removed %d still a voter: %v", victim, st.Voters)
		}
	}
	// with the old voter gone, losing one more still leaves a quorum of 2
	// of {rest}: kill a non-leader and write.
	lead = c.leader(1, 5*time.Second)
	for _, s := range rest {
		if s != lead {
			c.kill(s)
			break
		}
	}
	c.mustPut(1, "after2", "ok")
}

// The leader is cut off from both followers: it cannot commit (the
// proposal times out or is refused once CheckQuorum deposes it), the
// majority elects a new leader and commits; after healing the old leader
// follows and has the majority's writes, not its own.
func TestPartitionedLeaderCannotCommit(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1)
	c.mustPut(1, "k", "before")
	old := c.leader(1, 5*time.Second)
	c.isolate(old)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	_, err := c.node(old).Propose(ctx, 1, putCmd("k", "minority"))
	cancel()
	if err == nil {
		t.Fatal("isolated leader committed a write")
	}
	// the majority side elects and commits
	var lead StoreID
	waitFor(t, 5*time.Second, "majority leader", func() bool {
		for _, s := range c.stores() {
			if s == old {
				continue
			}
			if st, err := c.node(s).Status(1); err == nil && st.Role == "leader" {
				lead = s
				return true
			}
		}
		return false
	})
	if _, err := c.node(lead).Propose(context.Background(), 1, putCmd("k", "majority")); err != nil {
		t.Fatal(err)
	}
	// CheckQuorum deposes the isolated leader
	waitFor(t, 5*time.Second, "old leader steps down", func() bool {
		st, _ := c.node(old).Status(1)
		return st.Role != "leader"
	})
	c.heal()
	c.waitValue(1, "k", "majority", 5*time.Second)
}

// lastSegment is the path of a node's newest WAL segment.
func lastSegment(t *testing.T, dir string) string {
	t.Helper()
	seqs, err := walSegments(filepath.Join(dir, walDirName))
	if err != nil || len(seqs) == 0 {
		t.Fatalf("no WAL segment in %s: %v", dir, err)
	}
	return segmentPath(filepath.Join(dir, walDirName), seqs[len(seqs)-1])
}

// walRecords splits a segment into its records (header included).
func walRecords(t *testing.T, data []byte) [][]byte {
	t.Helper()
	var recs [][]byte
	for off := 0; off < len(data); {
		n := walHeader + int(binary.BigEndian.Uint32(data[off:]))
		recs = append(recs, data[off:off+n])
		off += n
	}
	return recs
}

// A corrupt log tail is detected at Open, not used.
func TestCorruptTailDetected(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1)
	for i := range 5 {
		c.mustPut(1, "k", fmt.Sprint(i))
	}
	c.waitValue(1, "k", "4", 5*time.Second)
	dir := c.node(2).cfg.Dir
	c.kill(2)
	path := lastSegment(t, dir)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-1] ^= 0x40 // one flipped bit in the last record
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	err = c.tryStart(2)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open of corrupt log: want ErrCorrupt, got %v", err)
	}
	t.Logf("open failed as expected: %v", err)
}

// A log whose tail was lost (commit index beyond the last entry) is
// detected too.
func TestLostTailDetected(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1)
	for i := range 5 {
		c.mustPut(1, "k", fmt.Sprint(i))
	}
	c.waitValue(1, "k", "4", 5*time.Second)
	dir := c.node(3).cfg.Dir
	c.kill(3)
	path := lastSegment(t, dir)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	recs := walRecords(t, data)
	last := -1
	for i, r := range recs {
		if r[walHeader] == recEntries {
			last = i
		}
	}
	if last < 0 {
		t.Fatal("no entries record in the WAL")
	}
	// The entries go, the HardState that committed them stays.
	kept := slices.Concat(slices.Concat(recs[:last]...), slices.Concat(recs[last+1:]...))
	if err := os.WriteFile(path, kept, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.tryStart(3); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("want ErrCorrupt, got %v", err)
	}
}

// A torn append at the end of the WAL (a record cut short, or a tail of
// zeros: a write that never completed, so was never acknowledged) ends the
// log instead of failing Open, and the node serves every acknowledged write.
func TestTornTailIgnored(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1)
	for i := range 5 {
		c.mustPut(1, "k", fmt.Sprint(i))
	}
	c.waitValue(1, "k", "4", 5*time.Second)
	for _, tail := range [][]byte{
		{0, 0, 1, 0, 0xde, 0xad, 0xbe, 0xef, 2, 0, 0, 0}, // a 256-byte record cut after 4 bytes
		make([]byte, 4096), // zeros
	} {
		dir := c.node(2).cfg.Dir
		c.kill(2)
		path := lastSegment(t, dir)
		f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(tail); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if err := c.tryStart(2); err != nil {
			t.Fatalf("open with a torn tail: %v", err)
		}
		c.waitValue(1, "k", "4", 5*time.Second, 2)
	}
}

// TransferLeader moves leadership where asked.
func TestTransferLeader(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1)
	c.mustPut(1, "k", "v")
	lead := c.leader(1, 5*time.Second)
	target := lead%3 + 1
	c.waitValue(1, "k", "v", 5*time.Second, target)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.node(lead).TransferLeader(ctx, 1, NewReplicaID(target, 0)); err != nil {
		t.Fatal(err)
	}
	if got := c.leader(1, 5*time.Second); got != target {
		t.Fatalf("leader %d, want %d", got, target)
	}
	c.mustPut(1, "k", "v2")
}
