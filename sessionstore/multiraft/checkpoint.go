package multiraft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Checkpoints: raft.db is written without an fsync per transaction.
//
// Why the state machine needs no fsync per apply: every entry the applier
// applies is committed, i.e. durable in a quorum's WALs and in this
// node's own WAL up to the shard's durable applied index (compaction never
// goes past it, see maybeCompact). If raft.db only ever goes back to a
// state S that is consistent (the applied index stored in the same
// transaction as the state it describes), a restart replays the WAL from
// S's applied index and reaches the same state again: the state machine is
// deterministic. So the applier's transactions (and every other write to
// raft.db) are committed with bbolt's NoSync, and only a checkpoint, every
// checkpointInterval or when the loop needs a write to be durable
// (creating, destroying or restoring a replica), fsyncs the file. The
// periodic ones run beside the applier's transactions (see
// checkpointConcurrent for why that keeps the steps below true).
//
// What makes "goes back to S" true. A bbolt commit writes its pages (into
// pages free in the previous tree) and then its meta page, one of two,
// alternating. With fsyncs between them (bbolt's own mode) a crash leaves
// either the old or the new tree. Without, a machine crash (power loss,
// kernel panic; a process crash keeps the page cache) can leave a newer
// meta page on disk whose pages never got there, and later commits may
// already have reused the pages of the last fsynced tree: bbolt would
// open garbage. So a checkpoint:
//
//  1. fdatasyncs raft.db: every committed transaction up to the latest, T,
//     is on disk with its meta page;
//  2. keeps a read transaction open on T (the pin): bbolt never reuses a
//     page that a reader's tree still uses, so T's pages stay untouched on
//     disk until the next checkpoint has superseded T;
//  3. copies T's meta page into raft.db.meta (two checksummed slots,
//     written alternately, fdatasynced), and only then releases the
//     previous pin and lets the log be compacted up to what T holds.
//
// Every open (process start, and the in-process restart after a storage
// failure) first writes the checkpointed meta page over both of
// raft.db's meta pages if raft.db has a newer one (rollbackToCheckpoint):
// bbolt then opens tree T, intact, and the WAL replays what came after.
// The pages written after T are free space in T's tree, whatever state the
// crash left them in. Close takes no checkpoint, so every restart in the
// tests goes through this rollback and replay.
//
// A failed fsync (checkpoint) is handled like a failed WAL append (see
// storagefail.go): the node refuses work, closes raft.db and reopens it,
// which rolls back to the last good checkpoint; its pages were fsynced
// before and never written since, so neither the disk nor a page cache
// that hides a lost write can disagree about them.
//
// The pin has a limit: bbolt remaps the file when it outgrows its mapping,
// and a remap waits for every open read transaction, the pin included,
// which only the next commit's checkpoint would release: a deadlock. So
// raft.db is mapped with a large InitialMmapSize (ckptMmapBytes of address
// space, not memory; etcd maps 10 GiB for the same reason), and a file
// that comes within ckptMmapMargin of it makes the node fall back to
// bbolt's own fsync per transaction (syncMode: no pin, no raft.db.meta,
// so no rollback at the next open either).
//
// What it buys: a loop iteration's applies cost a few page writes to the
// page cache instead of two fdatasyncs (bbolt writes and syncs the pages,
// then the meta page), which were half of the fsyncs and a third of the
// CPU of the store benchmark; reads and proposers no longer wait behind
// the apply's fsyncs.

// checkpointInterval bounds the age of the newest applies a restart has
// to replay from the WAL (and delays log compaction as much).
//
// Why a second, not 100 ms: a checkpoint's fdatasync flushes every raft.db
// page the applier wrote since the last one, and the WAL's fsyncs, which
// each write waits for, queue behind that flush on the same disk: at 100 ms
// the three nodes of one machine flushed 30 times a second, 6-7 ms each,
// and a write that met one waited for it on the leader or the follower.
// With a second, open-loop writes at 500/s went from a p99 of 27 ms to
// 12 (docs/benchmarks.md), for a second of WAL to replay at a restart.
const checkpointInterval = time.Second

const checkpointFileName = "raft.db.meta"

const (
	ckptMmapBytes  = 8 << 30
	ckptMmapMargin = 1 << 30
)

