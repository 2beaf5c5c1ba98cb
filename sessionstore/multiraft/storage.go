package multiraft

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"slices"
	"sync"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Storage layout. The Raft logs and HardStates of all replicas are in the
// node's WAL (<Dir>/wal/, see wal.go); the state machine is one bbolt file,
// <Dir>/raft.db:
//
//	meta/                      store  → 4-byte store id (checked at Open)
//	                           format → 2 (1: the log was in bbolt too;
//	                                    migrated to the WAL at Open)
//	shards/<shard BE u32>/     one bucket per hosted replica
//	    replica → 8-byte ReplicaID of the local replica
//	    applied → crc | index u64 | term u64 | raftpb.ConfState
//	    snapshot → index u64 of a restored snapshot, until the next apply
//	    sm/     → the StateMachine's bucket for the shard
//	  format 1 only: hs → crc | HardState, trunc → crc | index | term,
//	    log/ → index BE u64 → crc | raftpb.Entry
//
// Every value the engine writes carries a CRC-32C of its payload, checked
// when read; a bad checksum, a gap in the indexes, a term going backwards
// or a commit index beyond the log fails Open with ErrCorrupt instead of
// being used. The applied index is written in the same bbolt transaction as
// the state it describes, so a restart resumes applying exactly after it.
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
	// keySnapshot (format 2): index u64 of the snapshot the state machine
	// was restored from, until an entry is applied after it.
	keySnapshot = []byte("snapshot")

	// formatWAL is the layout with the log in the WAL.
	formatWAL byte = 2
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

// raftStorage is the raft.Storage of one replica: its durable log and
// HardState, kept in memory (the WAL holds them on disk; see wal.go). The
// loop updates it once the WAL records of an iteration are durable.
type raftStorage struct {
	db    *bolt.DB
	shard uint32
	sm    StateMachine

	mu    sync.Mutex
	hs    *pb.HardState // durable HardState
	cs    *pb.ConfState // ConfState as of the applied index (at open)
	trunc indexTerm     // the last compacted entry (first index - 1)
	ents  []*pb.Entry   // the log, from trunc.index+1
	// entBytes is the size of ents by entrySize: what the log holds in
	// memory and what a new WAL segment's checkpoint copies of it.
	entBytes uint64

	snapMu     sync.Mutex
	snap       *pb.Snapshot // last generated snapshot, served to raft
	generating bool
}

// loadReplica reads and verifies one replica's persisted state as format 1
// kept it (the log in bbolt), for the migration to the WAL.
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
	if v := b.Get(keyTrunc); v != nil {
		if st.trunc, _, err = decodeIndexTerm(v); err != nil {
			return 0, nil, applied, fail("trunc: %v", err)
		}
	}
	if v := b.Get(keyApplied); v != nil {
		if applied, st.cs, err = decodeIndexTerm(v); err != nil {
			return 0, nil, applied, fail("applied: %v", err)
		}
	}
	lb := b.Bucket(bktLog)
	if lb == nil {
		return 0, nil, applied, fail("missing log bucket")
	}
	c := lb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 8 {
			return 0, nil, applied, fail("bad log key %x", k)
		}
		e, err := decodeEntry(v)
		if err != nil {
			return 0, nil, applied, fail("entry %d: %v", binary.BigEndian.Uint64(k), err)
		}
		if want := st.trunc.index + uint64(len(st.ents)) + 1; e.GetIndex() != want || binary.BigEndian.Uint64(k) != want {
			return 0, nil, applied, fail("log gap: expected index %d, found %d", want, binary.BigEndian.Uint64(k))
		}
		st.ents = append(st.ents, e)
	}
	st, err = fromWAL(shard, &walReplica{id: id, hs: st.hs, trunc: st.trunc, ents: st.ents}, applied, st.cs, 0)
	if err != nil {
		return 0, nil, applied, err
	}
	return id, st, applied, nil
}

