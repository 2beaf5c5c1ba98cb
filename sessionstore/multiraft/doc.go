// Package multiraft is the session store's replication engine: many Raft
// groups (one per shard) hosted by one Node per store process, built on
// go.etcd.io/raft/v3's RawNode.
//
// # Shape
//
// A Node owns one bbolt file (raft.db, see storage.go for the layout), one
// loop goroutine, one ticker and one Transport. Each hosted shard is a
// replica: a RawNode, its raft.Storage view of the file, and the shard's
// state-machine bucket. Raft replica ids are ReplicaID = incarnation<<32 |
// store, so a message's destination store is read off its To field and a
// re-added replica never reuses an old id.
//
// # The loop, group commit and ticks
//
// One goroutine per node drives every group. It wakes on the ticker (every
// TickInterval it calls Tick on every replica: one ticker for all groups,
// not one per shard), on new work (a proposal, a received message, a read
// request), or on an operation (create/destroy a replica). Each wake-up it
// collects the Ready of every replica that has one and writes all of them
// in ONE bbolt transaction: snapshot, entries, HardState, then the
// committed entries applied to the state machine with the applied index,
// then compaction. The commit of that transaction is the only fsync of the
// iteration, so proposals arriving on any shard while the previous commit
// was syncing share the next one (group commit; TestGroupCommitSharesFsyncs
// measures ~12 proposals per commit per node with 64 clients). Only after
// the commit are messages sent, grouped by destination store (one
// Transport.Send per peer per iteration, whatever the number of shards, so
// the heartbeats of all shards to a peer share one stream message), then
// each group is Advanced and proposers and readers are answered. Readies
// that only carry messages (heartbeats) need no transaction and no fsync.
//
// Defaults: TickInterval 100ms, ElectionTicks 10 (randomized by raft to
// [1s, 2s)), HeartbeatTicks 1 (100ms); CheckQuorum and PreVote on; the
// tests run with 10ms ticks.
//
// # Durability and failure
//
// A proposal is answered only after its entry is committed by a quorum and
// applied here in a durable transaction. If a commit fails (write or fsync
// error), the node stops for good: nothing of that iteration is sent or
// acknowledged, every pending and later call fails with ErrStorageFailed.
// Every value carries a CRC-32C; Open verifies the whole log (checksums,
// contiguous indexes, terms, commit ≤ last index) and fails with ErrCorrupt
// instead of using a damaged or truncated tail.
//
// # Reads
//
// Linearizable reads use raft's ReadIndex (ReadOnlySafe), never leases:
// a lease read is correct only if clocks drift boundedly and a leader
// cannot be paused past its lease, and a SIGSTOPped or GC-paused leader is
// in this project's failure model. ReadIndex costs a heartbeat round but
// assumes nothing about time. Followers serve ReadIndex reads too.
//
// # Snapshots
//
// Logs are compacted when they exceed CompactThreshold entries past the
// last compaction, keeping CompactRetain entries. A replica that needs
// compacted entries gets a snapshot: a consistent bbolt read of the shard's
// applied index, ConfState and bucket (StateMachine.Snapshot), generated
// off the loop, sent as MsgSnap by the Transport (a unary RPC in the gRPC
// transport, whose outcome is reported to raft), restored in the receiver's
// group-commit transaction (StateMachine.Restore).
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
// Config.OnApplied is called on the loop once a group-commit transaction
// that applied entries (or restored a snapshot) of a shard is durable, on
// every replica: the hook for waking readers that wait for new state.
package multiraft
