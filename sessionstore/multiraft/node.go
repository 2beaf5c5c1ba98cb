package multiraft

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Config configures a Node. Zero values take the defaults shown.
type Config struct {
	// Store is this node's store id (not 0).
	Store StoreID
	// Dir holds the node's WAL (wal/) and state machines (raft.db).
	Dir string
	// StateMachine is the replicated state (required).
	StateMachine StateMachine
	// Transport carries Raft messages to other nodes (required).
	Transport Transport

	// TickInterval is the Raft logical clock period: 50ms. One ticker per
	// node ticks every hosted group. A tick is cheap (no I/O, no message
	// unless a heartbeat or election is due), so a fine tick buys a short
	// election timeout; what costs is the heartbeat rate (HeartbeatTicks).
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks: 10 (500ms at 50ms;
	// raft randomizes it to [10, 20) ticks per replica, so a dead leader
	// is replaced 0.5-1s after its last heartbeat, well inside the 2s
	// failover budget of a store shard leader).
	ElectionTicks int
	// HeartbeatTicks is the heartbeat period in ticks: 2 (100ms at 50ms):
	// five heartbeats per election timeout, so a few late or lost ones on
	// a loaded machine do not depose a live leader, and the heartbeat rate
	// (one message per shard and follower, all of a node pair's in one
	// Transport.Send per tick) stays what it was with a 100ms tick.
	HeartbeatTicks int

	// CompactThreshold: a shard's log is compacted once it holds more than
	// this many entries up to its durable applied index: 4000. The log
	// since the last compaction is kept in memory (and in the WAL), so this
	// bounds the memory of a busy shard.
	CompactThreshold uint64
	// CompactRetain entries before the applied index survive a compaction,
	// so a follower slightly behind catches up from the log rather than by
	// snapshot: 1000 (capped below CompactThreshold).
	CompactRetain uint64
	// CompactThresholdBytes and CompactRetainBytes bound the same in bytes
	// of entry data: a log holding more than CompactThresholdBytes is
	// compacted (1 MiB), and at most CompactRetainBytes of the entries up
	// to the applied index survive (256 KiB). With large commands the
	// entry counts alone let each shard keep megabytes, in memory, in
	// every new WAL segment's checkpoint and in the replay at start.
	CompactThresholdBytes uint64
	CompactRetainBytes    uint64

	// MaxSizePerMsg bounds the entries in one append message: 1 MiB.
	MaxSizePerMsg uint64
	// MaxInflightMsgs bounds unacknowledged append messages per follower: 256.
	MaxInflightMsgs int
	// MaxUncommittedBytes bounds a leader's uncommitted log; beyond it
	// proposals are dropped (ErrProposalDropped): 64 MiB.
	MaxUncommittedBytes uint64

	// Logger receives raft's logs; the default drops debug and info.
	Logger raft.Logger

	// OnApplied, if set, is called on the applier goroutine (on the loop
	// for a restored snapshot, never concurrently) once entries of shard
	// up to index are applied (or a snapshot restored): the place to wake
	// readers waiting for new state, on every replica. A linearizable read
	// (Read, ReadIndex) then sees them: it waits for the applier's
	// transaction to commit, and has it commit (applier.go). It must not
	// block or call back into the Node.
	OnApplied func(shard uint32, index uint64, snapshot bool)

	// ReadIndexOnly makes every linearizable read take a ReadIndex round
	// (a heartbeat round to a quorum), never a leader lease (lease.go).
	ReadIndexOnly bool

	// StorageRetryInterval is how often a node that refuses work after a
	// failed write or fsync probes its disk to recover: 1s.
	StorageRetryInterval time.Duration

	// faults injects disk faults around commits (tests).
	faults *diskFaults
	// segmentBytes: the WAL starts a new segment past this size
	// (walSegmentBytes; tests make it small).
	segmentBytes int64
	// legacyWritePath: the loop persists every iteration itself (no WAL
	// writer: processSync), leaders' messages wait for their WAL append
	// too, and proposers are answered only once their entry's application
	// is durable here (without the optimizations of the write path;
	// benchmarks compare the two).
	legacyWritePath bool
	// applyLinger bounds how long the applier's transaction stays open
	// when nobody waits for it (applyTx): defaultApplyLinger.
	applyLinger time.Duration
}

func (c *Config) setDefaults() {
	if c.TickInterval == 0 {
		c.TickInterval = 50 * time.Millisecond
	}
	if c.ElectionTicks == 0 {
		c.ElectionTicks = 10
	}
	if c.applyLinger == 0 {
		c.applyLinger = defaultApplyLinger
	}
	if c.HeartbeatTicks == 0 {
		c.HeartbeatTicks = 2
	}
	if c.CompactThreshold == 0 {
		c.CompactThreshold = 4000
	}
	if c.CompactRetain == 0 {
		c.CompactRetain = 1000
	}
	if c.CompactRetain >= c.CompactThreshold {
		c.CompactRetain = c.CompactThreshold / 2
	}
	if c.CompactThresholdBytes == 0 {
		c.CompactThresholdBytes = 1 << 20
	}
	if c.CompactRetainBytes == 0 {
		c.CompactRetainBytes = 256 << 10
	}
	if c.CompactRetainBytes >= c.CompactThresholdBytes {
		c.CompactRetainBytes = c.CompactThresholdBytes / 2
	}
	if c.MaxSizePerMsg == 0 {
		c.MaxSizePerMsg = 1 << 20
	}
	if c.MaxInflightMsgs == 0 {
		c.MaxInflightMsgs = 256
	}
	if c.MaxUncommittedBytes == 0 {
		c.MaxUncommittedBytes = 64 << 20
	}
	if c.segmentBytes == 0 {
		c.segmentBytes = walSegmentBytes
	}
	if c.StorageRetryInterval == 0 {
		c.StorageRetryInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = quietLogger{prefix: fmt.Sprintf("multiraft store %d: ", c.Store)}
	}
}

// Stats are counters since Open.
type Stats struct {
	// Syncs counts group commits: WAL appends made durable by the WAL
	// writer (walwriter.go), or by the loop in an iteration with a
	// snapshot or conf change (each one write and one fdatasync, whatever
	// the number of shards, entries and loop iterations in it).
	Syncs uint64
	// SyncTime is the time spent in those commits.
	SyncTime time.Duration
	// ApplyCommits counts the applier's bbolt transactions (state machine
	// writes of any number of shards and iterations, not fsynced: see
	// checkpoint.go), ApplyTime the time spent applying entries into them
	// and committing them.
	ApplyCommits uint64
	ApplyTime    time.Duration
	// ApplyPages counts the pages those transactions wrote to raft.db
	// (bbolt writes every dirty page of a commit with its own pwrite): a
	// write costs the pages of its shard's path from the root down to
	// each bucket it touches, the driver of the apply's CPU.
	ApplyPages uint64
	// ApplyRounds counts the applier's rounds (each takes every batch
	// queued), ApplyQueueTime the time the oldest batch of each round
	// waited for the applier (busy with the previous round or a
	// checkpoint).
	ApplyRounds    uint64
	ApplyQueueTime time.Duration
	// Checkpoints counts raft.db's fsyncs (checkpoint.go), CheckpointTime
	// the time spent in them.
	Checkpoints    uint64
	CheckpointTime time.Duration
	// Proposals counts commands and conf changes accepted by Propose & co.
	Proposals uint64
	// Applied counts log entries applied (in the applier's open
	// transaction: an entry replayed after a storage failure counts
	// again).
	Applied uint64
	// SnapshotsApplied counts snapshots restored from a leader.
	SnapshotsApplied uint64
	// Sends counts Transport.Send calls; Messages the messages in them.
	Sends, Messages uint64
	// Reads counts ReadIndex calls; ReadIndexRounds the ReadIndex requests
	// handed to raft for them (concurrent reads of a shard share one, and
	// leases renew with one); LeaseReads the reads a leader's lease
	// answered without a round (lease.go).
	Reads, ReadIndexRounds, LeaseReads uint64
	// StorageFailures counts failed writes/fsyncs that made the node refuse
	// work; StorageRecoveries the in-process restarts after them.
	StorageFailures, StorageRecoveries uint64
	// Iterations counts the loop's iterations that had work (Readies
	// taken, or batches the WAL writer was done with, or both).
	Iterations uint64
	// Writes breaks down where the proposals this node led spent their
	// time; FollowerAppends how long this node took to acknowledge the
	// appends it received as a follower (timings.go).
	Writes          WriteTimings
	FollowerAppends FollowerTimings
}

// Add is s plus o, field by field (sums over nodes, for benchmarks).
func (s Stats) Add(o Stats) Stats {
	s.Syncs += o.Syncs
	s.SyncTime += o.SyncTime
	s.ApplyCommits += o.ApplyCommits
	s.ApplyTime += o.ApplyTime
	s.ApplyPages += o.ApplyPages
	s.ApplyRounds += o.ApplyRounds
	s.ApplyQueueTime += o.ApplyQueueTime
	s.Checkpoints += o.Checkpoints
	s.CheckpointTime += o.CheckpointTime
	s.Proposals += o.Proposals
	s.Applied += o.Applied
	s.SnapshotsApplied += o.SnapshotsApplied
	s.Sends += o.Sends
	s.Messages += o.Messages
	s.Reads += o.Reads
	s.ReadIndexRounds += o.ReadIndexRounds
	s.LeaseReads += o.LeaseReads
	s.StorageFailures += o.StorageFailures
	s.StorageRecoveries += o.StorageRecoveries
	s.Iterations += o.Iterations
	s.Writes = s.Writes.Add(o.Writes)
	s.FollowerAppends.Count += o.FollowerAppends.Count
	s.FollowerAppends.Time += o.FollowerAppends.Time
	return s
}

type counters struct {
	syncs, syncNanos, proposals, applied, snaps, sends, msgs atomic.Uint64
	storFails, storRecoveries                                atomic.Uint64
	applyCommits, applyNanos, applyPages                     atomic.Uint64
	reads, readRounds, leaseReads                            atomic.Uint64
	ckpts, ckptNanos                                         atomic.Uint64
	iters                                                    atomic.Uint64
	applyQueued, applyQueueNanos                             atomic.Uint64
	timings                                                  timingCounters
}

// Node hosts the replicas of many shards in one process: one WAL, one
// bbolt file for the state machines, one loop goroutine that processes the
// Ready of every group, one WAL writer goroutine that persists them, all
// those waiting with one fsync (group commit, walwriter.go), one applier
// goroutine, one ticker for all groups, and one Transport.
type Node struct {
	cfg Config
	// dbp is the open raft.db, nil while the node refuses work after a
	// storage failure (it is closed and reopened to recover).
	dbp atomic.Pointer[bolt.DB]
	// writeMu serializes raft.db's write transactions with the
	// checkpoints (checkpoint.go) and guards ck and every
	// replica's commitApplied.
	writeMu sync.Mutex
	ck      *checkpointer
	// apply is the applier's open transaction (applier.go).
	apply applyTx
	// applyWanted: a reader asked the applier to commit (pokeApplier).
	applyWanted atomic.Bool
	// ckMu serializes checkpoints (and the replacement of ck): the
	// periodic ones hold it, but not writeMu, over their fsyncs (see
	// checkpointConcurrent). Taken before writeMu.
	ckMu             sync.Mutex
	ckStopC, ckDoneC chan struct{}

	mu       sync.RWMutex
	replicas map[uint32]*replica

	loopReplicas []*replica // owned by the loop goroutine
	scanBuf      []*replica // owned by the loop goroutine (processReady)
	// outbox: messages queued by send for flushSends (loop goroutine).
	outbox outbox
	// wal is replaced by the loop goroutine only while the writer holds
	// no batch (walwriter.go).
	wal     *wal
	writer  *walWriter
	applier *applier

	readyC chan struct{}
	// dirty are the replicas that may have a Ready: something stepped,
	// proposed, read or advanced them since the loop last looked. The loop
	// looks only at those (HasReady is not free, and most iterations
	// concern a few of many shards), and at every replica when scanAll is
	// set (ticks, operations, recovery: whatever may touch any of them).
	dirtyMu sync.Mutex
	dirty   []*replica
	scanAll atomic.Bool
	opC     chan func()
	stopC   chan struct{}
	doneC   chan struct{}

	// leasesOn: leader leases may answer reads (lease.go, SetLeaseReads).
	leasesOn atomic.Bool

	failMu  sync.Mutex
	failErr error // permanent: ErrStopped or ErrStorageFailed
	storErr error // while refusing work after a failed write/fsync

	// compactDue: a checkpoint moved the durable applied indexes; the loop
	// looks at every replica's log, not only the busy ones.
	compactDue atomic.Bool

	closeOnce sync.Once
	idBase    uint64
	idSeq     atomic.Uint64
	stats     counters
}

// Open opens (or creates) the node's storage in cfg.Dir, verifies it,
// restarts every replica found there and starts the loop.
func Open(cfg Config) (*Node, error) {
	if cfg.Store == 0 {
		return nil, errors.New("multiraft: Config.Store must not be 0")
	}
	if cfg.StateMachine == nil || cfg.Transport == nil {
		return nil, errors.New("multiraft: Config.StateMachine and Config.Transport are required")
	}
	cfg.setDefaults()
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, err
	}
	db, ck, err := openDB(cfg.Dir)
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg:      cfg,
		replicas: map[uint32]*replica{},
		readyC:   make(chan struct{}, 1),
		opC:      make(chan func()),
		stopC:    make(chan struct{}),
		doneC:    make(chan struct{}),
		applier:  newApplier(),
		writer:   newWALWriter(),
		ckStopC:  make(chan struct{}),
		ckDoneC:  make(chan struct{}),
	}
	var rb [8]byte
	_, _ = rand.Read(rb[:])
	n.idBase = binary.BigEndian.Uint64(rb[:])
	n.dbp.Store(db)
	n.ck = ck
	if err := n.load(); err != nil {
		n.closeDB()
		n.wal.close()
		return nil, err
	}
	if err := cfg.Transport.Start((*nodeHandler)(n)); err != nil {
		n.closeDB()
		n.wal.close()
		return nil, err
	}
	replay := n.replayTargets()
	n.scanAll.Store(true)
	n.SetLeaseReads(true)
	go n.runApplier()
	go n.runCheckpoints()
	go n.runWALWriter()
	go n.run()
	if err := n.awaitReplay(replay); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// replayTarget is a replica and the commit index of its durable HardState
