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
	// Dir holds the node's raft.db.
	Dir string
	// StateMachine is the replicated state (required).
	StateMachine StateMachine
	// Transport carries Raft messages to other nodes (required).
	Transport Transport

	// TickInterval is the Raft logical clock period: 100ms. One ticker per
	// node ticks every hosted group.
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks: 10 (1s at 100ms;
	// raft randomizes it to [10, 20) ticks per replica).
	ElectionTicks int
	// HeartbeatTicks is the heartbeat period in ticks: 1.
	HeartbeatTicks int

	// CompactThreshold: a shard's log is compacted once it holds more than
	// this many entries up to its applied index: 10000.
	CompactThreshold uint64
	// CompactRetain entries before the applied index survive a compaction,
	// so a follower slightly behind catches up from the log rather than by
	// snapshot: 1000 (capped below CompactThreshold).
	CompactRetain uint64

	// MaxSizePerMsg bounds the entries in one append message: 1 MiB.
	MaxSizePerMsg uint64
	// MaxInflightMsgs bounds unacknowledged append messages per follower: 256.
	MaxInflightMsgs int
	// MaxUncommittedBytes bounds a leader's uncommitted log; beyond it
	// proposals are dropped (ErrProposalDropped): 64 MiB.
	MaxUncommittedBytes uint64

	// Logger receives raft's logs; the default drops debug and info.
	Logger raft.Logger

	// OnApplied, if set, is called on the loop goroutine once the
	// transaction that applied entries (or restored a snapshot) of shard
	// up to index is durable (the proposers of those entries may have been
	// answered already: see processReady): the place to wake readers
	// waiting for new state, on every replica. It must not block or call
	// back into the Node.
	OnApplied func(shard uint32, index uint64, snapshot bool)

	// StorageRetryInterval is how often a node that refuses work after a
	// failed write or fsync probes its disk to recover: 1s.
	StorageRetryInterval time.Duration

	// faults injects disk faults around commits (tests).
	faults *diskFaults
	// legacyWritePath: leaders' messages wait for their commit too, and
	// proposers are answered only once their entry's application is
	// durable here (the write path before both optimizations of
	// processReady; benchmarks compare the two).
	legacyWritePath bool
}

func (c *Config) setDefaults() {
	if c.TickInterval == 0 {
		c.TickInterval = 100 * time.Millisecond
	}
	if c.ElectionTicks == 0 {
		c.ElectionTicks = 10
	}
	if c.HeartbeatTicks == 0 {
		c.HeartbeatTicks = 1
	}
	if c.CompactThreshold == 0 {
		c.CompactThreshold = 10000
	}
	if c.CompactRetain == 0 {
		c.CompactRetain = 1000
	}
	if c.CompactRetain >= c.CompactThreshold {
		c.CompactRetain = c.CompactThreshold / 2
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
	if c.StorageRetryInterval == 0 {
		c.StorageRetryInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = quietLogger{prefix: fmt.Sprintf("multiraft store %d: ", c.Store)}
	}
}

// Stats are counters since Open.
type Stats struct {
	// Syncs counts group commits: durable bbolt transactions written by
	// the loop (each is one commit with its fdatasyncs, whatever the number
	// of shards and entries in it).
	Syncs uint64
	// SyncTime is the time spent in those commits.
	SyncTime time.Duration
	// Proposals counts commands and conf changes accepted by Propose & co.
	Proposals uint64
	// Applied counts log entries applied.
	Applied uint64
	// SnapshotsApplied counts snapshots restored from a leader.
	SnapshotsApplied uint64
	// Sends counts Transport.Send calls; Messages the messages in them.
	Sends, Messages uint64
	// StorageFailures counts failed writes/fsyncs that made the node refuse
	// work; StorageRecoveries the in-process restarts after them.
	StorageFailures, StorageRecoveries uint64
}

type counters struct {
	syncs, syncNanos, proposals, applied, snaps, sends, msgs atomic.Uint64
	storFails, storRecoveries                                atomic.Uint64
}

// Node hosts the replicas of many shards in one process: one bbolt file,
// one loop goroutine that processes the Ready of every group and persists
// them with one fsync (group commit), one ticker for all groups, and one
// Transport.
type Node struct {
	cfg Config
	// dbp is the open raft.db, nil while the node refuses work after a
	// storage failure (it is closed and reopened to recover).
	dbp atomic.Pointer[bolt.DB]

	mu       sync.RWMutex
	replicas map[uint32]*replica

	loopReplicas []*replica // owned by the loop goroutine

	readyC chan struct{}
	opC    chan func()
	stopC  chan struct{}
	doneC  chan struct{}

	failMu  sync.Mutex
	failErr error // permanent: ErrStopped or ErrStorageFailed
	storErr error // while refusing work after a failed write/fsync

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
	db, err := openDB(cfg.Dir)
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
	}
	var rb [8]byte
	_, _ = rand.Read(rb[:])
	n.idBase = binary.BigEndian.Uint64(rb[:])
	n.dbp.Store(db)
	if err := n.load(); err != nil {
		db.Close()
		return nil, err
	}
	if err := cfg.Transport.Start((*nodeHandler)(n)); err != nil {
		db.Close()
		return nil, err
	}
	go n.run()
	return n, nil
}