// verify checks a loaded log against the applied index of the state
// machine: non-decreasing terms, commit within the log, applied within
// [compaction point, commit].
func (s *raftStorage) verify(applied indexTerm) error {
	fail := func(format string, a ...any) error {
		return fmt.Errorf("%w: shard %d: %s", ErrCorrupt, s.shard, fmt.Sprintf(format, a...))
	}
	prevTerm := s.trunc.term
	for i, e := range s.ents {
		if e.GetIndex() != s.trunc.index+uint64(i)+1 || e.GetTerm() < prevTerm {
			return fail("entry %d: index %d term %d after term %d", s.trunc.index+uint64(i)+1, e.GetIndex(), e.GetTerm(), prevTerm)
		}
		prevTerm = e.GetTerm()
	}
	last := s.trunc.index + uint64(len(s.ents))
	if s.hs.GetCommit() > last {
		return fail("commit %d beyond last log index %d (log lost its tail)", s.hs.GetCommit(), last)
	}
	if applied.index > s.hs.GetCommit() || applied.index < s.trunc.index {
		return fail("applied %d outside [%d, commit %d]", applied.index, s.trunc.index, s.hs.GetCommit())
	}
	return nil
}

// fromWAL builds a replica's storage from its replayed WAL log and the
// state machine's durable applied index. The state machine can be ahead of
// the log's commit index: a commit index alone is not fsynced (it is
// learnt again from the leader), so the applier may have made entries
// durable past it; those are committed, so the commit index moves up to
// them. If the log does not hold the applied entry, the state machine is a
// snapshot whose restore was durable while its WAL records were not (the
// restore is written first): the log restarts at the snapshot, as the
// interrupted install would have left it.
//
// snapshot is the index of the last snapshot restored, if no entry was
// applied after it (0 otherwise): only then may the state machine be
// ahead of the log; else the log lost its tail.
func fromWAL(shard uint32, l *walReplica, applied indexTerm, cs *pb.ConfState, snapshot uint64) (*raftStorage, error) {
	st := &raftStorage{shard: shard, hs: l.hs, cs: cs, trunc: l.trunc, ents: l.ents, entBytes: entriesSize(l.ents)}
	if applied.index > st.hs.GetCommit() {
		st.hs = proto.CloneOf(st.hs)
		st.hs.Commit = new(applied.index)
		last := st.trunc.index + uint64(len(st.ents))
		if applied.index > last ||
			(applied.index > st.trunc.index && st.ents[applied.index-st.trunc.index-1].GetTerm() != applied.term) {
			if snapshot != applied.index {
				return nil, fmt.Errorf("%w: shard %d: the state machine applied entry %d (term %d) that the log (up to %d) does not hold: the log lost its tail",
					ErrCorrupt, shard, applied.index, applied.term, last)
			}
			st.trunc, st.ents, st.entBytes = applied, nil, 0
		}
	}
	return st, st.verify(applied)
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
	return s.trunc.index + 1, s.trunc.index + uint64(len(s.ents)), s.trunc.term
}

// Entries implements raft.Storage.
func (s *raftStorage) Entries(lo, hi, maxSize uint64) ([]*pb.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	first, last := s.trunc.index+1, s.trunc.index+uint64(len(s.ents))
	if lo < first {
		return nil, raft.ErrCompacted
	}
	if hi > last+1 {
		return nil, raft.ErrUnavailable
	}
	ents := s.ents[lo-first : hi-first]
	var size uint64
	for i, e := range ents {
		size += uint64(proto.Size(e))
		if i > 0 && size > maxSize {
			ents = ents[:i]
			break
		}
	}
	// A copy: the log is appended to and truncated under raft's feet.
	return slices.Clone(ents), nil
}

// Term implements raft.Storage.
func (s *raftStorage) Term(i uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case i == s.trunc.index:
		return s.trunc.term, nil
	case i < s.trunc.index:
		return 0, raft.ErrCompacted
	case i > s.trunc.index+uint64(len(s.ents)):
		return 0, raft.ErrUnavailable
	}
	return s.ents[i-s.trunc.index-1].GetTerm(), nil
}

// appendDurable adds entries made durable by the WAL, replacing any
// conflicting tail.
func (s *raftStorage) appendDurable(ents []*pb.Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keep := ents[0].GetIndex() - s.trunc.index - 1
	s.entBytes += entriesSize(ents) - entriesSize(s.ents[keep:])
	if keep == uint64(len(s.ents)) {
		// The common case, in place: a copy of the whole log per append
		// was a third of the store's allocations once logs held thousands
		// of entries. Nothing else holds the array (Entries and compactTo
		// copy, checkpoint reads under mu).
		s.ents = append(s.ents, ents...)
		return
	}
	// A conflicting tail is cut off: a new array all the same, so the
	// replaced entries are never written over.
	s.ents = append(s.ents[:keep:keep], ents...)
}