// when the node opened.
type replayTarget struct {
	r     *replica
	index uint64
}

func (n *Node) replayTargets() []replayTarget {
	ts := make([]replayTarget, 0, len(n.loopReplicas))
	for _, r := range n.loopReplicas {
		ts = append(ts, replayTarget{r, r.st.hs.GetCommit()})
	}
	return ts
}

// awaitReplay blocks until every replica in ts has re-applied the entries
// its durable HardState said were committed when the node opened. raft.db
// goes back to its last checkpoint at every open (checkpoint.go) and the
// loop replays the rest from the WAL; Open returns only after that, so a
// restarted node's local state is never older than what it had applied
// before it stopped (reads through ReadIndex would wait anyway; local views
// and the OnApplied watchers would not). Replay needs no peer, only the
// local disk: it ends when the loop has applied, the replica is destroyed,
// or the node fails or stops (then the error says so).
func (n *Node) awaitReplay(ts []replayTarget) error {
	for _, t := range ts {
		r := t.r
		r.mu.Lock()
		if r.appliedIx >= t.index || r.destroyed {
			r.mu.Unlock()
			continue
		}
		q := &readReq{index: t.index, ch: make(chan error, 1)}
		r.readWait = append(r.readWait, q)
		r.mu.Unlock()
		n.pokeApplier()
		var err error
		select {
		case err = <-q.ch:
		case <-n.doneC:
			err = n.stoppedErr()
		}
		if err != nil && !r.isDestroyed() {
			return fmt.Errorf("multiraft: store %d: replaying shard %d's log up to %d: %w", n.cfg.Store, r.shard, t.index, err)
		}
	}
	return nil
}