func openDB(dir string) (*bolt.DB, error) {
	db, err := bolt.Open(filepath.Join(dir, "raft.db"), 0o600, &bolt.Options{
		Timeout:        time.Second,
		NoFreelistSync: true, // rebuilt at open; halves the pages each commit writes
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		return nil, fmt.Errorf("multiraft: open raft.db: %w", err)
	}
	return db, nil
}

// db is the open raft.db, or nil while the node recovers from a storage
// failure.
func (n *Node) db() *bolt.DB { return n.dbp.Load() }

func (n *Node) load() error {
	type loaded struct {
		shard   uint32
		id      ReplicaID
		st      *raftStorage
		applied indexTerm
	}
	var all []loaded
	err := n.db().Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bktMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keyStore); v != nil {
			if len(v) != 4 || StoreID(binary.BigEndian.Uint32(v)) != n.cfg.Store {
				return fmt.Errorf("multiraft: %s belongs to store %x, not %d", n.cfg.Dir, v, n.cfg.Store)
			}
		} else {
			if err := meta.Put(keyStore, u32key(uint32(n.cfg.Store))); err != nil {
				return err
			}
			if err := meta.Put(keyFormat, []byte{1}); err != nil {
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
			id, st, applied, err := loadReplica(shards.Bucket(k), shard)
			if err != nil {
				return err
			}
			all = append(all, loaded{shard, id, st, applied})
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, l := range all {
		if err := n.startReplica(l.shard, l.id, l.st, l.applied); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) startReplica(shard uint32, id ReplicaID, st *raftStorage, applied indexTerm) error {
	st.db, st.sm = n.db(), n.cfg.StateMachine
	r := &replica{
		n:         n,
		shard:     shard,
		id:        id,
		st:        st,
		applied:   applied,
		cs:        proto.CloneOf(st.cs),
		leaderCh:  make(chan struct{}),
		proposals: map[uint64]*proposal{},
		reads:     map[uint64]*readReq{},
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
		Proposals:        n.stats.proposals.Load(),
		Applied:          n.stats.applied.Load(),
		SnapshotsApplied: n.stats.snaps.Load(),
		Sends:            n.stats.sends.Load(),
		Messages:         n.stats.msgs.Load(),

		StorageFailures:   n.stats.storFails.Load(),
		StorageRecoveries: n.stats.storRecoveries.Load(),
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
		n.fail(ErrStopped)
	})
	if db := n.dbp.Swap(nil); db != nil {
		return db.Close()
	}
	return nil
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

func (n *Node) signal() {
	select {
	case n.readyC <- struct{}{}:
	default:
	}
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
		case <-n.readyC:
		case op := <-n.opC:
			op()
		}
		if n.refusing() {
			// An operation's commit failed.
			if !n.recoverStorage() {
				return
			}
			continue
		}
		if err := n.processReady(); err != nil {
			if !n.refusing() {
				// Not the disk: the state machine or the log itself is
				// broken; carrying on could diverge from the group.
				n.fail(fmt.Errorf("%w: %v", ErrStorageFailed, err))
				return
			}
			if !n.recoverStorage() {
				return
			}
		}
	}
}

// readyWork is one replica's share of a loop iteration.
type readyWork struct {
	r  *replica
	rd raft.Ready
	// early: the messages may go out before the transaction is durable
	// (see processReady).
	early bool

	// results of the transaction, published after it is durable
	first, last, truncTerm uint64
	applied                indexTerm
	cs                     *pb.ConfState
	snapIndex              uint64
	results                []applyResult
}

type applyResult struct {
	id   uint64
	data []byte
	// conf: a conf change, answered only after Advance (raft refuses the
	// next conf change until it has seen this one applied).
	conf bool
}

// processReady handles the Ready of every group that has one, in the order
// raft's Ready contract demands:
//
//  1. one bbolt write transaction persists, for all groups, the incoming
//     snapshot, the new entries (replacing any conflicting tail) and the
//     HardState, then applies the committed entries to the state machine
//     (in the same transaction, together with each group's applied index)
//     and compacts logs that grew past the threshold; its commit is the
//     single fsync of the iteration (group commit);
//  2. only after that commit, the new log bounds are published to
//     raft.Storage and messages are sent (grouped per destination store:
//     one Transport.Send per store), except a leader's, which go out
//     before the commit when its term and vote did not change;
//  3. Advance, then proposers and readers are answered.
//
// A failed commit returns an error and the node refuses work (see
// storagefail.go) without sending or acknowledging anything else from this
// iteration.
func (n *Node) processReady() error {
	var work []*readyWork
	needTxn := false
	for _, r := range n.loopReplicas {
		r.mu.Lock()
		if r.destroyed || !r.rn.HasReady() {
			r.mu.Unlock()
			continue
		}
		w := &readyWork{r: r, rd: r.rn.Ready()}
		r.placeProposals(w.rd.Entries)
		w.early = !n.cfg.legacyWritePath && r.rn.BasicStatus().RaftState == raft.StateLeader &&
			raft.IsEmptySnap(w.rd.Snapshot) && r.st.sameTermVote(w.rd.HardState)
		r.mu.Unlock()
		if !raft.IsEmptySnap(w.rd.Snapshot) || len(w.rd.Entries) > 0 ||
			!raft.IsEmptyHardState(w.rd.HardState) || len(w.rd.CommittedEntries) > 0 {
			needTxn = true
		}
		work = append(work, w)
	}
	if len(work) == 0 {
		return nil
	}
	for _, w := range work {
		w.first, w.last, w.truncTerm = w.r.st.bounds()
		w.applied = w.r.applied
	}
	if needTxn {
		// A leader's messages go out before its own append is durable,
		// so the followers' fsyncs overlap the leader's (Raft thesis
		// §10.2.1; raft's Ready contract allows sending while the same
		// batch's entries are persisted). Safe because the leader counts
		// its own log for a quorum only after Advance, i.e. after this
		// commit, and a follower acknowledges only what it persisted
		// (its messages wait for the commit). Not when the term or vote
		// changed in this batch: those must be durable before anything
		// that depends on them leaves the node.
		n.send(work, func(w *readyWork) bool { return w.early })
		t0 := time.Now()
		err := n.update("group commit", func(tx *bolt.Tx) error {
			for _, w := range work {
				if err := n.persist(tx, w); err != nil {
					return fmt.Errorf("shard %d: %w", w.r.shard, err)
				}
			}
			if !n.cfg.legacyWritePath {
				// Proposers are answered before this commit's fsync:
				// their entries are committed, i.e. durable in the logs
				// of a quorum, so the write is durable whatever happens
				// to this transaction, and its result is what replaying
				// the log gives again (the state machine is
				// deterministic and this transaction starts from the
				// last durable one). Reads stay linearizable: they wait
				// for the applied index, published after the commit.
				// This takes one fsync off a write's latency.
				for _, w := range work {
					w.r.answer(w.results)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		n.stats.syncs.Add(1)
		n.stats.syncNanos.Add(uint64(time.Since(t0)))
	}
	for _, w := range work {
		w.r.published(w)
	}
	if n.cfg.OnApplied != nil {
		for _, w := range work {
			if len(w.rd.CommittedEntries) > 0 || w.snapIndex > 0 {
				n.cfg.OnApplied(w.r.shard, w.applied.index, w.snapIndex > 0)
			}
		}
	}
	n.send(work, func(w *readyWork) bool { return !needTxn || !w.early })
	for _, w := range work {
		w.r.advance(w)
	}
	// Advance may have produced more work (e.g. the leader's own append
	// acknowledgement advancing the commit index).
	n.signal()
	return nil
}

func (n *Node) persist(tx *bolt.Tx, w *readyWork) error {
	r, rd := w.r, w.rd
	b := shardBucket(tx, r.shard)
	if b == nil {
		return ErrShardNotFound
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := n.restoreSnapshot(b, w, rd.Snapshot); err != nil {
			return err
		}
	}
	if len(rd.Entries) > 0 {
		last, err := appendEntries(b, rd.Entries, w.last)
		if err != nil {
			return err
		}
		w.last = last
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		if err := putHardState(b, rd.HardState); err != nil {
			return err
		}
	}
	if len(rd.CommittedEntries) == 0 {
		return nil
	}
	smb := b.Bucket(bktSM)
	for _, e := range rd.CommittedEntries {
		if e.GetIndex() != w.applied.index+1 {
			return fmt.Errorf("applying entry %d after %d", e.GetIndex(), w.applied.index)
		}
		switch e.GetType() {
		case pb.EntryNormal:
			data := e.GetData()
			if len(data) == 0 { // a new leader's empty entry
				break
			}
			if len(data) < 8 {
				return fmt.Errorf("%w: entry %d: %d-byte payload", ErrCorrupt, e.GetIndex(), len(data))
			}
			res, err := n.cfg.StateMachine.Apply(smb, r.shard, e.GetIndex(), data[8:])
			if err != nil {
				return fmt.Errorf("state machine: entry %d: %w", e.GetIndex(), err)
			}
			w.results = append(w.results, applyResult{id: binary.BigEndian.Uint64(data), data: res})
		case pb.EntryConfChange, pb.EntryConfChangeV2:
			var cc pb.ConfChangeI
			var ctx []byte
			if e.GetType() == pb.EntryConfChange {
				c := &pb.ConfChange{}
				if err := proto.Unmarshal(e.GetData(), c); err != nil {
					return err
				}
				cc, ctx = c, c.GetContext()
			} else {
				c := &pb.ConfChangeV2{}
				if err := proto.Unmarshal(e.GetData(), c); err != nil {
					return err
				}
				cc, ctx = c, c.GetContext()
			}
			r.mu.Lock()
			w.cs = r.rn.ApplyConfChange(cc)
			r.mu.Unlock()
			if len(ctx) == 8 {
				w.results = append(w.results, applyResult{id: binary.BigEndian.Uint64(ctx), conf: true})
			}
		}
		w.applied = indexTerm{e.GetIndex(), e.GetTerm()}
	}
	cs := w.cs
	if cs == nil {
		cs = r.cs
	}
	v, err := encodeIndexTerm(w.applied, cs)
	if err != nil {
		return err
	}
	if err := b.Put(keyApplied, v); err != nil {
		return err
	}
	// Compaction: keep the log bounded. Entries up to the applied index are
	// in the state machine, so they can go; CompactRetain of them stay for
	// followers that are only slightly behind.
	if w.applied.index-(w.first-1) > n.cfg.CompactThreshold {
		to := w.applied.index - n.cfg.CompactRetain
		term, err := compactLog(b, w.first, to)
		if err != nil {
			return err
		}
		w.first, w.truncTerm = to+1, term
	}
	n.stats.applied.Add(uint64(len(rd.CommittedEntries)))
	return nil
}

func (n *Node) restoreSnapshot(b *bolt.Bucket, w *readyWork, snap *pb.Snapshot) error {
	md := snap.GetMetadata()
	for _, name := range [][]byte{bktSM, bktLog} {
		if err := b.DeleteBucket(name); err != nil && !errors.Is(err, bolterrors.ErrBucketNotFound) {
			return err
		}
		if _, err := b.CreateBucket(name); err != nil {
			return err
		}
	}
	if err := n.cfg.StateMachine.Restore(b.Bucket(bktSM), w.r.shard, bytes.NewReader(snap.GetData())); err != nil {
		return fmt.Errorf("state machine restore: %w", err)
	}
	it := indexTerm{md.GetIndex(), md.GetTerm()}
	tv, err := encodeIndexTerm(it, nil)
	if err != nil {
		return err
	}
	if err := b.Put(keyTrunc, tv); err != nil {
		return err
	}
	av, err := encodeIndexTerm(it, md.GetConfState())
	if err != nil {
		return err
	}
	if err := b.Put(keyApplied, av); err != nil {
		return err
	}
	w.first, w.last, w.truncTerm = it.index+1, it.index, it.term
	w.applied, w.cs, w.snapIndex = it, proto.CloneOf(md.GetConfState()), it.index
	n.stats.snaps.Add(1)
	return nil
}

// send hands messages of the iteration to the transport, one Send per
// destination store: heartbeats and appends of all shards for a peer travel
// together. Only the messages of the replicas for which which(w) holds.
func (n *Node) send(work []*readyWork, which func(*readyWork) bool) {
	var byStore map[StoreID][]ShardMessage
	for _, w := range work {
		if !which(w) {
			continue
		}
		for _, m := range w.rd.Messages {
			if byStore == nil {
				byStore = map[StoreID][]ShardMessage{}
			}
			to := ReplicaID(m.GetTo()).Store()
			byStore[to] = append(byStore[to], ShardMessage{Shard: w.r.shard, Message: m})
		}
	}
	for to, msgs := range byStore {
		n.stats.sends.Add(1)
		n.stats.msgs.Add(uint64(len(msgs)))
		n.cfg.Transport.Send(to, msgs)
	}
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
			_ = r.rn.Step(m.Message) // errors: a message for an unknown peer, dropped
			stepped = true
		}
		r.mu.Unlock()
	}
	if stepped {
		n.signal()
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
	n.signal()
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
	n.signal()
}
