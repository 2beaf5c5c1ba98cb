package multiraft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The write-ahead log: every replica's Raft log entries and HardState, for
// all shards of a node, in one append-only file of records (<Dir>/wal/,
// segments named by a hex sequence number). The WAL writer appends the
// records of every group handed to it since its last sync with one write
// and makes them durable with one fdatasync: the group commit. The state machine (raft.db, bbolt) is
// written by the applier off the loop; on start the log from the applied
// index on is replayed into it (raft redelivers those committed entries).
//
// Why not the log in bbolt: a bbolt commit is two fdatasyncs plus one
// pwrite per dirty page, and each shard touched dirties its own log, hard
// state and state-machine pages; profiles of the store benchmark showed
// the node loop spending most of its time in those commits, with the
// commit time (and so write latency) growing with the number of shards in
// a batch. An append is one write and one fdatasync whatever the shards.
//
// Record: u32 payload length | u32 CRC-32C of the payload | payload, the
// payload being type u8 | shard u32 | replica u64 | body:
//
//	recReset     trunc index u64 | trunc term u64: the replica's log is now
//	             empty, starting after trunc (creation, snapshot, checkpoint)
//	recEntries   u32 count, then per entry u32 length | raftpb.Entry; they
//	             replace any entries at or after the first one's index
//	recHardState raftpb.HardState
//	recCompact   index u64 | term u64: entries up to index are dropped
//
// Segments: when the current one grows walSegmentBytes past its
// checkpoint, and at every
// Open, a new segment starts with a checkpoint (reset, HardState and
// entries of every replica), is fsynced with its directory entry, and the
// older segments are deleted: the log never needs a separate cleaner, and
// a torn tail of the previous segment is left behind for good.
//
// Damage: a record cut short at the end of the segment, or a tail of
// zeros there, is a write that never completed (never fsynced, never
// acknowledged) and ends the log. Anything else (a checksum mismatch, a
// bad length) fails Open with ErrCorrupt: dropping it could lose an
// acknowledged write.
const (
	recReset     byte = 1
	recEntries   byte = 2
	recHardState byte = 3
	recCompact   byte = 4

	walHeader       = 8
	walRecordPrefix = 1 + 4 + 8
	walSuffix       = ".wal"
	walDirName      = "wal"
	// walSegmentBytes: a new segment (with a checkpoint) past this size.
	walSegmentBytes = 64 << 20
	// walMaxRecord bounds one record (a sanity check at replay).
	walMaxRecord = 1 << 30
)

// walReplica is one replica's log as replayed from the WAL.
type walReplica struct {
	id    ReplicaID
	hs    *pb.HardState
	trunc indexTerm
	ents  []*pb.Entry // contiguous from trunc.index+1
}

// wal is the node's open log. The loop adds records and writes them
// without an fsync; the WAL writer goroutine (walwriter.go) writes them and
// fdatasyncs. Replacing the segment (rotation, recovery) and records added
// outside an iteration (new replicas) wait until the writer is idle.
type wal struct {
	dir  string
	name string // the segment's path (f may be named as before its rename)
	f    *os.File
	seq  uint64
	base int64 // bytes of the checkpoint f starts with

	// mu guards what follows and the writes to f (not the fdatasyncs,
	// which run without it so the loop can add records meanwhile).
	mu     sync.Mutex
	size   int64 // bytes written to f
	synced int64 // bytes of f known durable
	buf    []byte
	syncer *fileSyncer // fdatasyncs f
}

// grown is how far the segment has grown past its checkpoint, with the
// records not written yet.
func (w *wal) grown() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.size + int64(len(w.buf)) - w.base
}

func walRecord(buf []byte, typ byte, shard uint32, id ReplicaID, body []byte) []byte {
	start := len(buf)
	buf = beginRecord(buf, typ, shard, id)
	buf = append(buf, body...)
	endRecord(buf, start)
	return buf
}

// beginRecord appends the framing of a record (length and CRC left zero)
// and its prefix; the caller appends the body and calls endRecord with
// the record's start, so a body can be marshalled in place.
func beginRecord(buf []byte, typ byte, shard uint32, id ReplicaID) []byte {
	buf = binary.BigEndian.AppendUint32(buf, 0)
	buf = binary.BigEndian.AppendUint32(buf, 0)
	buf = append(buf, typ)
	buf = binary.BigEndian.AppendUint32(buf, shard)
	return binary.BigEndian.AppendUint64(buf, uint64(id))
}

// endRecord fills in the length and CRC of the record at buf[start:],
// which ends at the end of buf.
func endRecord(buf []byte, start int) {
	binary.BigEndian.PutUint32(buf[start:], uint32(len(buf)-start-walHeader))
	binary.BigEndian.PutUint32(buf[start+4:], crc32.Checksum(buf[start+walHeader:], crcTable))
}

func (w *wal) addReset(shard uint32, id ReplicaID, trunc indexTerm) {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:], trunc.index)
	binary.BigEndian.PutUint64(b[8:], trunc.term)
	w.buf = walRecord(w.buf, recReset, shard, id, b[:])
}