// openDB rolls raft.db back to its last checkpoint and opens it (see
// checkpoint.go).
func openDB(dir string) (*bolt.DB, *checkpointer, error) {
	if err := rollbackToCheckpoint(dir); err != nil {
		return nil, nil, fmt.Errorf("multiraft: open raft.db: %w", err)
	}
	db, err := bolt.Open(filepath.Join(dir, "raft.db"), 0o600, &bolt.Options{
		Timeout:        time.Second,
		NoFreelistSync: true, // rebuilt at open; halves the pages each commit writes
		FreelistType:   bolt.FreelistMapType,
		// Durability comes from checkpoints (checkpoint.go), whose pin
		// needs a mapping that never has to grow.
		NoSync:          true,
		InitialMmapSize: ckptMmapBytes,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("multiraft: open raft.db: %w", err)
	}
	ck, err := newCheckpointer(dir, db)
	if err != nil {
		_ = db.Close()
		return nil, nil, fmt.Errorf("multiraft: raft.db checkpoint: %w", err)
	}
	return db, ck, nil
}

// closeDB releases the checkpoint's pin (bbolt's Close waits for it) and
// closes raft.db.
func (n *Node) closeDB() error {
	n.ckMu.Lock()
	n.writeMu.Lock()
	n.dropApplyLocked() // bbolt's Close waits for an open transaction
	n.ck.close()
	n.ck = nil
	n.writeMu.Unlock()
	n.ckMu.Unlock()
	if db := n.dbp.Swap(nil); db != nil {
		return db.Close()
	}
	return nil
}

// db is the open raft.db, or nil while the node recovers from a storage
// failure.
func (n *Node) db() *bolt.DB { return n.dbp.Load() }

// load reads the state machine's replicas from raft.db and their logs from
// the WAL, verifies them, starts a new WAL segment with a checkpoint of
// them (which also leaves any torn tail behind) and starts the replicas.
// A raft.db of format 1 (the log in bbolt) is migrated to the WAL.
func (n *Node) load() error {
	type loaded struct {
		shard   uint32
		id      ReplicaID
		st      *raftStorage
		applied indexTerm
		cs      *pb.ConfState
		// snapshot: see fromWAL
		snapshot uint64
	}
	var all []*loaded
	legacy := false
	err := n.update("load", func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bktMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keyStore); v != nil {
			if len(v) != 4 || StoreID(binary.BigEndian.Uint32(v)) != n.cfg.Store {
				return fmt.Errorf("multiraft: %s belongs to store %x, not %d", n.cfg.Dir, v, n.cfg.Store)
			}
			f := meta.Get(keyFormat)
			switch {
			case len(f) == 1 && f[0] == 1:
				legacy = true
			case len(f) == 1 && f[0] == formatWAL:
			default:
				return fmt.Errorf("%w: unknown raft.db format %x", ErrCorrupt, f)
			}
		} else {
			if err := meta.Put(keyStore, u32key(uint32(n.cfg.Store))); err != nil {
				return err
			}
			if err := meta.Put(keyFormat, []byte{formatWAL}); err != nil {
				return err
			}
		}
		shards, err := tx.CreateBucketIfNotExists(bktShards)
		if err != nil {
			return err
		}
		return shards.ForEachBucket(func(k []byte) error {
			if len(k) != 4 {
				return fmt.Errorf("%w: bad shard key %x", ErrCorrupt, k)
			}
			shard := binary.BigEndian.Uint32(k)
			b := shards.Bucket(k)
			if legacy {
				id, st, applied, err := loadReplica(b, shard)
				if err != nil {
					return err
				}
				all = append(all, &loaded{shard: shard, id: id, st: st, applied: applied, cs: st.cs})
				return nil
			}
			rv := b.Get(keyReplica)
			if len(rv) != 8 {
				return fmt.Errorf("%w: shard %d: missing replica id", ErrCorrupt, shard)
			}
			l := &loaded{shard: shard, id: ReplicaID(binary.BigEndian.Uint64(rv)), cs: &pb.ConfState{}}
			if v := b.Get(keySnapshot); len(v) == 8 {
				l.snapshot = binary.BigEndian.Uint64(v)
			}
			if v := b.Get(keyApplied); v != nil {
				if l.applied, l.cs, err = decodeIndexTerm(v); err != nil {
					return fmt.Errorf("%w: shard %d: applied: %v", ErrCorrupt, shard, err)
				}
			}
			all = append(all, l)
			return nil
		})
	})
	if err != nil {
		return err
	}
	walDir := filepath.Join(n.cfg.Dir, walDirName)
	logs, lastSeq, err := replayWAL(walDir)
	if err != nil {
		return err
	}
	cp := &wal{}
	for _, l := range all {
		if !legacy {
			wl := logs[l.shard]
			if wl == nil || wl.id != l.id {
				return fmt.Errorf("%w: shard %d: no log in %s for replica %v", ErrCorrupt, l.shard, walDir, l.id)
			}
			if l.st, err = fromWAL(l.shard, wl, l.applied, l.cs, l.snapshot); err != nil {
				return err
			}
		}
		if err := l.st.checkpoint(cp, l.id); err != nil {
			return err
		}
	}
	w, err := createSegment(walDir, lastSeq+1, cp.buf, n.cfg.faults)
	if err != nil {
		return n.storageFailed("WAL checkpoint", err)
	}
	n.wal.close()
	n.wal = w
	if legacy {
		// The logs are in the WAL now (durable): drop them from raft.db.
		err := n.update("WAL migration", func(tx *bolt.Tx) error {
			for _, l := range all {
				b := shardBucket(tx, l.shard)
				if err := b.DeleteBucket(bktLog); err != nil {
					return err
				}
				for _, k := range [][]byte{keyHS, keyTrunc} {
					if err := b.Delete(k); err != nil {
						return err
					}
				}
			}
			return tx.Bucket(bktMeta).Put(keyFormat, []byte{formatWAL})
		})
		if err != nil {
			return err
		}
	}
	for _, l := range all {
		if err := n.startReplica(l.shard, l.id, l.st, l.applied, true); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) startReplica(shard uint32, id ReplicaID, st *raftStorage, applied indexTerm, fromDisk bool) error {
	st.db, st.sm = n.db(), n.cfg.StateMachine
	var guard time.Time
	if fromDisk {
		// It may have acknowledged a leader's round just before it
		// stopped: see lease.go.
		guard = time.Now().Add(time.Duration(n.cfg.ElectionTicks) * n.cfg.TickInterval)
	}
	r := &replica{
		voteGuard:     guard,
		n:             n,
		shard:         shard,
		id:            id,
		st:            st,
		smApplied:     applied,
		smCS:          proto.CloneOf(st.cs),
		commitApplied: applied,
		appliedIx:     applied.index,
		durApplied:    applied,
		leaderCh:      make(chan struct{}),
		proposals:     map[uint64]*proposal{},
		reads:         map[uint64][]*readReq{},
	}
	rn, err := raft.NewRawNode(&raft.Config{
		ID:                        uint64(id),
		ElectionTick:              n.cfg.ElectionTicks,
		HeartbeatTick:             n.cfg.HeartbeatTicks,
		Storage:                   st,
		Applied:                   applied.index,
		MaxSizePerMsg:             n.cfg.MaxSizePerMsg,
		MaxInflightMsgs:           n.cfg.MaxInflightMsgs,
		MaxUncommittedEntriesSize: n.cfg.MaxUncommittedBytes,
		// CheckQuorum: a leader that cannot hear a quorum steps down after
		// an election timeout, so a partitioned minority leader stops
		// accepting proposals. PreVote: a replica coming back from a
		// partition does not bump the term and depose a healthy leader.
		CheckQuorum: true,
		PreVote:     true,
		// ReadIndex, not leases: a lease read trusts that no other leader
		// can have been elected within the lease, i.e. bounded clock drift
		// and bounded pauses. A stopped (SIGSTOP) or GC-paused leader
		// violates that and would serve stale reads; ReadIndex confirms
		// leadership with a quorum round for every read batch and assumes
		// nothing about clocks.
		ReadOnlyOption: raft.ReadOnlySafe,
		Logger:         n.cfg.Logger,
		// A follower answers NotLeaderError with a hint instead of
		// forwarding, so the caller's request goes to the leader directly
		// and every proposal is tracked by the replica that accepted it.
		DisableProposalForwarding: true,
		StepDownOnRemoval:         true,
	})
	if err != nil {
		return err
	}
	r.rn = rn
	n.mu.Lock()
	n.replicas[shard] = r
	n.mu.Unlock()
	n.loopReplicas = append(n.loopReplicas, r)
	return nil
}