// The head of a bbolt meta page (go.etcd.io/bbolt v1.x, internal/common):
// a page header (id u64, flags u16, count u16, overflow u32), then magic
// u32, version u32, page size u32, flags u32, the root bucket (pgid u64,
// sequence u64), the freelist pgid u64, the high-water pgid u64, the txid
// u64 and an FNV-1a 64 checksum of the meta fields before it, in the
// machine's byte order. bbolt validates magic, version and checksum on
// open; a copy with its page id set to the slot it is written to is a
// valid meta page of that slot.
const (
	boltPageHeader  = 16
	boltMetaMagic   = 0xED0CDAED
	boltMetaVersion = 2
	boltMetaPgSize  = boltPageHeader + 8
	boltMetaTxid    = boltPageHeader + 48
	boltMetaSum     = boltPageHeader + 56
	boltMetaLen     = boltMetaSum + 8
)

// boltMeta checks a meta page head and returns its txid and page size.
func boltMeta(p []byte) (txid uint64, pageSize int, ok bool) {
	if len(p) < boltMetaLen {
		return 0, 0, false
	}
	ne := binary.NativeEndian
	if ne.Uint32(p[boltPageHeader:]) != boltMetaMagic || ne.Uint32(p[boltPageHeader+4:]) != boltMetaVersion {
		return 0, 0, false
	}
	h := fnv.New64a()
	_, _ = h.Write(p[boltPageHeader:boltMetaSum])
	if h.Sum64() != ne.Uint64(p[boltMetaSum:]) {
		return 0, 0, false
	}
	return ne.Uint64(p[boltMetaTxid:]), int(ne.Uint32(p[boltMetaPgSize:])), true
}

// A checkpoint record: u32 CRC-32C of the rest | meta page head.
const ckptSlotSize = 128

// checkpointer keeps raft.db's checkpoints (see the top of this file). Its
// methods are called with Node.ckMu held, and with Node.writeMu unless
// they say otherwise.
type checkpointer struct {
	dbPath string
	src    *os.File // raft.db, to read meta pages back
	f      *os.File // raft.db.meta
	// srcSync and fSync fdatasync raft.db and raft.db.meta (aiosync_*.go).
	srcSync, fSync *fileSyncer
	pin            *bolt.Tx
	// kept: pins of checkpoints whose record failed, held until close. A
	// record that reached the page cache but not the disk may still be
	// read back by the in-process recovery (the newest record wins), so
	// its pages must not be reused before then.
	kept []*bolt.Tx
	txid uint64
	slot int // the slot holding txid's record
	// syncMode: bbolt fsyncs every commit itself (see the top of this
	// file); checkpoints are no-ops.
	syncMode bool
	// dirty: transactions were committed since the last checkpoint.
	dirty bool
	// limit is the raft.db size from which on it is syncMode
	// (ckptMmapBytes - ckptMmapMargin; tests lower it).
	limit int64
}

// tooBig says whether raft.db has grown too close to its mapping for a pin.
func (c *checkpointer) tooBig() bool {
	st, err := c.src.Stat()
	return err == nil && st.Size() > c.limit
}

// enterSyncMode stops checkpointing: from now on every commit of db is
// fsynced by bbolt. raft.db.meta goes first, so no later open rolls back.
func (c *checkpointer) enterSyncMode(dir string, db *bolt.DB) error {
	if err := db.Sync(); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, checkpointFileName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	if c.pin != nil {
		_ = c.pin.Rollback()
		c.pin = nil
	}
	db.NoSync = false
	c.syncMode = true
	return nil
}

// readCheckpoint returns the newest valid record of raft.db.meta (nil if
// there is none) and its slot.
func readCheckpoint(f *os.File) (meta []byte, txid uint64, slot int, err error) {
	buf := make([]byte, 2*ckptSlotSize)
	n, err := f.ReadAt(buf, 0)
	if err != nil && n < len(buf) && !errors.Is(err, io.EOF) {
		return nil, 0, 0, err
	}
	buf = buf[:n]
	for s := range 2 {
		if len(buf) < (s+1)*ckptSlotSize {
			break
		}
		rec := buf[s*ckptSlotSize : (s+1)*ckptSlotSize]
		body := rec[4 : 4+boltMetaLen]
		if crc32.Checksum(body, crcTable) != binary.BigEndian.Uint32(rec) {
			continue // never written, or torn
		}
		t, _, ok := boltMeta(body)
		if ok && (meta == nil || t > txid) {
			meta, txid, slot = body, t, s
		}
	}
	return meta, txid, slot, nil
}

