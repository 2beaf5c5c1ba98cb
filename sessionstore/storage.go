package sessionstore

import (
	"context"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"google.golang.org/grpc/status"
)

// storage is the durable state of the shards a node hosts. The node checks
// input and shard ownership, stamps each command with the time and the
// limits, and hands it to storage; storage applies it atomically and
// durably and returns the outcome to send.
//
// The store node's storage is raftStorage: every shard replica is a Raft
// group member (package multiraft), a command is proposed on the shard's
// leader and acknowledged once a quorum has it durably, and the same
// deterministic state machine (applyCommand) applies it on every replica.
type storage interface {
	// apply runs cmd. It returns the outcome (a session or a gRPC status
	// for a refused operation) once the effect is durable. An error that
	// is a gRPC status (this replica does not lead: FAILED_PRECONDITION
	// with a ShardHint; UNAVAILABLE) is answered as is; any other error
	// means the storage itself failed and nothing was acknowledged.
	// A command whose RequestID was seen before, within the idempotency
	// window, is not applied again: the first outcome is returned.
	apply(ctx context.Context, cmd command) (outcome, error)
	// view runs fn on shard's state in a read-only transaction that sees
	// every command acknowledged before view was called (a Raft ReadIndex
	// read on the shard's leader). Errors are as for apply.
	view(ctx context.Context, shard int, fn func(shardTx) error) error
	// nowMs is the time to stamp a command of shard with, or to judge
	// expiry at: the local clock, but never before the shard's clock
	// (the largest time already applied), so it is monotonic per shard.
	nowMs(shard int) int64
	close() error
}

// op names a mutation.
type op uint8

const (
	opCreate op = iota + 1
	opCompareAndSet
	opDelete
	// opTouch refreshes updated_at (GetSession with touch).
	opTouch
	// opExpire deletes the record (and its events, state and tasks) if it
	// is expired at NowMs (lazy expiry).
	opExpire
	// opAppendEvents appends Events to Stream.
	opAppendEvents
	// opPutState writes Key = Data, conditionally on ExpectedVersion when
	// HasExpected.
	opPutState
	// opDeleteState removes Key.
	opDeleteState
	// opPutTask writes Task, conditionally on ExpectedVersion when
	// HasExpected.
	opPutTask
	// opSweep deletes those of IDs that are expired at NowMs (the
	// leader's periodic expiry sweep).
	opSweep
	// opImport loads one chunk of a backup dump (Records) into the shard
	// (Import; see backup.go).
	opImport
)

func (o op) String() string {
	switch o {
	case opCreate:
		return "create"
	case opCompareAndSet:
		return "compare-and-set"
	case opDelete:
		return "delete"
	case opTouch:
		return "touch"
	case opExpire:
		return "expire"
	case opAppendEvents:
		return "append-events"
	case opPutState:
		return "put-state"
	case opDeleteState:
		return "delete-state"
	case opPutTask:
		return "put-task"
	case opSweep:
		return "sweep"
	case opImport:
		return "import"
	}
	return "unknown"
}

// command is one mutation. It carries everything needed to apply it
// deterministically (the time and the limits chosen by the node that
// proposes it), so it can be a Raft log entry: replicas with other flags or
// clocks apply it identically.
type command struct {
	Op              op
	Shard           int
	ID              string
	Data            []byte
	IdleTTLMs       int64
	ExpectedVersion uint64
	// HasExpected says ExpectedVersion is set (PutState, PutTask: unset
	// means an unconditional write; CompareAndSet always sets it).
	HasExpected bool
	// Stream and Events: opAppendEvents.
	Stream string
	Events [][]byte
	// Key: opPutState (value in Data), opDeleteState.
	Key string
	// Task: opPutTask. Its created/updated times and version are ignored;
	// the store sets them.
	Task *pb.Task `json:"-"`
	// IDs: opSweep, the sessions the leader found expired.
	IDs []string
	// RestoreID, Seq and Records: opImport, the chunk to load.
	RestoreID string         `json:",omitempty"`
	Seq       uint64         `json:",omitempty"`
	Records   []backupRecord `json:",omitempty"`
	// Limits in force when the command was proposed.
	Limits limits
	// RequestID is the client's idempotency key; empty for touch and expire.
	RequestID string
	NowMs     int64
	// format is the format byte of the log entry the command was decoded
	// from (decodeCommand sets it; 0 for a command built in memory). It
	// picks the retry-dedup layout the apply uses (commandFormatColocated
	// or not), so it is neither encoded nor part of the fingerprint.
	format byte
}

// limits bound what one session keeps. They travel in each command.
type limits struct {
	// EventRetention: events kept per stream (the newest).
	EventRetention int
	// MaxStreams: streams kept per session (the least recently appended
	// go first).
	MaxStreams int
	// MaxStateKeys: state keys per session (a put of a new key beyond it
	// is refused).
	MaxStateKeys int
	// MaxTasks: tasks per session (a put of a new task beyond it is
	// refused).
	MaxTasks int
}

// outcome is the answer to a command: Session, Seqs, Entry or Task on
// success (all nil for a delete), or Status for a refused operation.
type outcome struct {
	Session *pb.Session
	Seqs    []uint64
	Entry   *pb.StateEntry
	Task    *pb.Task
	Status  *status.Status
	// expired: the session was found expired and deleted while applying.
	expired bool
	// Swept: opSweep, the sessions deleted.
	Swept []string
}

func (o outcome) err() error {
	if o.Status == nil {
		return nil
	}
	return o.Status.Err()
}