// Store is this node's store id.
func (n *Node) Store() StoreID { return n.cfg.Store }

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	return Stats{
		Syncs:            n.stats.syncs.Load(),
		SyncTime:         time.Duration(n.stats.syncNanos.Load()),
		ApplyCommits:     n.stats.applyCommits.Load(),
		ApplyTime:        time.Duration(n.stats.applyNanos.Load()),
		ApplyPages:       n.stats.applyPages.Load(),
		ApplyRounds:      n.stats.applyQueued.Load(),
		ApplyQueueTime:   time.Duration(n.stats.applyQueueNanos.Load()),
		Checkpoints:      n.stats.ckpts.Load(),
		CheckpointTime:   time.Duration(n.stats.ckptNanos.Load()),
		Proposals:        n.stats.proposals.Load(),
		Applied:          n.stats.applied.Load(),
		SnapshotsApplied: n.stats.snaps.Load(),
		Sends:            n.stats.sends.Load(),
		Messages:         n.stats.msgs.Load(),
		Reads:            n.stats.reads.Load(),
		ReadIndexRounds:  n.stats.readRounds.Load(),
		LeaseReads:       n.stats.leaseReads.Load(),

		StorageFailures:   n.stats.storFails.Load(),
		StorageRecoveries: n.stats.storRecoveries.Load(),
		Iterations:        n.stats.iters.Load(),
		Writes:            n.stats.timings.writes(),
		FollowerAppends:   n.stats.timings.follower(),
	}
}

// StorageErr is nil while the node's storage works, else the error (wrapping
// ErrStorageUnavailable and the cause) with which it refuses writes and
// reads until a probe write and fsync succeed again. For the
// erlmcp_store_storage_healthy gauge and readiness.
func (n *Node) StorageErr() error {
	if err := n.err(); err != nil && !errors.Is(err, ErrStopped) {
		return err
	}
	return nil
}

// Close stops the node. Calls in flight fail with ErrStopped (for a
// proposal the outcome is unknown). The transport is the caller's to close.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		close(n.stopC)
		<-n.doneC
		n.applier.stop()
		close(n.ckStopC)
		<-n.ckDoneC
		n.fail(ErrStopped)
		n.wal.close()
	})
	// No checkpoint: a restart rolls back to the last one and replays,
	// crash or not (see checkpoint.go).
	return n.closeDB()
}

// err is nil while the node works, else why it stopped or why it refuses
// work for now.
func (n *Node) err() error {
	n.failMu.Lock()
	defer n.failMu.Unlock()
	if n.failErr != nil {
		return n.failErr
	}
	return n.storErr
}

// fail stops the node for good: every waiter is answered with err and no
// replica steps another message.
func (n *Node) fail(err error) {
	n.failMu.Lock()
	if n.failErr == nil {
		n.failErr = err
	}
	err = n.failErr
	n.failMu.Unlock()
	n.mu.RLock()
	reps := make([]*replica, 0, len(n.replicas))
	for _, r := range n.replicas {
		reps = append(reps, r)
	}
	n.mu.RUnlock()
	for _, r := range reps {
		r.mu.Lock()
		r.failAll(err)
		r.mu.Unlock()
	}
}