// rollbackToCheckpoint makes raft.db's newest meta page the checkpointed
// one (see the top of this file). Called before bbolt opens the file.
func rollbackToCheckpoint(dir string) error {
	dbPath := filepath.Join(dir, "raft.db")
	ck, err := os.Open(filepath.Join(dir, checkpointFileName))
	if errors.Is(err, os.ErrNotExist) {
		// A new raft.db, or one written by a version that fsynced every
		// transaction: what is on disk is consistent. openDB checkpoints
		// before any write.
		return nil
	}
	if err != nil {
		return err
	}
	meta, txid, _, err := readCheckpoint(ck)
	_ = ck.Close()
	if err != nil {
		return fmt.Errorf("read %s: %w", checkpointFileName, err)
	}
	if meta == nil {
		return nil // the first checkpoint never completed: as if absent
	}
	f, err := os.OpenFile(dbPath, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		// A checkpoint of a raft.db that is gone: bbolt creates a new one,
		// which must not be pinned at the old record.
		return os.Remove(filepath.Join(dir, checkpointFileName))
	}
	if err != nil {
		return err
	}
	defer f.Close()
	// Another process with raft.db open (bbolt holds a flock) must not
	// have its file rewritten under it.
	unlock, err := lockFile(f)
	if err != nil {
		// bbolt's own error for a file locked by another process.
		return fmt.Errorf("raft.db in %s is in use by another process (%v): %w", dir, err, bolterrors.ErrTimeout)
	}
	defer unlock()
	_, pageSize, _ := boltMeta(meta)
	newest := uint64(0)
	for slot := range 2 {
		p := make([]byte, boltMetaLen)
		if _, err := f.ReadAt(p, int64(slot*pageSize)); err != nil {
			continue
		}
		if t, _, ok := boltMeta(p); ok && t > newest {
			newest = t
		}
	}
	switch {
	case newest == txid:
		return nil
	case newest < txid:
		// A crash cannot do this: the checkpoint's meta page was on disk
		// before its record, and a later meta page written over it is
		// either there or not (its head, the part bbolt validates, lies
		// in one sector, which a disk writes whole). So this raft.db is
		// not the one the record was taken of.
		return fmt.Errorf("%w: raft.db in %s is at transaction %d, older than its checkpoint %d", ErrCorrupt, dir, newest, txid)
	}
	for slot := range 2 {
		p := append([]byte(nil), meta...)
		binary.NativeEndian.PutUint64(p, uint64(slot)) // the page id
		if _, err := f.WriteAt(p, int64(slot*pageSize)); err != nil {
			return fmt.Errorf("roll raft.db back to its checkpoint: %w", err)
		}
	}
	if err := fdatasync(f); err != nil {
		return fmt.Errorf("roll raft.db back to its checkpoint: %w", err)
	}
	return nil
}

// newCheckpointer opens raft.db.meta for db (in dir) and records a first
// checkpoint if it has none.
func newCheckpointer(dir string, db *bolt.DB) (*checkpointer, error) {
	c := &checkpointer{dbPath: filepath.Join(dir, "raft.db"), limit: ckptMmapBytes - ckptMmapMargin}
	var err error
	if c.src, err = os.Open(c.dbPath); err != nil {
		return nil, err
	}
	c.srcSync = newFileSyncer(c.src)
	if c.tooBig() {
		if err := c.enterSyncMode(dir, db); err != nil {
			c.close()
			return nil, err
		}
		return c, nil
	}
	if c.f, err = os.OpenFile(filepath.Join(dir, checkpointFileName), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		c.close()
		return nil, err
	}
	c.fSync = newFileSyncer(c.f)
	meta, txid, slot, err := readCheckpoint(c.f)
	if err != nil {
		c.close()
		return nil, err
	}
	if meta != nil {
		c.txid, c.slot = txid, slot
		// raft.db is at this checkpoint (rollbackToCheckpoint): pin it.
		if c.pin, err = db.Begin(false); err != nil {
			c.close()
			return nil, err
		}
		return c, nil
	}
	c.slot = 1 // the first record goes to slot 0
	if err := c.save(db); err != nil {
		c.close()
		return nil, err
	}
	if err := syncDir(dir); err != nil { // raft.db.meta's directory entry
		c.close()
		return nil, err
	}
	return c, nil
}

