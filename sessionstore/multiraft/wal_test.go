package multiraft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func testEntries(from, to, term uint64) []*pb.Entry {
	var out []*pb.Entry
	for i := from; i <= to; i++ {
		out = append(out, &pb.Entry{Index: new(i), Term: new(term), Data: []byte(fmt.Sprint(i))})
	}
	return out
}

// The state machine may be ahead of the WAL's commit index (a commit index
// alone is not fsynced): the log is kept and the commit index moves up. If
// the log does not hold the applied entry, an interrupted snapshot install
// is finished: the log restarts at the snapshot.
func TestFromWALAppliedAhead(t *testing.T) {
	l := func() *walReplica {
		return &walReplica{id: 1, hs: &pb.HardState{Term: new(uint64(2)), Commit: new(uint64(5))}, trunc: indexTerm{2, 1}, ents: testEntries(3, 10, 2)}
	}
	st, err := fromWAL(1, l(), indexTerm{8, 2}, &pb.ConfState{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if first, last, _ := st.bounds(); first != 3 || last != 10 || st.hs.GetCommit() != 8 {
		t.Fatalf("applied within the log: log [%d, %d] commit %d, want [3, 10] commit 8", first, last, st.hs.GetCommit())
	}
	st, err = fromWAL(1, l(), indexTerm{20, 3}, &pb.ConfState{}, 20)
	if err != nil {
		t.Fatal(err)
	}
	if first, last, tt := st.bounds(); first != 21 || last != 20 || tt != 3 || st.hs.GetCommit() != 20 {
		t.Fatalf("snapshot beyond the log: log [%d, %d] term %d commit %d, want empty after 20 term 3, commit 20", first, last, tt, st.hs.GetCommit())
	}
	// The snapshot's entry 8 has another term than the log's (an
	// uncommitted tail the snapshot overrides).
	st, err = fromWAL(1, l(), indexTerm{8, 3}, &pb.ConfState{}, 8)
	if err != nil {
		t.Fatal(err)
	}
	if first, last, _ := st.bounds(); first != 9 || last != 8 {
		t.Fatalf("snapshot over a conflicting log: log [%d, %d], want empty after 8", first, last)
	}
	// Without a restored snapshot there, a state machine beyond the log
	// means the log lost its tail.
	if _, err := fromWAL(1, l(), indexTerm{20, 3}, &pb.ConfState{}, 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("applied beyond the log: want ErrCorrupt, got %v", err)
	}
	// Applied behind the compaction point is corruption.
	if _, err := fromWAL(1, l(), indexTerm{1, 1}, &pb.ConfState{}, 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("applied before the log: want ErrCorrupt, got %v", err)
	}
}

// Replay rebuilds what the records say: later entries replace a
// conflicting tail, compaction drops a prefix, a reset starts over but
// keeps term and vote.
func TestWALReplay(t *testing.T) {
	dir := t.TempDir()
	cp := &wal{}
	cp.addReset(7, 1, indexTerm{0, 0})
	if err := cp.addEntries(7, 1, testEntries(1, 5, 1)); err != nil {
		t.Fatal(err)
	}
	if err := cp.addEntries(7, 1, testEntries(4, 6, 2)); err != nil { // replaces 4, 5
		t.Fatal(err)
	}
	if err := cp.addHardState(7, 1, &pb.HardState{Term: new(uint64(2)), Vote: new(uint64(1)), Commit: new(uint64(6))}); err != nil {
		t.Fatal(err)
	}
	cp.addCompact(7, 1, indexTerm{2, 1})
	cp.addReset(8, 2, indexTerm{0, 0})
	if err := cp.addEntries(8, 2, testEntries(1, 3, 1)); err != nil {
		t.Fatal(err)
	}
	cp.addReset(8, 2, indexTerm{9, 4}) // a snapshot
	w, err := createSegment(dir, 1, cp.buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.close()
	logs, seq, err := replayWAL(dir)
	if err != nil {
		t.Fatal(err)
	}
	if seq != 1 {
		t.Fatalf("last segment %d, want 1", seq)
	}
	a := logs[7]
	if a.trunc != (indexTerm{2, 1}) || len(a.ents) != 4 || a.ents[0].GetIndex() != 3 || a.ents[1].GetTerm() != 2 || a.hs.GetCommit() != 6 {
		t.Fatalf("shard 7: trunc %v, %d entries, hs %v", a.trunc, len(a.ents), a.hs)
	}
	b := logs[8]
	if b.trunc != (indexTerm{9, 4}) || len(b.ents) != 0 {
		t.Fatalf("shard 8: trunc %v, %d entries", b.trunc, len(b.ents))
	}
	// A new segment deletes the older ones.
	w, err = createSegment(dir, 2, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.close()
	if seqs, _ := walSegments(dir); len(seqs) != 1 || seqs[0] != 2 {
		t.Fatalf("segments %v, want [2]", seqs)
	}
	// Left over by a crash: an older segment (superseded by the newest's
	// checkpoint, whatever its tail) and a checkpoint never completed.
	if err := os.WriteFile(segmentPath(dir, 1), []byte("garbage, not read"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(segmentPath(dir, 3)+".tmp", []byte{1, 2, 3}, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, seq, err := replayWAL(dir); err != nil || seq != 2 {
		t.Fatalf("replay with leftovers: segment %d, %v; want 2, nil", seq, err)
	}
}

// The WAL starts new segments as it grows, each with a checkpoint, and a
// node restarted from them has every write.
func TestWALRotation(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.segmentBytes = 4 << 10 })
	c.bootstrap(1, 2)
	pad := strings.Repeat("x", 200)
	for i := range 100 {
		c.mustPut(uint32(1+i%2), fmt.Sprint("k", i%7), fmt.Sprint(i, pad))
	}
	c.waitValue(2, "k1", fmt.Sprint(99, pad), 10*time.Second)
	dir := c.node(2).cfg.Dir
	c.kill(2)
	seqs, err := walSegments(filepath.Join(dir, walDirName))
	if err != nil || len(seqs) != 1 {
		t.Fatalf("segments %v (%v), want only the newest", seqs, err)
	}
	if seqs[0] < 3 {
		t.Fatalf("segment %d after 100 writes of 200 bytes with 4 KiB segments: no rotation", seqs[0])
	}
	c.start(2)
	c.waitValue(2, "k1", fmt.Sprint(99, pad), 10*time.Second, 2)
	c.waitValue(1, "k0", fmt.Sprint(98, pad), 10*time.Second, 2)
}

// A raft.db of format 1 (the log in bbolt) is migrated to the WAL at Open
// and keeps every write.
func TestMigrateFormat1(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1)
	for i := range 10 {
		c.mustPut(1, "k", fmt.Sprint(i))
	}
	c.waitValue(1, "k", "9", 10*time.Second)
	dir := c.node(3).cfg.Dir
	c.kill(3)
	// Rewrite store 3's data in format 1: its WAL log into bbolt.
	logs, _, err := replayWAL(filepath.Join(dir, walDirName))
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, "raft.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bktMeta).Put(keyFormat, []byte{1}); err != nil {
			return err
		}
		return tx.Bucket(bktShards).ForEachBucket(func(k []byte) error {
			b := tx.Bucket(bktShards).Bucket(k)
			l := logs[binary.BigEndian.Uint32(k)]
			hs, err := proto.Marshal(l.hs)
			if err != nil {
				return err
			}
			if err := b.Put(keyHS, withCRC(hs)); err != nil {
				return err
			}
			tv, err := encodeIndexTerm(l.trunc, nil)
			if err != nil {
				return err
			}
			if err := b.Put(keyTrunc, tv); err != nil {
				return err
			}
			lb, err := b.CreateBucket(bktLog)
			if err != nil {
				return err
			}
			for _, e := range l.ents {
				v, err := encodeEntry(e)
				if err != nil {
					return err
				}
				if err := lb.Put(u64key(e.GetIndex()), v); err != nil {
					return err
				}
			}
			return nil
		})
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	// Format 1 was written by versions that fsynced every bbolt commit,
	// without checkpoints (checkpoint.go): no raft.db.meta.
	if err := os.Remove(filepath.Join(dir, checkpointFileName)); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, walDirName)); err != nil {
		t.Fatal(err)
	}
	c.start(3)
	c.waitValue(1, "k", "9", 10*time.Second, 3)
	c.mustPut(1, "k", "after")
	c.waitValue(1, "k", "after", 10*time.Second, 3)
	err = c.node(3).db().View(func(tx *bolt.Tx) error {
		if f := tx.Bucket(bktMeta).Get(keyFormat); len(f) != 1 || f[0] != formatWAL {
			return fmt.Errorf("format %x after the migration", f)
		}
		if shardBucket(tx, 1).Bucket(bktLog) != nil {
			return errors.New("the bbolt log is still there")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