// signal wakes the loop to look at every replica.
func (n *Node) signal() {
	n.scanAll.Store(true)
	n.wake()
}

// signalReplica wakes the loop to look at r (it was stepped, proposed to,
// read from or advanced). r.mu may be held.
func (n *Node) signalReplica(r *replica) {
	n.markDirty(r)
	n.wake()
}

func (n *Node) markDirty(r *replica) {
	n.dirtyMu.Lock()
	if !r.dirty {
		r.dirty = true
		n.dirty = append(n.dirty, r)
	}
	n.dirtyMu.Unlock()
}

// wake wakes the loop without telling it what changed.
func (n *Node) wake() {
	select {
	case n.readyC <- struct{}{}:
	default:
	}
}

// candidates are the replicas the loop iteration looks at: every one after
// scanAll, else the dirty ones. buf is reused between iterations.
func (n *Node) candidates(buf []*replica) []*replica {
	all := n.scanAll.Swap(false)
	n.dirtyMu.Lock()
	for _, r := range n.dirty {
		r.dirty = false
		if !all {
			buf = append(buf, r)
		}
	}
	clear(n.dirty)
	n.dirty = n.dirty[:0]
	n.dirtyMu.Unlock()
	if all {
		buf = append(buf, n.loopReplicas...)
	}
	return buf
}

func (n *Node) newID() uint64 { return n.idBase + n.idSeq.Add(1) }

func (n *Node) replica(shard uint32) (*replica, error) {
	if err := n.err(); err != nil {
		return nil, err
	}
	n.mu.RLock()
	r := n.replicas[shard]
	n.mu.RUnlock()
	if r == nil {
		return nil, fmt.Errorf("%w: shard %d", ErrShardNotFound, shard)
	}
	return r, nil
}

// onLoop runs fn on the loop goroutine, between two Ready iterations.
func (n *Node) onLoop(fn func() error) error {
	errc := make(chan error, 1)
	op := func() {
		// Checked on the loop: no operation runs while the node is
		// refusing work after a storage failure.
		if err := n.err(); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}
	select {
	case n.opC <- op:
	case <-n.doneC:
		return n.stoppedErr()
	}
	return <-errc
}

func (n *Node) stoppedErr() error {
	if err := n.err(); err != nil {
		return err
	}
	return ErrStopped
}

// run is the node's loop: the single ticker for all groups, and Ready
// processing for all groups.
func (n *Node) run() {
	defer close(n.doneC)
	defer n.stopWALWriter()
	t := time.NewTicker(n.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stopC:
			return
		case <-t.C:
			for _, r := range n.loopReplicas {
				r.mu.Lock()
				if !r.destroyed {
					r.rn.Tick()
				}
				r.mu.Unlock()
			}
			n.scanAll.Store(true)
		case <-n.readyC:
		case <-n.writer.doneC:
		case op := <-n.opC:
			// Operations write the WAL and change the replicas without a
			// Ready: none may be in flight. A failed batch makes the op
			// refuse (n.err) and the recovery follow.
			_ = n.drainWrites()
			n.flushSends()
			op()
			n.scanAll.Store(true)
		}
		if n.refusing() {
			// An operation's commit failed.
			if !n.recoverStorage() {
				return
			}
			n.scanAll.Store(true)
			continue
		}
		err := n.processReady()
		if err == nil {
			n.flushSends()
		}
		if err == nil && n.compactDue.Swap(false) {
			// A checkpoint made more of the state durable: logs of shards
			// that have gone quiet since are compacted too.
			for _, r := range n.loopReplicas {
				if !r.isDestroyed() {
					n.maybeCompact(r)
				}
			}
		}
		if err != nil {
			if !n.refusing() {
				// Not the disk: the state machine or the log itself is
				// broken; carrying on could diverge from the group.
				n.fail(fmt.Errorf("%w: %v", ErrStorageFailed, err))
				return
			}
			if !n.recoverStorage() {
				return
			}
			n.scanAll.Store(true)
		}
	}
}

// readyWork is one replica's share of a loop iteration.
type readyWork struct {
	r  *replica
	rd raft.Ready
	// sync: the Ready must be durable before its messages (but early
	// ones) and its Advance: new entries, a snapshot, a new term or vote.
	sync bool
	// early: the messages may go out before the WAL append is durable
	// (see processSync).
	early bool
	// snapIndex: the index of the snapshot restored, 0 if none.
	snapIndex uint64
	// stable is how many of rd.CommittedEntries are durable in this
	// node's WAL already (see applyEarly).
	stable int
	// placed are the proposals whose entries this Ready appends, committed
	// those it commits (for WriteTimings); appRecv is when the first
	// append this Ready persists arrived (a follower's, for
	// FollowerTimings).
	placed, committed []*proposal
	appRecv           time.Time
}

type applyResult struct {
	id   uint64
	data []byte
	// conf: a conf change, answered only after Advance (raft refuses the
	// next conf change until it has seen this one applied).
	conf bool
}

// processReady finishes the batches the WAL writer has made durable, then
// takes the Ready of every replica that has one and is not in flight.
// Those that need an fsync go to the writer, the others are finished at
// once (processPipelined, walwriter.go); an iteration with a snapshot or
// a conf change waits for the writer and runs the synchronous path
// (processSync), as does legacyWritePath.
//
// A failed write or fsync returns an error and the node refuses work (see
// storagefail.go) without sending or acknowledging anything else from the
// batches concerned.
func (n *Node) processReady() error {
	finished, err := n.finishSynced()
	if err != nil {
		return err
	}
	var work []*readyWork
	// needSync: entries, a snapshot or a new term or vote must be durable
	// before the Ready's messages and acknowledgements. A HardState
	// that only moves the commit index is written with the next append
	// but needs no fsync of its own (a restarted replica learns the
	// commit index again from the leader; see fromWAL): that saves an
	// fsync per write on every node, as etcd does.
	needSync, needWrite, snaps, confs := false, false, false, false
	n.scanBuf = n.candidates(n.scanBuf[:0])
	defer clear(n.scanBuf) // no replica kept alive by the buffer
	now := time.Now()
	for _, r := range n.scanBuf {
		r.mu.Lock()
		if !r.destroyed {
			r.issueReads()
		}
		// In flight: its previous Ready is not advanced yet; finishing
		// it marks the replica dirty again.
		if r.destroyed || r.inflight || !r.rn.HasReady() {
			r.mu.Unlock()
			continue
		}
		w := &readyWork{r: r, rd: r.rn.Ready()}
		r.noLeaseAfterTimeoutNow(w.rd.Messages)
		r.placeProposals(w, now)
		r.stampCommitted(w, now)
		if ce := w.rd.CommittedEntries; len(ce) > 0 {
			// Before published: the storage's log is what the WAL holds.
			_, last, _ := r.st.bounds()
			w.stable = durablePrefix(ce, last, w.rd.Entries)
		}
		if len(w.rd.Entries) > 0 && !r.appRecv.IsZero() {
			w.appRecv, r.appRecv = r.appRecv, time.Time{}
		}
		w.early = !n.cfg.legacyWritePath && r.rn.BasicStatus().RaftState == raft.StateLeader &&
			raft.IsEmptySnap(w.rd.Snapshot) && r.st.sameTermVote(w.rd.HardState)
		r.mu.Unlock()
		if !raft.IsEmptySnap(w.rd.Snapshot) {
			snaps = true
		}
		if !raft.IsEmptySnap(w.rd.Snapshot) || len(w.rd.Entries) > 0 || !r.st.sameTermVote(w.rd.HardState) {
			w.sync = true
			needSync = true
		}
		if !raft.IsEmptyHardState(w.rd.HardState) {
			needWrite = true
		}
		for _, e := range w.rd.CommittedEntries {
			if e.GetType() != pb.EntryNormal {
				confs = true
			}
		}
		work = append(work, w)
	}
	if finished || len(work) > 0 {
		n.stats.iters.Add(1)
	}
	if len(work) == 0 {
		return nil
	}
	if snaps || confs || n.cfg.legacyWritePath {
		// The restore must not overlap appends in flight, and the
		// synchronous path owns the WAL and raft.Storage while it runs.
		if err := n.drainWrites(); err != nil {
			return err
		}
		return n.processSync(work, needSync, needWrite, snaps, confs)
	}
	return n.processPipelined(work, needWrite)
}

