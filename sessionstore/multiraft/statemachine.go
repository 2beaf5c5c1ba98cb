package multiraft

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	bolt "go.etcd.io/bbolt"
)

// StateMachine is the replicated state of the shards, supplied by the caller.
//
// Each shard's state lives in its own bbolt bucket inside the node's
// raft.db, and Apply writes into that bucket inside a bbolt write
// transaction of the node's applier that also records the shard's applied
// index. So:
//
//   - the applied index is persisted atomically with the state it describes:
//     after a crash the node restarts from exactly the state at the applied
//     index of raft.db's last checkpoint (checkpoint.go) and replays the
//     log (the WAL) from there; it never applies an entry twice or skips
//     one (no "consistent index" bookkeeping in the state machine);
//   - one apply transaction covers the committed entries of every shard
//     that arrived while the previous one was committing, off the Raft
//     loop (whose WAL append is the fsync on a write's path);
//   - snapshots are cheap: a snapshot of a shard is a consistent bbolt read
//     transaction that reads the applied index and the bucket together, so
//     it never blocks writes.
//
// All methods but Snapshot are called from one goroutine at a time (Apply
// from the applier, Restore from the loop while the applier is idle);
// Snapshot from a snapshot goroutine, in a read transaction.
type StateMachine interface {
	// Apply applies one committed command of shard at log index. b is the
	// shard's bucket (read-write). The result is returned to the proposer
	// (the entry is committed in a quorum's logs, and a replay gives the
	// same result). Apply must be deterministic: every
	// replica applies the same commands in the same order and must reach the
	// same state. A refusal (a failed compare-and-set, a missing key) is a
	// result, not an error: a returned error means the state machine cannot
	// go on (corrupt state, I/O error) and stops the node like a failed
	// fsync does.
	Apply(b *bolt.Bucket, shard uint32, index uint64, cmd []byte) ([]byte, error)
	// Snapshot writes the state in b (read-only) to w.
	Snapshot(b *bolt.Bucket, shard uint32, w io.Writer) error
	// Restore replaces the shard's state with the one read from r. b is a
	// fresh empty bucket.
	Restore(b *bolt.Bucket, shard uint32, r io.Reader) error
}

// SnapshotBucket writes every key, value and nested bucket of b to w. It is a
// ready-made StateMachine.Snapshot for state machines that keep all of a
// shard's state in its bucket; RestoreBucket reads it back.
func SnapshotBucket(b *bolt.Bucket, w io.Writer) error {
	bw := bufio.NewWriter(w)
	if err := writeBucket(bw, b); err != nil {
		return err
	}
	if err := bw.WriteByte(recEnd); err != nil {
		return err
	}
	return bw.Flush()
}

// RestoreBucket fills the empty bucket b from a stream written by
// SnapshotBucket.
func RestoreBucket(b *bolt.Bucket, r io.Reader) error {
	br := bufio.NewReader(r)
	if err := readBucket(br, b); err != nil {
		return err
	}
	return nil
}

const (
	recEnd   = 0 // end of the current bucket
	recKV    = 1 // key, value
	recEnter = 2 // key of a nested bucket; its records follow, then recEnd
)

func writeBucket(w *bufio.Writer, b *bolt.Bucket) error {
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v == nil { // nested bucket
			if err := writeRec(w, recEnter, k, nil); err != nil {
				return err
			}
			if err := writeBucket(w, b.Bucket(k)); err != nil {
				return err
			}
			if err := w.WriteByte(recEnd); err != nil {
				return err
			}
			continue
		}
		if err := writeRec(w, recKV, k, v); err != nil {
			return err
		}
	}
	return nil
}

func writeRec(w *bufio.Writer, kind byte, k, v []byte) error {
	var buf [binary.MaxVarintLen64]byte
	w.WriteByte(kind)
	w.Write(buf[:binary.PutUvarint(buf[:], uint64(len(k)))])
	w.Write(k)
	if kind == recKV {
		w.Write(buf[:binary.PutUvarint(buf[:], uint64(len(v)))])
		w.Write(v)
	}
	return nil // bufio.Writer keeps the first error; Flush reports it
}

var errBadSnapshot = errors.New("multiraft: malformed bucket snapshot")

func readBucket(r *bufio.Reader, b *bolt.Bucket) error {
	for {
		kind, err := r.ReadByte()
		if err != nil {
			return fmt.Errorf("%w: %v", errBadSnapshot, err)
		}
		switch kind {
		case recEnd:
			return nil
		case recKV:
			k, err := readBytes(r)
			if err != nil {
				return err
			}
			v, err := readBytes(r)
			if err != nil {
				return err
			}
			if err := b.Put(k, v); err != nil {
				return err
			}
		case recEnter:
			k, err := readBytes(r)
			if err != nil {
				return err
			}
			nb, err := b.CreateBucket(k)
			if err != nil {
				return err
			}
			if err := readBucket(r, nb); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: record kind %d", errBadSnapshot, kind)
		}
	}
}

func readBytes(r *bufio.Reader) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errBadSnapshot, err)
	}
	if n > 1<<30 {
		return nil, fmt.Errorf("%w: length %d", errBadSnapshot, n)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return nil, fmt.Errorf("%w: %v", errBadSnapshot, err)
	}
	return p, nil
}