func (w *wal) addCompact(shard uint32, id ReplicaID, to indexTerm) {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:], to.index)
	binary.BigEndian.PutUint64(b[8:], to.term)
	w.buf = walRecord(w.buf, recCompact, shard, id, b[:])
}

func (w *wal) addHardState(shard uint32, id ReplicaID, hs *pb.HardState) error {
	p, err := proto.Marshal(hs)
	if err != nil {
		return err
	}
	w.buf = walRecord(w.buf, recHardState, shard, id, p)
	return nil
}

func (w *wal) addEntries(shard uint32, id ReplicaID, ents []*pb.Entry) error {
	// Marshaled straight into the pending buffer (no per-entry or
	// per-record copies): the record's length and CRC are filled in once
	// its body is complete.
	start := len(w.buf)
	w.buf = beginRecord(w.buf, recEntries, shard, id)
	w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(len(ents)))
	for _, e := range ents {
		at := len(w.buf)
		w.buf = binary.BigEndian.AppendUint32(w.buf, 0)
		var err error
		if w.buf, err = (proto.MarshalOptions{}).MarshalAppend(w.buf, e); err != nil {
			w.buf = w.buf[:start]
			return err
		}
		binary.BigEndian.PutUint32(w.buf[at:], uint32(len(w.buf)-at-4))
	}
	endRecord(w.buf, start)
	return nil
}

// write writes the pending records without an fsync: a crash of the
// machine may lose or tear them (the end of the log), a crash of the
// process does not. A failed write is a storage failure like a failed
// sync.
func (w *wal) write(faults *diskFaults) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) == 0 {
		return nil
	}
	if err := faults.beforeWrite(); err != nil {
		return err
	}
	return w.flushLocked()
}

// flushLocked writes the pending records. With mu.
func (w *wal) flushLocked() error {
	if len(w.buf) == 0 {
		return nil
	}
	if _, err := w.f.WriteAt(w.buf, w.size); err != nil {
		return fmt.Errorf("write %s: %w", w.name, err)
	}
	w.size += int64(len(w.buf))
	w.buf = w.buf[:0]
	return nil
}

// sync writes the pending records and fdatasyncs them. On an error nothing
// of them may be trusted (see storagefail.go); w.synced still marks what
// is durable.
func (w *wal) sync(faults *diskFaults) error {
	if err := faults.beforeCommit(); err != nil {
		return err
	}
	w.mu.Lock()
	err := w.flushLocked()
	target := w.size
	w.mu.Unlock()
	if err != nil {
		return err
	}
	// Without mu: the loop adds (and may write) records meanwhile; this
	// fdatasync covers everything written up to target at least.
	if err := w.syncer.datasync(); err != nil {
		return fmt.Errorf("fdatasync %s: %w", w.name, err)
	}
	if err := faults.afterCommit(); err != nil {
		return err
	}
	w.mu.Lock()
	w.synced = max(w.synced, target)
	w.mu.Unlock()
	return nil
}

func (w *wal) close() {
	if w != nil && w.syncer != nil {
		w.syncer.close()
		w.syncer = nil
	}
	if w != nil && w.f != nil {
		_ = w.f.Close()
		w.f = nil
	}
}