// processPipelined handles an iteration without snapshot or conf change
// (walwriter.go): the Readies that need an fsync have their records added
// to the WAL, their early messages sent and their durable committed
// entries applied (applyEarly), and go to the WAL writer; the others are
// finished now, their commit-index HardStates written (not fsynced) first.
func (n *Node) processPipelined(work []*readyWork, needWrite bool) error {
	var synced, now []*readyWork
	for _, w := range work {
		if err := n.persist(w); err != nil {
			return fmt.Errorf("shard %d: %w", w.r.shard, err)
		}
		if w.sync {
			synced = append(synced, w)
		} else {
			// Nothing new in its log: every committed entry is durable
			// here and goes with the Ready's finish.
			w.stable = 0
			now = append(now, w)
		}
	}
	if len(synced) > 0 {
		// See processSync for why a leader's messages may go first.
		n.send(synced, func(w *readyWork) bool { return w.early })
		n.applyEarly(synced)
		n.handOver(&syncBatch{work: synced})
	}
	if needWrite {
		// Written now, not fsynced (see processSync); this writes the
		// batch's records too, which the writer's fsync covers later.
		if err := n.wal.write(n.cfg.faults); err != nil {
			return n.storageFailed("WAL write", err)
		}
	}
	if len(now) > 0 {
		n.finish(now, false)
	}
	if n.wal.grown() > n.cfg.segmentBytes {
		// The new segment's checkpoint holds raft.Storage's logs: the
		// batches in flight must be in them first.
		if err := n.drainWrites(); err != nil {
			return err
		}
		if err := n.rotateWAL(); err != nil {
			return err
		}
	}
	return nil
}

// finish completes Readies whose records are durable (synced: the WAL
// writer has sent their messages, a leader's early ones went before) or
// that needed no fsync (their messages are sent now, one Send per
// destination store): the new log goes to raft.Storage, the committed
// entries not handed yet go to the applier, then Advance.
func (n *Node) finish(work []*readyWork, synced bool) {
	for _, w := range work {
		w.r.published(w)
	}
	if !synced {
		n.send(work, func(*readyWork) bool { return true })
	}
	batch := n.committedBatch(work)
	if len(batch.items) > 0 {
		n.applier.enqueue(&batch)
	}
	for _, w := range work {
		w.r.advance(w)
		w.r.inflight = false
		// Advance may have produced more work (e.g. the leader's own
		// append acknowledgement advancing the commit index).
		n.markDirty(w.r)
	}
	n.wake()
}

// committedBatch is the applier's share of work: the committed entries not
// handed over yet (early), stamped for the write-stage timings.
func (n *Node) committedBatch(work []*readyWork) applyBatch {
	now := time.Now()
	var batch applyBatch
	for _, w := range work {
		if !w.appRecv.IsZero() {
			n.stats.timings.followerCount.Add(1)
			n.stats.timings.followerNanos.Add(nanos(now.Sub(w.appRecv)))
		}
		for _, p := range w.committed {
			if p.handed.IsZero() {
				p.handed = now
			}
		}
		if ents := w.rd.CommittedEntries[w.stable:]; len(ents) > 0 {
			batch.items = append(batch.items, applyItem{r: w.r, ents: ents})
		}
	}
	return batch
}

// processSync handles an iteration the old way, with no batch in flight,
// in the order raft's Ready contract demands:
//
//  1. the incoming snapshot is restored into the state machine (after the
//     applier has finished what it had), then one WAL append persists,
//     for all groups, the snapshot's reset, the new entries (replacing any
//     conflicting tail) and the HardState; its fdatasync is the single
//     fsync of the iteration (group commit);
//  2. only after that, the new log is handed to raft.Storage and messages
//     are sent (grouped per destination store: one Transport.Send per
//     store), except a leader's, which go out before the append when its
//     term and vote did not change;
//  3. the committed entries go to the applier (see applier.go), then
//     Advance (after a conf change, once the applier has applied it);
//     logs past the compaction threshold are compacted, and the WAL
//     starts a new segment when the current one is full.
func (n *Node) processSync(work []*readyWork, needSync, needWrite, snaps, confs bool) error {
	// Every committed entry goes to the applier after the fsync: early
	// application (applyEarly) belongs to the pipelined path, and this one
	// runs with a snapshot or a conf change in the iteration (which must
	// be restored or applied in order) or with legacyWritePath.
	for _, w := range work {
		w.stable = 0
	}
	if snaps {
		// The state machine must not be written under the restore.
		n.applier.barrier()
		if err := n.err(); err != nil {
			return err
		}
	}
	if !needSync && needWrite {
		for _, w := range work {
			if err := n.persist(w); err != nil {
				return fmt.Errorf("shard %d: %w", w.r.shard, err)
			}
		}
		// Written now, not fsynced: a commit index in the file is what
		// tells a restart that the log lost a tail it had acknowledged
		// (verify), and raft.db's applied index, which used to tell it
		// too, may be a checkpoint behind (checkpoint.go).
		if err := n.wal.write(n.cfg.faults); err != nil {
			return n.storageFailed("WAL write", err)
		}
	}
	if needSync {
		// A leader's messages go out before its own append is durable,
		// so the followers' fsyncs overlap the leader's (Raft thesis
		// §10.2.1; raft's Ready contract allows sending while the same
		// batch's entries are persisted). Safe because the leader counts
		// its own log for a quorum only after Advance, i.e. after this
		// append, and a follower acknowledges only what it persisted
		// (its messages wait for the append). Not when the term or vote
		// changed in this batch: those must be durable before anything
		// that depends on them leaves the node.
		n.send(work, func(w *readyWork) bool { return w.early })
		n.flushSends()
		t0 := time.Now()
		for _, w := range work {
			if err := n.persist(w); err != nil {
				return fmt.Errorf("shard %d: %w", w.r.shard, err)
			}
		}
		if err := n.walSync("WAL append"); err != nil {
			return err
		}
		t1 := time.Now()
		n.stats.syncs.Add(1)
		n.stats.syncNanos.Add(uint64(t1.Sub(t0)))
		for _, w := range work {
			for _, p := range w.placed {
				p.durable = t1
			}
		}
	}
	for _, w := range work {
		w.r.published(w)
	}
	if n.cfg.OnApplied != nil {
		for _, w := range work {
			if w.snapIndex > 0 {
				n.cfg.OnApplied(w.r.shard, w.snapIndex, true)
			}
		}
	}
	n.send(work, func(w *readyWork) bool { return !needSync || !w.early })
	n.flushSends()
	batch := n.committedBatch(work)
	if len(batch.items) > 0 {
		if confs {
			batch.done = make(chan struct{})
		}
		n.applier.enqueue(&batch)
		if confs {
			select {
			case <-batch.done:
			case <-n.applier.doneC:
			}
		}
	}
	for _, w := range work {
		w.r.advance(w)
	}
	// Compaction follows the durable applied index, which only a
	// checkpoint moves: run() compacts after one (compactDue).
	if n.wal.grown() > n.cfg.segmentBytes {
		if err := n.rotateWAL(); err != nil {
			return err
		}
	}
	// Advance may have produced more work (e.g. the leader's own append
	// acknowledgement advancing the commit index).
	for _, w := range work {
		n.markDirty(w.r)
	}
	n.wake()
	return nil
}

