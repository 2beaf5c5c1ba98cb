package multiraft

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"sync"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Storage layout. One bbolt file per node, <Dir>/raft.db:
//
//	meta/                      store  → 4-byte store id (checked at Open)
//	                           format → 1
//	shards/<shard BE u32>/     one bucket per hosted replica
//	    replica → 8-byte ReplicaID of the local replica
//	    hs      → crc | raftpb.HardState
//	    trunc   → crc | index u64 | term u64   (last compacted entry)
//	    applied → crc | index u64 | term u64 | raftpb.ConfState
//	    log/    → index BE u64 → crc | raftpb.Entry
//	    sm/     → the StateMachine's bucket for the shard
//
// Every value the engine writes carries a CRC-32C of its payload, checked
// when read and, for the whole log, at Open: bbolt's copy-on-write commit
// protects against torn writes, but not against a page rotting or being
// scribbled on; a bad checksum, a gap in the indexes, a term going
// backwards or a commit index beyond the log fails Open with ErrCorrupt
// instead of being used.
//
// Why bbolt rather than a WAL: one bbolt transaction is atomic across all
// shards and across log, HardState, applied index and state-machine data,
// so one commit (two fdatasyncs: pages, then meta page) is the group commit
// of everything a loop iteration produced, crash consistency comes from
// bbolt's shadow paging, and compaction is a range delete instead of
// segment bookkeeping. A WAL would append faster for large entries; session
// commands are small, and the log is compacted to a bounded length.
var (
	bktMeta    = []byte("meta")
	bktShards  = []byte("shards")
	bktLog     = []byte("log")
	bktSM      = []byte("sm")
	keyStore   = []byte("store")
	keyFormat  = []byte("format")
	keyReplica = []byte("replica")
	keyHS      = []byte("hs")
	keyTrunc   = []byte("trunc")
	keyApplied = []byte("applied")
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func withCRC(payload []byte) []byte {
	out := make([]byte, 4+len(payload))
	binary.BigEndian.PutUint32(out, crc32.Checksum(payload, crcTable))
	copy(out[4:], payload)
	return out
}

func checkCRC(v []byte) ([]byte, error) {
	if len(v) < 4 {
		return nil, fmt.Errorf("%w: short value (%d bytes)", ErrCorrupt, len(v))
	}
	if crc32.Checksum(v[4:], crcTable) != binary.BigEndian.Uint32(v) {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	return v[4:], nil
}

func u32key(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func u64key(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func shardBucket(tx *bolt.Tx, shard uint32) *bolt.Bucket {
	s := tx.Bucket(bktShards)
	if s == nil {
		return nil
	}
	return s.Bucket(u32key(shard))
}

func decodeEntry(v []byte) (*pb.Entry, error) {
	p, err := checkCRC(v)
	if err != nil {
		return nil, err
	}
	e := &pb.Entry{}
	if err := proto.Unmarshal(p, e); err != nil {
		return nil, fmt.Errorf("%w: entry: %v", ErrCorrupt, err)
	}
	return e, nil
}

func encodeEntry(e *pb.Entry) ([]byte, error) {
	p, err := proto.Marshal(e)
	if err != nil {
		return nil, err
	}
	return withCRC(p), nil
}

type indexTerm struct{ index, term uint64 }

func encodeIndexTerm(it indexTerm, cs *pb.ConfState) ([]byte, error) {
	p := binary.BigEndian.AppendUint64(nil, it.index)
	p = binary.BigEndian.AppendUint64(p, it.term)
	if cs != nil {
		b, err := proto.Marshal(cs)
		if err != nil {
			return nil, err
		}
		p = append(p, b...)
	}
	return withCRC(p), nil
}

func decodeIndexTerm(v []byte) (indexTerm, *pb.ConfState, error) {
	p, err := checkCRC(v)
	if err != nil {
		return indexTerm{}, nil, err
	}
	if len(p) < 16 {
		return indexTerm{}, nil, fmt.Errorf("%w: short index/term", ErrCorrupt)
	}
	it := indexTerm{binary.BigEndian.Uint64(p), binary.BigEndian.Uint64(p[8:])}
	cs := &pb.ConfState{}
	if err := proto.Unmarshal(p[16:], cs); err != nil {
		return indexTerm{}, nil, fmt.Errorf("%w: conf state: %v", ErrCorrupt, err)
	}
	return it, cs, nil
}

// raftStorage is the raft.Storage of one replica, reading from bbolt. Writes
// are done by the node loop inside its group-commit transaction; the
// in-memory bounds below are updated after that transaction is durable.
type raftStorage struct {
	db    *bolt.DB
	shard uint32
	sm    StateMachine

	mu        sync.Mutex
	hs        *pb.HardState // durable HardState
	cs        *pb.ConfState // ConfState as of the applied index (at open)
	first     uint64        // first index in the log (trunc.index+1)
	last      uint64        // last index in the log
	truncTerm uint64        // term of entry first-1

	snapMu     sync.Mutex
	snap       *pb.Snapshot // last generated snapshot, served to raft
	generating bool
}

// loadReplica reads and verifies one replica's persisted state.
func loadReplica(b *bolt.Bucket, shard uint32) (id ReplicaID, st *raftStorage, applied indexTerm, err error) {
	fail := func(format string, a ...any) error {
		return fmt.Errorf("%w: shard %d: %s", ErrCorrupt, shard, fmt.Sprintf(format, a...))
	}
	rv := b.Get(keyReplica)
	if len(rv) != 8 {
		return 0, nil, applied, fail("missing replica id")
	}
	id = ReplicaID(binary.BigEndian.Uint64(rv))
	st = &raftStorage{shard: shard, hs: &pb.HardState{}, cs: &pb.ConfState{}}
	if v := b.Get(keyHS); v != nil {
		p, err := checkCRC(v)
		if err != nil {
			return 0, nil, applied, fail("hard state: %v", err)
		}
		if err := proto.Unmarshal(p, st.hs); err != nil {
			return 0, nil, applied, fail("hard state: %v", err)
		}
	}
	trunc := indexTerm{}
	if v := b.Get(keyTrunc); v != nil {
		if trunc, _, err = decodeIndexTerm(v); err != nil {
			return 0, nil, applied, fail("trunc: %v", err)
		}
	}
	if v := b.Get(keyApplied); v != nil {
		if applied, st.cs, err = decodeIndexTerm(v); err != nil {
			return 0, nil, applied, fail("applied: %v", err)
		}
	}
	st.first, st.last, st.truncTerm = trunc.index+1, trunc.index, trunc.term
	lb := b.Bucket(bktLog)
	if lb == nil {
		return 0, nil, applied, fail("missing log bucket")
	}
	// Verify the whole log: checksums, contiguous indexes starting right
	// after the compaction point, non-decreasing terms.
	prevTerm := trunc.term
	c := lb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 8 {
			return 0, nil, applied, fail("bad log key %x", k)
		}
		idx := binary.BigEndian.Uint64(k)
		if idx != st.last+1 {
			return 0, nil, applied, fail("log gap: expected index %d, found %d", st.last+1, idx)
		}
		e, err := decodeEntry(v)
		if err != nil {
			return 0, nil, applied, fail("entry %d: %v", idx, err)
		}
		if e.GetIndex() != idx || e.GetTerm() < prevTerm {
			return 0, nil, applied, fail("entry %d: index %d term %d after term %d", idx, e.GetIndex(), e.GetTerm(), prevTerm)
		}
		prevTerm = e.GetTerm()
		st.last = idx
	}
	if st.hs.GetCommit() > st.last {
		return 0, nil, applied, fail("commit %d beyond last log index %d (log lost its tail)", st.hs.GetCommit(), st.last)
	}
	if applied.index > st.hs.GetCommit() || applied.index < trunc.index {
		return 0, nil, applied, fail("applied %d outside [%d, commit %d]", applied.index, trunc.index, st.hs.GetCommit())
	}
	return id, st, applied, nil
}

// InitialState implements raft.Storage.
func (s *raftStorage) InitialState() (*pb.HardState, *pb.ConfState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return proto.CloneOf(s.hs), proto.CloneOf(s.cs), nil
}

// sameTermVote reports whether hs (from a Ready; empty means unchanged)
// keeps the durable term and vote.
func (s *raftStorage) sameTermVote(hs *pb.HardState) bool {
	if raft.IsEmptyHardState(hs) {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return hs.GetTerm() == s.hs.GetTerm() && hs.GetVote() == s.hs.GetVote()
}

func (s *raftStorage) bounds() (first, last, truncTerm uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.first, s.last, s.truncTerm
}

// Entries implements raft.Storage.
func (s *raftStorage) Entries(lo, hi, maxSize uint64) ([]*pb.Entry, error) {
	first, last, _ := s.bounds()
	if lo < first {
		return nil, raft.ErrCompacted
	}
	if hi > last+1 {
		return nil, raft.ErrUnavailable
	}
	var out []*pb.Entry
	var size uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		b := shardBucket(tx, s.shard)
		if b == nil {
			return raft.ErrUnavailable
		}
		c := b.Bucket(bktLog).Cursor()
		want := lo
		for k, v := c.Seek(u64key(lo)); k != nil && want < hi; k, v = c.Next() {
			if binary.BigEndian.Uint64(k) != want {
				break
			}
			e, err := decodeEntry(v)
			if err != nil {
				return fmt.Errorf("shard %d entry %d: %w", s.shard, want, err)
			}
			size += uint64(proto.Size(e))
			if len(out) > 0 && size > maxSize {
				return nil
			}
			out = append(out, e)
			want++
		}
		if len(out) == 0 {
			// Compacted between reading the bounds and the transaction.
			return raft.ErrCompacted
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Term implements raft.Storage.
func (s *raftStorage) Term(i uint64) (uint64, error) {
	first, last, truncTerm := s.bounds()
	switch {
	case i == first-1:
		return truncTerm, nil
	case i < first-1:
		return 0, raft.ErrCompacted
	case i > last:
		return 0, raft.ErrUnavailable
	}
	var term uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		b := shardBucket(tx, s.shard)
		if b == nil {
			return raft.ErrUnavailable
		}
		v := b.Bucket(bktLog).Get(u64key(i))
		if v == nil {
			return raft.ErrCompacted
		}
		e, err := decodeEntry(v)
		if err != nil {
			return fmt.Errorf("shard %d entry %d: %w", s.shard, i, err)
		}
		term = e.GetTerm()
		return nil
	})
	return term, err
}

// LastIndex implements raft.Storage.
func (s *raftStorage) LastIndex() (uint64, error) {
	_, last, _ := s.bounds()
	return last, nil
}

// FirstIndex implements raft.Storage.
func (s *raftStorage) FirstIndex() (uint64, error) {
	first, _, _ := s.bounds()
	return first, nil
}

// Snapshot implements raft.Storage. Raft asks for a snapshot only to send it
// to a replica that needs entries already compacted away. A snapshot is a
// consistent read of the shard's applied state (applied index, term,
// ConfState and the state machine's bucket, all from one bbolt read
// transaction, which is exact because they are written atomically). It is
// generated off the raft goroutine: until it is ready raft gets
// ErrSnapshotTemporarilyUnavailable and retries on a later heartbeat.
func (s *raftStorage) Snapshot() (*pb.Snapshot, error) {
	first, _, _ := s.bounds()
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	if s.snap != nil && s.snap.GetMetadata().GetIndex() >= first-1 {
		return s.snap, nil
	}
	if !s.generating {
		s.generating = true
		go s.generateSnapshot()
	}
	return nil, raft.ErrSnapshotTemporarilyUnavailable
}

func (s *raftStorage) generateSnapshot() {
	var snap *pb.Snapshot
	err := s.db.View(func(tx *bolt.Tx) error {
		b := shardBucket(tx, s.shard)
		if b == nil {
			return ErrShardNotFound
		}
		applied, cs, err := decodeIndexTerm(b.Get(keyApplied))
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		if err := s.sm.Snapshot(b.Bucket(bktSM), s.shard, &buf); err != nil {
			return err
		}
		snap = &pb.Snapshot{
			Data: buf.Bytes(),
			Metadata: &pb.SnapshotMetadata{
				Index:     new(applied.index),
				Term:      new(applied.term),
				ConfState: cs,
			},
		}
		return nil
	})
	s.snapMu.Lock()
	s.generating = false
	if err == nil {
		s.snap = snap
	}
	s.snapMu.Unlock()
}

// writer helpers, used inside the loop's write transaction.

func putHardState(b *bolt.Bucket, hs *pb.HardState) error {
	p, err := proto.Marshal(hs)
	if err != nil {
		return err
	}
	return b.Put(keyHS, withCRC(p))
}

// appendEntries writes ents (contiguous) and deletes any old entries after
// them (a conflicting tail being replaced). Returns the new last index.
func appendEntries(b *bolt.Bucket, ents []*pb.Entry, oldLast uint64) (uint64, error) {
	lb := b.Bucket(bktLog)
	for _, e := range ents {
		v, err := encodeEntry(e)
		if err != nil {
			return 0, err
		}
		if err := lb.Put(u64key(e.GetIndex()), v); err != nil {
			return 0, err
		}
	}
	newLast := ents[len(ents)-1].GetIndex()
	for i := newLast + 1; i <= oldLast; i++ {
		if err := lb.Delete(u64key(i)); err != nil {
			return 0, err
		}
	}
	return newLast, nil
}

// compactLog deletes entries [first, to] and records the truncation point.
func compactLog(b *bolt.Bucket, first, to uint64) (term uint64, err error) {
	lb := b.Bucket(bktLog)
	v := lb.Get(u64key(to))
	if v == nil {
		return 0, fmt.Errorf("compact: entry %d missing", to)
	}
	e, err := decodeEntry(v)
	if err != nil {
		return 0, err
	}
	for i := first; i <= to; i++ {
		if err := lb.Delete(u64key(i)); err != nil {
			return 0, err
		}
	}
	tv, err := encodeIndexTerm(indexTerm{to, e.GetTerm()}, nil)
	if err != nil {
		return 0, err
	}
	return e.GetTerm(), b.Put(keyTrunc, tv)
}
