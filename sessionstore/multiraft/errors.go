package multiraft

import (
	"errors"
	"fmt"
)

var (
	// ErrStopped is returned by calls on a Node that was closed. For a
	// proposal that was in flight the outcome is unknown.
	ErrStopped = errors.New("multiraft: node stopped")
	// ErrStorageFailed is returned once the node met an error it cannot
	// recover from by itself: its state machine failed to apply a committed
	// entry, or the log it reloaded after a storage failure fails its
	// checks. The node then stops: it acknowledges no write and serves no
	// read. For a proposal in flight the outcome is unknown. (A failed write
	// or fsync is ErrStorageUnavailable, which the node recovers from.)
	ErrStorageFailed = errors.New("multiraft: storage failed, node stopped")
	// ErrStorageUnavailable is returned (wrapping the cause) while the node
	// refuses work because a write or fsync of its raft.db failed (full
	// disk, I/O error). Nothing that depended on the failed write was
	// acknowledged; the node discards its in-memory Raft state, probes the
	// disk and, once a probe write and fsync succeed, restarts its groups
	// from what is on disk and catches up. A new proposal refused with it
	// was not committed; for one that was in flight when the disk failed the
	// outcome is unknown (retry with the same request id). Operators: free
	// disk space under the node's directory (named in the message).
	ErrStorageUnavailable = errors.New("multiraft: storage unavailable, refusing writes")
	// ErrCorrupt is returned by Open when the log on disk fails its checks
	// (checksum, index continuity, commit beyond the log).
	ErrCorrupt = errors.New("multiraft: corrupt raft storage")
	// ErrShardNotFound is returned for a shard this node hosts no replica of.
	ErrShardNotFound = errors.New("multiraft: shard not hosted on this node")
	// ErrReplicaExists is returned by CreateReplica for a shard that already
	// has a replica on this node.
	ErrReplicaExists = errors.New("multiraft: shard already hosted on this node")
	// ErrProposalDropped means the command was definitely not committed (it
	// never entered the log, or its log slot was taken by another entry);
	// retrying is safe.
	ErrProposalDropped = errors.New("multiraft: proposal dropped")
	// ErrResultUnknown means the command may or may not have been committed
	// (this replica's log was replaced by a snapshot before the command's slot
	// was applied). Retry with the same request id; the state machine's
	// idempotency makes that safe.
	ErrResultUnknown = errors.New("multiraft: proposal outcome unknown")
	// ErrLearnerNotReady is returned by Promote when the learner has not yet
	// caught up with the leader's log.
	ErrLearnerNotReady = errors.New("multiraft: learner not caught up")
)

// NotLeaderError is returned by Propose and the membership calls when this
// replica is not the shard's leader. Leader is the replica this replica
// believes leads (0 when unknown); callers retry there:
//
//	var nl *multiraft.NotLeaderError
//	if errors.As(err, &nl) && nl.Leader != 0 { retry on nl.Leader.Store() }
type NotLeaderError struct {
	Shard  uint32
	Leader ReplicaID
}

func (e *NotLeaderError) Error() string {
	if e.Leader == 0 {
		return fmt.Sprintf("multiraft: shard %d: not leader, leader unknown", e.Shard)
	}
	return fmt.Sprintf("multiraft: shard %d: not leader, leader is %v on store %d", e.Shard, e.Leader, e.Leader.Store())
}