// durablePrefix is how many of committed are durable in this node's WAL
// already: those up to last (the WAL's last index before this Ready) and
// before the first of the Ready's new entries, which replace the WAL's
// from there (a follower's log truncated by a new leader: the committed
// entries from that index on are the new ones, not yet durable, though
// the WAL holds others at the same indexes).
func durablePrefix(committed []*pb.Entry, last uint64, entries []*pb.Entry) int {
	if len(entries) > 0 {
		last = min(last, entries[0].GetIndex()-1)
	}
	n := 0
	for n < len(committed) && committed[n].GetIndex() <= last {
		n++
	}
	return n
}

// applyEarly hands the applier the committed entries that are durable in
// this node's WAL already, when their Ready goes to the WAL writer (it runs
// only in processPipelined), and marks them handed (w.stable stays what
// was handed: the rest goes when the batch is durable). Without it an
// answer waited for the fsync of whatever other shards appended in the
// same iteration: at 16 clients a whole extra fsync per write.
//
// Safe, as etcd applies alongside its WAL writes: the entries are
// committed (durable on a quorum) and durable here, so a crash after the
// apply replays them from this node's WAL (raft.db may then hold an
// applied index past the WAL's durable commit index, which fromWAL
// accepts for entries the log holds). For a leader every committed entry
// is durable here (raft counts the leader's own log for a quorum only
// after Advance); a follower may learn of commits of entries that arrive
// in this very Ready, and those wait. Never with a snapshot in the
// iteration (it must be restored first) nor with a conf change (the loop
// waits for its application before Advance): such an iteration takes
// processSync, which applies everything after its fsync.
func (n *Node) applyEarly(work []*readyWork) {
	var batch applyBatch
	var t time.Time
	for _, w := range work {
		if w.stable == 0 {
			continue
		}
		ents := w.rd.CommittedEntries[:w.stable]
		batch.items = append(batch.items, applyItem{r: w.r, ents: ents})
		if len(w.committed) > 0 && t.IsZero() {
			t = time.Now()
		}
		for _, p := range w.committed {
			if p.index <= ents[len(ents)-1].GetIndex() {
				p.handed = t
			}
		}
	}
	if len(batch.items) > 0 {
		n.applier.enqueue(&batch)
	}
}

// persist adds w's snapshot (restored into the state machine first: see
// wal.go), entries and HardState to the WAL's pending append.
func (n *Node) persist(w *readyWork) error {
	r, rd := w.r, w.rd
	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := n.restoreSnapshot(w, rd.Snapshot); err != nil {
			return err
		}
	}
	// The WAL writer may be writing the pending records meanwhile.
	n.wal.mu.Lock()
	defer n.wal.mu.Unlock()
	if !raft.IsEmptySnap(rd.Snapshot) {
		md := rd.Snapshot.GetMetadata()
		n.wal.addReset(r.shard, r.id, indexTerm{md.GetIndex(), md.GetTerm()})
	}
	if len(rd.Entries) > 0 {
		if err := n.wal.addEntries(r.shard, r.id, rd.Entries); err != nil {
			return err
		}
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		if err := n.wal.addHardState(r.shard, r.id, rd.HardState); err != nil {
			return err
		}
	}
	return nil
}

// walSync makes the pending WAL records durable; a failure makes the node
// refuse work.
func (n *Node) walSync(what string) error {
	if n.wal == nil {
		return n.stoppedErr()
	}
	if err := n.wal.sync(n.cfg.faults); err != nil {
		return n.storageFailed(what, err)
	}
	return nil
}

// maybeCompact drops r's log entries that the state machine holds durably
// once there are more than CompactThreshold of them, keeping
// CompactRetain for followers slightly behind. The WAL record goes with the
// next append; losing it only means a longer log after a restart.
func (n *Node) maybeCompact(r *replica) { n.compact(r, false) }

// compact drops r's log entries up to its durable applied index less the
// retained ones (CompactRetain, CompactRetainBytes): when the log is over
// a threshold (entries up to the applied index, or bytes), or always with
// force (a new WAL segment's checkpoint is about to copy the log).
func (n *Node) compact(r *replica, force bool) {
	r.mu.Lock()
	applied := r.durApplied
	r.mu.Unlock()
	first, _, _ := r.st.bounds()
	if applied.index < first {
		return
	}
	if !force && applied.index-(first-1) <= n.cfg.CompactThreshold && r.st.logBytes() <= n.cfg.CompactThresholdBytes {
		return
	}
	to := r.st.retainFrom(applied.index, n.cfg.CompactRetain, n.cfg.CompactRetainBytes)
	if to < first {
		return
	}
	it := indexTerm{to, r.st.termAt(to)}
	// Safe with r in flight: its durable applied index is in the log
	// raft.Storage holds already, before the Ready's new entries.
	n.wal.mu.Lock()
	n.wal.addCompact(r.shard, r.id, it)
	n.wal.mu.Unlock()
	r.st.compactTo(it)
}