// compactTo drops the entries up to to.index.
func (s *raftStorage) compactTo(to indexTerm) {
	s.mu.Lock()
	defer s.mu.Unlock()
	drop := to.index - s.trunc.index
	s.entBytes -= entriesSize(s.ents[:drop])
	s.ents = slices.Clone(s.ents[drop:])
	s.trunc = to
}

// resetTo empties the log, which restarts after trunc (a snapshot).
func (s *raftStorage) resetTo(trunc indexTerm) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ents, s.trunc, s.entBytes = nil, trunc, 0
}

// logBytes is the size of the log held (entrySize of every entry).
func (s *raftStorage) logBytes() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.entBytes
}

// retainFrom is the compaction point that keeps, of the entries up to
// applied, the newest ones up to maxEntries of them and maxBytes of
// entrySize: the log is compacted to the returned index (at most
// applied; at or below the current compaction point when there is
// nothing to drop).
func (s *raftStorage) retainFrom(applied, maxEntries, maxBytes uint64) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	last := s.trunc.index + uint64(len(s.ents))
	applied = min(applied, last)
	to, bytes := applied, uint64(0)
	for to > s.trunc.index && applied-to < maxEntries {
		size := entrySize(s.ents[to-s.trunc.index-1])
		if bytes+size > maxBytes {
			break
		}
		bytes += size
		to--
	}
	return to
}

// entrySize is what an entry counts for the log's byte bounds: its data
// and a little for its framing.
func entrySize(e *pb.Entry) uint64 { return uint64(len(e.GetData())) + 16 }

func entriesSize(ents []*pb.Entry) uint64 {
	var n uint64
	for _, e := range ents {
		n += entrySize(e)
	}
	return n
}

// checkpoint writes the replica's whole durable log to w (a new segment).
func (s *raftStorage) checkpoint(w *wal, id ReplicaID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	w.addReset(s.shard, id, s.trunc)
	if err := w.addHardState(s.shard, id, s.hs); err != nil {
		return err
	}
	if len(s.ents) == 0 {
		return nil
	}
	return w.addEntries(s.shard, id, s.ents)
}

// termAt is the term of entry i, which must be in the log.
func (s *raftStorage) termAt(i uint64) uint64 {
	t, _ := s.Term(i)
	return t
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
	if s.snap != nil && s.snap.GetMetadata().GetIndex() >= first-1 && s.snapConfCurrent() {
		return s.snap, nil
	}
	if !s.generating {
		s.generating = true
		go s.generateSnapshot()
	}
	return nil, raft.ErrSnapshotTemporarilyUnavailable
}

// snapConfCurrent says whether the cached snapshot's ConfState is the
// applied one. A snapshot generated before a membership change lacks the
// replica that change added, and that replica rejects it ("not in the
// ConfState") every time it is sent: a learner would never catch up until
// the next compaction (seen as a repair under erlmcp up that never
// finished). The caller holds snapMu.
func (s *raftStorage) snapConfCurrent() bool {
	var cur *pb.ConfState
	err := s.db.View(func(tx *bolt.Tx) error {
		b := shardBucket(tx, s.shard)
		if b == nil {
			return ErrShardNotFound
		}
		var err error
		_, cur, err = decodeIndexTerm(b.Get(keyApplied))
		return err
	})
	return err == nil && sameConf(cur, s.snap.GetMetadata().GetConfState())
}

// sameConf compares two configurations as sets of replica ids.
func sameConf(a, b *pb.ConfState) bool {
	same := func(x, y []uint64) bool {
		x, y = slices.Clone(x), slices.Clone(y)
		slices.Sort(x)
		slices.Sort(y)
		return slices.Equal(x, y)
	}
	return same(a.GetVoters(), b.GetVoters()) && same(a.GetLearners(), b.GetLearners()) &&
		same(a.GetVotersOutgoing(), b.GetVotersOutgoing()) && same(a.GetLearnersNext(), b.GetLearnersNext())
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