// cutBack drops from the current segment whatever was written after the
// last successful fsync: after a failed write or fsync the page cache may
// show bytes that are not on disk, which a replay must not read.
func (w *wal) cutBack() error {
	if w == nil || w.f == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = w.buf[:0]
	if err := w.f.Truncate(w.synced); err != nil {
		return fmt.Errorf("truncate %s: %w", w.name, err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", w.name, err)
	}
	w.size = w.synced
	return nil
}

func walSegments(dir string) ([]uint64, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var seqs []uint64
	for _, de := range des {
		name := de.Name()
		if !strings.HasSuffix(name, walSuffix) {
			continue
		}
		seq, err := strconv.ParseUint(strings.TrimSuffix(name, walSuffix), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: unexpected file %s in %s", ErrCorrupt, name, dir)
		}
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	return seqs, nil
}

func segmentPath(dir string, seq uint64) string {
	return filepath.Join(dir, fmt.Sprintf("%016x%s", seq, walSuffix))
}

// replayWAL reads the newest segment of dir into the replicas' logs and
// returns its sequence number (0 if none). The newest is enough: every
// segment starts with a complete checkpoint of every replica (it is
// written under a temporary name and renamed once durable), so older ones
// are superseded; they are only left over by a crash before their
// deletion.
func replayWAL(dir string) (map[uint32]*walReplica, uint64, error) {
	seqs, err := walSegments(dir)
	if err != nil {
		return nil, 0, err
	}
	logs := map[uint32]*walReplica{}
	if len(seqs) == 0 {
		return logs, 0, nil
	}
	last := seqs[len(seqs)-1]
	data, err := os.ReadFile(segmentPath(dir, last))
	if err != nil {
		return nil, 0, err
	}
	if err := replaySegment(data, logs); err != nil {
		return nil, 0, fmt.Errorf("%w: %s: %v", ErrCorrupt, segmentPath(dir, last), err)
	}
	return logs, last, nil
}

func allZero(b []byte) bool { return len(bytes.TrimLeft(b, "\x00")) == 0 }

func replaySegment(data []byte, logs map[uint32]*walReplica) error {
	off := 0
	for off < len(data) {
		rest := data[off:]
		if len(rest) < walHeader || allZero(rest) {
			return nil // an append that never completed: the end of the log
		}
		n := int(binary.BigEndian.Uint32(rest))
		if n < walRecordPrefix || n > walMaxRecord {
			return fmt.Errorf("record at offset %d: bad length %d", off, n)
		}
		if len(rest) < walHeader+n {
			return nil // cut short at the end: never completed
		}
		p := rest[walHeader : walHeader+n]
		if crc32.Checksum(p, crcTable) != binary.BigEndian.Uint32(rest[4:]) {
			return fmt.Errorf("record at offset %d: checksum mismatch", off)
		}
		if err := applyRecord(p, logs); err != nil {
			return fmt.Errorf("record at offset %d: %v", off, err)
		}
		off += walHeader + n
	}
	return nil
}

func applyRecord(p []byte, logs map[uint32]*walReplica) error {
	typ := p[0]
	shard := binary.BigEndian.Uint32(p[1:])
	id := ReplicaID(binary.BigEndian.Uint64(p[5:]))
	body := p[walRecordPrefix:]
	if typ == recReset {
		if len(body) != 16 {
			return errors.New("short reset")
		}
		old := logs[shard]
		l := &walReplica{id: id, hs: &pb.HardState{}, trunc: indexTerm{binary.BigEndian.Uint64(body), binary.BigEndian.Uint64(body[8:])}}
		if old != nil && old.id == id {
			l.hs = old.hs // a snapshot or checkpoint keeps the term and vote
		}
		logs[shard] = l
		return nil
	}
	l := logs[shard]
	if l == nil || l.id != id {
		return fmt.Errorf("shard %d: record type %d for replica %v without a reset", shard, typ, id)
	}
	switch typ {
	case recHardState:
		hs := &pb.HardState{}
		if err := proto.Unmarshal(body, hs); err != nil {
			return err
		}
		l.hs = hs
	case recCompact:
		if len(body) != 16 {
			return errors.New("short compact")
		}
		to := indexTerm{binary.BigEndian.Uint64(body), binary.BigEndian.Uint64(body[8:])}
		if to.index <= l.trunc.index {
			return nil
		}
		drop := to.index - l.trunc.index
		if drop > uint64(len(l.ents)) {
			return fmt.Errorf("shard %d: compaction to %d beyond the log", shard, to.index)
		}
		l.ents = slices.Clone(l.ents[drop:])
		l.trunc = to
	case recEntries:
		if len(body) < 4 {
			return errors.New("short entries")
		}
		cnt := binary.BigEndian.Uint32(body)
		body = body[4:]
		for range cnt {
			if len(body) < 4 {
				return errors.New("short entry")
			}
			n := binary.BigEndian.Uint32(body)
			if uint64(len(body)-4) < uint64(n) {
				return errors.New("short entry")
			}
			e := &pb.Entry{}
			if err := proto.Unmarshal(body[4:4+n], e); err != nil {
				return err
			}
			body = body[4+n:]
			idx := e.GetIndex()
			if idx <= l.trunc.index {
				return fmt.Errorf("shard %d: entry %d at or before the compaction point %d", shard, idx, l.trunc.index)
			}
			keep := idx - l.trunc.index - 1
			if keep > uint64(len(l.ents)) {
				return fmt.Errorf("shard %d: log gap: entry %d after %d", shard, idx, l.trunc.index+uint64(len(l.ents)))
			}
			l.ents = append(l.ents[:keep], e)
		}
	default:
		return fmt.Errorf("unknown record type %d", typ)
	}
	return nil
}

// createSegment starts segment seq holding the checkpoint records in cp,
// durable with its directory entry, then deletes every older segment.
func createSegment(dir string, seq uint64, cp []byte, faults *diskFaults) (*wal, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	path := segmentPath(dir, seq)
	// Under a temporary name until the checkpoint is durable: a segment
	// file always starts with a complete one (see replayWAL).
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	w := &wal{dir: dir, name: path, f: f, seq: seq, buf: cp, syncer: newFileSyncer(f)}
	if err := w.sync(faults); err != nil {
		w.close()
		_ = os.Remove(tmp)
		return nil, err
	}
	w.base = w.size
	if err := os.Rename(tmp, path); err != nil {
		w.close()
		_ = os.Remove(tmp)
		return nil, err
	}
	if err := syncDir(dir); err != nil {
		w.close()
		return nil, err
	}
	seqs, err := walSegments(dir)
	if err != nil {
		w.close()
		return nil, err
	}
	for _, s := range seqs {
		if s < seq {
			if err := os.Remove(segmentPath(dir, s)); err != nil {
				w.close()
				return nil, err
			}
		}
	}
	return w, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}