// rotateWAL starts a new segment with a checkpoint of every replica's log
// and deletes the older ones.
func (n *Node) rotateWAL() error {
	cp := &wal{}
	for _, r := range n.loopReplicas {
		// The checkpoint copies the log: only what compaction would keep.
		n.compact(r, true)
		if err := r.st.checkpoint(cp, r.id); err != nil {
			return err
		}
	}
	w, err := createSegment(n.wal.dir, n.wal.seq+1, cp.buf, n.cfg.faults)
	if err != nil {
		return n.storageFailed("WAL segment", err)
	}
	n.wal.close()
	n.wal = w
	return nil
}

// restoreSnapshot replaces the shard's state machine with the snapshot's,
// durably, before its WAL reset is written (see fromWAL for a crash in
// between).
func (n *Node) restoreSnapshot(w *readyWork, snap *pb.Snapshot) error {
	md := snap.GetMetadata()
	it := indexTerm{md.GetIndex(), md.GetTerm()}
	err := n.update("snapshot restore", func(tx *bolt.Tx) error {
		b := shardBucket(tx, w.r.shard)
		if b == nil {
			return ErrShardNotFound
		}
		for _, name := range [][]byte{bktSM, bktLog} {
			if err := b.DeleteBucket(name); err != nil && !errors.Is(err, bolterrors.ErrBucketNotFound) {
				return err
			}
		}
		sm, err := b.CreateBucket(bktSM)
		if err != nil {
			return err
		}
		if err := n.cfg.StateMachine.Restore(sm, w.r.shard, bytes.NewReader(snap.GetData())); err != nil {
			return fmt.Errorf("state machine restore: %w", err)
		}
		av, err := encodeIndexTerm(it, md.GetConfState())
		if err != nil {
			return err
		}
		if err := b.Put(keySnapshot, u64key(it.index)); err != nil {
			return err
		}
		// Counted before the commit: readers of the bucket may see the
		// restored state while the checkpoint's fsync runs.
		n.stats.snaps.Add(1)
		w.r.commitApplied = it // under writeMu (update)
		return b.Put(keyApplied, av)
	})
	if err != nil {
		return err
	}
	w.r.smApplied, w.r.smCS = it, proto.CloneOf(md.GetConfState())
	w.snapIndex = it.index
	return nil
}

// send queues the messages of the replicas for which which(w) holds for
// flushSends. Loop goroutine.
func (n *Node) send(work []*readyWork, which func(*readyWork) bool) {
	n.outbox.add(work, which)
}

// flushSends hands the queued messages to the transport, one Send per
// destination store: heartbeats and appends of all shards for a peer
// travel together, and so do those of the Readies a loop turn finishes
// (the Readies needing no fsync) and the leaders' early appends. Loop
// goroutine.
func (n *Node) flushSends() { n.flush(n.outbox) }

// outbox gathers messages per destination store.
type outbox map[StoreID][]ShardMessage

// add queues the messages of the replicas for which which(w) holds.
func (o *outbox) add(work []*readyWork, which func(*readyWork) bool) {
	for _, w := range work {
		if !which(w) {
			continue
		}
		for _, m := range w.rd.Messages {
			if *o == nil {
				*o = outbox{}
			}
			to := ReplicaID(m.GetTo()).Store()
			(*o)[to] = append((*o)[to], ShardMessage{Shard: w.r.shard, Message: m})
		}
	}
}

// flush hands o's messages to the transport, one Send per store, and
// empties o (the slices are the transport's now). Safe on any goroutine:
// Transport.Send is.
func (n *Node) flush(o outbox) {
	for to, msgs := range o {
		n.stats.sends.Add(1)
		n.stats.msgs.Add(uint64(len(msgs)))
		n.cfg.Transport.Send(to, msgs)
	}
	clear(o)
}

// nodeHandler is the Node's Handler for its Transport.
type nodeHandler Node

func (h *nodeHandler) lookup(m ShardMessage) *replica {
	n := (*Node)(h)
	n.mu.RLock()
	r := n.replicas[m.Shard]
	n.mu.RUnlock()
	if r == nil || uint64(r.id) != m.Message.GetTo() {
		return nil // not hosted here (yet or any more), or a stale incarnation
	}
	return r
}

func (h *nodeHandler) HandleMessages(from StoreID, msgs []ShardMessage) {
	n := (*Node)(h)
	stepped := false
	for _, m := range msgs {
		if raft.IsLocalMsg(m.Message.GetType()) {
			continue
		}
		r := h.lookup(m)
		if r == nil {
			continue
		}
		r.mu.Lock()
		if !r.destroyed && n.err() == nil {
			if m.Message.GetType() == pb.MsgApp && len(m.Message.GetEntries()) > 0 && r.appRecv.IsZero() {
				r.appRecv = time.Now()
			}
			if r.voteRefused(m.Message) {
				r.mu.Unlock()
				continue
			}
			_ = r.rn.Step(m.Message) // errors: a message for an unknown peer, dropped
			n.markDirty(r)
			stepped = true
		}
		r.mu.Unlock()
	}
	if stepped {
		n.wake()
	}
}

func (h *nodeHandler) HandleSnapshot(from StoreID, m ShardMessage) error {
	n := (*Node)(h)
	if m.Message.GetType() != pb.MsgSnap {
		return errors.New("multiraft: not a snapshot message")
	}
	r := h.lookup(m)
	if r == nil {
		return fmt.Errorf("%w: shard %d replica %v", ErrShardNotFound, m.Shard, ReplicaID(m.Message.GetTo()))
	}
	r.mu.Lock()
	var err error
	if r.destroyed {
		err = ErrShardNotFound
	} else if err = n.err(); err == nil {
		err = r.rn.Step(m.Message)
	}
	r.mu.Unlock()
	n.signalReplica(r)
	return err
}

func (h *nodeHandler) ReportUnreachable(to StoreID, msgs []ShardMessage) {
	n := (*Node)(h)
	seen := map[uint32]bool{}
	for _, m := range msgs {
		if seen[m.Shard] {
			continue
		}
		seen[m.Shard] = true
		n.mu.RLock()
		r := n.replicas[m.Shard]
		n.mu.RUnlock()
		if r == nil {
			continue
		}
		r.mu.Lock()
		if !r.destroyed && n.err() == nil {
			r.rn.ReportUnreachable(m.Message.GetTo())
		}
		r.mu.Unlock()
	}
}

func (h *nodeHandler) ReportSnapshot(to StoreID, m ShardMessage, err error) {
	n := (*Node)(h)
	n.mu.RLock()
	r := n.replicas[m.Shard]
	n.mu.RUnlock()
	if r == nil {
		return
	}
	status := raft.SnapshotFinish
	if err != nil {
		status = raft.SnapshotFailure
	}
	r.mu.Lock()
	if !r.destroyed && n.err() == nil {
		r.rn.ReportSnapshot(m.Message.GetTo(), status)
	}
	r.mu.Unlock()
	n.signalReplica(r)
}