// save takes a checkpoint of db's latest committed transaction once the
// file is fdatasynced (the caller's job: see Node.checkpoint). With
// Node.writeMu (and Node.ckMu) held throughout.
func (c *checkpointer) save(db *bolt.DB) error {
	if c.syncMode {
		return nil
	}
	pin, meta, err := c.prepare(db)
	if err != nil || pin == nil {
		return err
	}
	slot, err := c.record(meta)
	if err != nil {
		c.kept = append(c.kept, pin) // see kept
		return err
	}
	c.adopt(pin, slot)
	return nil
}

// prepare pins db's latest committed transaction and reads back its meta
// page; a nil pin means nothing was committed since the last checkpoint.
// With Node.writeMu: no later commit can have written over that meta page
// yet (bbolt alternates between two), so it is read as the transaction
// wrote it, wherever the fdatasync that follows finds the file.
func (c *checkpointer) prepare(db *bolt.DB) (*bolt.Tx, []byte, error) {
	pin, err := db.Begin(false)
	if err != nil {
		return nil, nil, err
	}
	txid := uint64(pin.ID())
	if txid == c.txid && c.pin != nil {
		_ = pin.Rollback()
		return nil, nil, nil // nothing committed since the last checkpoint
	}
	_, pageSize, ok := boltMeta(c.readMeta(0))
	if !ok {
		_, pageSize, ok = boltMeta(c.readMeta(1))
	}
	meta := c.readMeta(int64(txid%2) * int64(pageSize))
	if t, _, mok := boltMeta(meta); !ok || !mok || t != txid {
		_ = pin.Rollback()
		return nil, nil, fmt.Errorf("%w: raft.db: meta page of transaction %d not found", ErrCorrupt, txid)
	}
	return pin, meta, nil
}

// record writes meta into the slot after the current one and fdatasyncs
// raft.db.meta; raft.db must be fdatasynced since meta's transaction was
// pinned. It touches neither raft.db nor the checkpointer's state, so it
// needs Node.ckMu but not Node.writeMu.
func (c *checkpointer) record(meta []byte) (int, error) {
	slot := 1 - c.slot
	rec := make([]byte, ckptSlotSize)
	copy(rec[4:], meta)
	binary.BigEndian.PutUint32(rec, crc32.Checksum(rec[4:4+boltMetaLen], crcTable))
	if _, err := c.f.WriteAt(rec, int64(slot*ckptSlotSize)); err != nil {
		return 0, fmt.Errorf("write %s: %w", checkpointFileName, err)
	}
	if err := c.fSync.datasync(); err != nil {
		return 0, fmt.Errorf("fdatasync %s: %w", checkpointFileName, err)
	}
	return slot, nil
}

// adopt makes pin, recorded in slot, the checkpoint and releases the
// previous one's pin. With Node.writeMu.
func (c *checkpointer) adopt(pin *bolt.Tx, slot int) {
	if c.pin != nil {
		_ = c.pin.Rollback()
	}
	c.pin, c.txid, c.slot = pin, uint64(pin.ID()), slot
}

// syncDB fdatasyncs raft.db (what bolt.DB.Sync does, through srcSync:
// the same file).
func (c *checkpointer) syncDB() error { return c.srcSync.datasync() }

// readMeta reads a meta page head of raft.db at off (nil on error).
func (c *checkpointer) readMeta(off int64) []byte {
	p := make([]byte, boltMetaLen)
	if _, err := c.src.ReadAt(p, off); err != nil {
		return nil
	}
	return p
}

// close releases the pin (bbolt's Close waits for open read transactions)
// and the files.
func (c *checkpointer) close() {
	if c == nil {
		return
	}
	if c.pin != nil {
		_ = c.pin.Rollback()
		c.pin = nil
	}
	for _, tx := range c.kept {
		_ = tx.Rollback()
	}
	c.kept = nil
	for _, s := range []*fileSyncer{c.srcSync, c.fSync} {
		if s != nil {
			s.close()
		}
	}
	for _, f := range []*os.File{c.src, c.f} {
		if f != nil {
			_ = f.Close()
		}
	}
	c.src, c.f, c.srcSync, c.fSync = nil, nil, nil, nil
}
