package multiraft

import pb "go.etcd.io/raft/v3/raftpb"

// ShardMessage is one Raft message of one shard's group.
type ShardMessage struct {
	Shard   uint32
	Message *pb.Message
}

// Transport moves Raft messages between nodes. The node calls Send once per
// destination store per loop iteration with everything that iteration
// produced for that store (all shards together), and once per destination
// per WAL fsync with the messages that waited for it (walwriter.go), so a
// transport that sends each call as one batch keeps the RPC count
// independent of the shard count. Send is called from both goroutines: it
// must be safe for concurrent use.
//
// Raft tolerates loss, duplication and reordering, so delivery is best
// effort; but a transport must tell the node about what it could not
// deliver (Handler.ReportUnreachable) and about every MsgSnap's outcome
// (Handler.ReportSnapshot): a snapshot lost without a report leaves the
// follower's progress stuck in StateSnapshot.
type Transport interface {
	// Start registers the node's Handler; called once by Open.
	Start(h Handler) error
	// Send queues msgs for the store to. It must not block: when the peer
	// is down or its queue is full, drop the messages and report them.
	// The messages must not be modified after the call.
	Send(to StoreID, msgs []ShardMessage)
}

// Handler is the node side of a Transport.
type Handler interface {
	// HandleMessages steps messages received from store from.
	HandleMessages(from StoreID, msgs []ShardMessage)
	// HandleSnapshot steps one received MsgSnap; an error means the
	// snapshot was not handed to a replica (the sender reports failure).
	HandleSnapshot(from StoreID, m ShardMessage) error
	// ReportUnreachable reports messages that were dropped undelivered.
	ReportUnreachable(to StoreID, msgs []ShardMessage)
	// ReportSnapshot reports the outcome of sending a MsgSnap (nil: the
	// receiver got it).
	ReportSnapshot(to StoreID, m ShardMessage, err error)
}
