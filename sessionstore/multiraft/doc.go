// Package multiraft is the session store's replication engine: many Raft
// groups (one per shard) hosted by one Node per store process, built on
// go.etcd.io/raft/v3's RawNode.
//
// # Shape
//
// A Node owns one write-ahead log (wal/, see wal.go) holding every hosted
// replica's Raft log and HardState, one bbolt file (raft.db, see
// storage.go) holding the state machines, one loop goroutine, one applier
// goroutine, one ticker and one Transport. Each hosted shard is a replica:
// a RawNode, its raft.Storage (its log, in memory, durable in the WAL), and
// the shard's state-machine bucket. Raft replica ids are ReplicaID =
// incarnation<<32 | store, so a message's destination store is read off
// its To field and a re-added replica never reuses an old id.
//
// # The loop, group commit and ticks
//
// One goroutine per node drives every group. It wakes on the ticker (every
// TickInterval it calls Tick on every replica: one ticker for all groups,
// not one per shard), on new work (a proposal, a received message, a read
// request), or on an operation (create/destroy a replica). Each wake-up it
// collects the Ready of every replica that has one and adds their
// snapshots' resets, entries and HardStates to the WAL. The Readies that
// need an fsync go to the WAL writer goroutine (walwriter.go), which makes
// everything handed to it while its previous fsync ran durable with ONE
// write and ONE fdatasync: proposals arriving on any shard during one
// append's sync share the next one (group commit;
// TestGroupCommitSharesFsyncs measures it). The loop does not wait for
// it: it serves the other replicas meanwhile and finishes those Readies
// once durable (TestReadsDoNotWaitForOtherShardsFsync). A HardState that
// only moves the commit index is written (at once, so a restart can tell
// a lost log tail) but needs no fsync of its own. A leader's messages
// (appends to followers) go out before that fsync when its term and vote
// are unchanged, so followers fsync while the leader does (Raft thesis
// §10.2.1; the leader counts itself for a quorum only after its own
// append); all other messages of a Ready that needs an fsync only after
// it. They are grouped by destination store (one Transport.Send per peer
// per batch, whatever the number of shards, so the heartbeats of all
// shards to a peer share one stream message). The committed entries then
// go to the applier, which applies them to raft.db in its own bbolt
// transaction (kept open across shards and iterations until a reader
// needs it or for up to 100ms, see applier.go, and not fsynced: raft.db is
// fsynced by a checkpoint every 100ms, see checkpoint.go) while the loop
// carries on, and each group is Advanced.
// Readies that only carry messages (heartbeats) need no fsync. An
// iteration with a snapshot or a conf change waits for the writer and
// runs synchronously, as the loop always did before.
//
// So an acknowledged write waits for its share of one WAL fdatasync on
// the leader and on a follower, and for no other disk flush;
// BenchmarkPropose reports fsyncs/write and cpu-us/write.
//
// Defaults: TickInterval 50ms, ElectionTicks 10 (randomized by raft to
// [500ms, 1s)), HeartbeatTicks 2 (100ms); CheckQuorum and PreVote on; the
// tests run with 10ms ticks.
//
// # Durability and failure
//
// A proposal is answered only after its entry is committed by a quorum
// (durable in their WALs) and applied here, in the applier's open
// transaction, before that commits (its result is what a replay of the
// log would give; linearizable reads wait for the applied index, which
// moves once that transaction is committed). On start raft.db is rolled
// back to its last checkpoint (checkpoint.go: a state whose pages were
// fsynced and never overwritten since), the WAL is replayed and raft
// redelivers the committed entries after that state's applied index; the
// log is compacted only up to a checkpoint, so they are there. If a WAL
// append, an apply commit or a checkpoint fails (write or fsync error,
// e.g. a full disk), nothing of that
// iteration is sent or acknowledged and the node refuses every call with
// ErrStorageUnavailable (Node.StorageErr reports it); it discards its
// in-memory Raft state, cuts the WAL back to its last successful fsync,
// probes the disk every StorageRetryInterval and, once a probe write and
// fsync succeed, restarts its groups from disk and catches up (see
// storagefail.go for why the page cache is not trusted). An error that is
// not the disk's (state machine, log checks) stops the node for good with
// ErrStorageFailed.
// Every WAL record and bbolt value carries a CRC-32C; Open verifies the
// whole log (checksums, contiguous indexes, terms, commit ≤ last index,
// the state machine's applied index within the log) and fails with
// ErrCorrupt instead of using a damaged or lost tail; an append cut short
// by a crash (never fsynced, so never acknowledged) just ends the log.
//
// # Reads
//
// Linearizable reads use the leader's lease when it holds, raft's
// ReadIndex (ReadOnlySafe) otherwise. A ReadIndex read costs a heartbeat
// round to a quorum; the reads of a shard that arrive while the loop is
// busy share one (replica.issueReads; TestConcurrentReadsShareReadIndex).
// A leader whose round completed within the lease (lease.go: the round's
// send time plus the followers' election timeout, less a tenth and a
// tick) answers with its commit index at once: no other leader can have
// been elected meanwhile. The lease is checked with the monotonic clock
// when the read arrives, so a leader paused (SIGSTOP, GC) past it sees it
// expired; raft's own lease option (ReadOnlyLeaseBased) counts ticks, and
// a paused process misses ticks, so it is not used. What leases assume is
// that the machines' clocks run at rates within 10% of each other (not
// that they agree); Config.ReadIndexOnly turns them off.
// Followers serve ReadIndex reads too (through the leader).
//
// # Snapshots
//
// Logs are compacted when they hold more than CompactThreshold entries up
// to the durable applied index, or more than CompactThresholdBytes of
// entries, keeping the newest CompactRetain entries up to the applied
// index within CompactRetainBytes; a new WAL segment compacts every log
// that way first, since its checkpoint copies the logs (the byte bounds
// are what keep memory, the checkpoint and the replay at start small when
// commands are kilobytes: 64 shards at 1000 entries of 2 KB each made a
// 54 MB checkpoint and a 6 s restart). A replica that needs
// compacted entries gets a snapshot: a consistent bbolt read of the shard's
// applied index, ConfState and bucket (StateMachine.Snapshot), generated
// off the loop, sent as MsgSnap by the Transport (a unary RPC in the gRPC
// transport, whose outcome is reported to raft), restored by the
// receiver's loop in a bbolt transaction of its own (StateMachine.Restore)
// before the WAL records the log's reset to it.
//
// # Membership
//
// CreateReplica bootstraps a shard (all initial replicas with the same
// peers) or creates an empty replica that joins; AddLearner, Promote,
// RemoveReplica use ConfChangeV2 (one change at a time, no joint
// consensus); TransferLeader; DestroyReplica deletes a replica's data;
// Status reports role, term, commit, applied and, on the leader, every
// member's progress; Campaign starts an election at once (a group of one,
// or the first election of a new group).
//
// # Applied notifications
//
// Config.OnApplied is called (on the applier, or on the loop for a
// restored snapshot) once entries of a shard are applied (or a snapshot
// restored), on every replica: the hook for waking readers that wait for
// new state. Their linearizable read has the applier commit its open
// transaction if it holds what they need.
package multiraft
