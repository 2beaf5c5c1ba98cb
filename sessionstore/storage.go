package sessionstore

import (
	"context"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"google.golang.org/grpc/status"
)

// storage is the durable state of the shards a node hosts. The node checks
// input and shard ownership, stamps each command with the time, and hands it
// to storage; storage applies it atomically and durably and returns the
// outcome to send.
//
// The first version (boltStorage) is one local bbolt file: a single replica
// per shard. The multi-Raft version replaces it by proposing the same
// commands to the shard's Raft group and applying them with the same
// deterministic state machine (applyCommand), so that swap stays local to
// this interface.
type storage interface {
	// apply runs cmd. It returns the outcome (a session or a gRPC status
	// for a refused operation) once the effect is durable, or an error when
	// the storage itself failed, in which case nothing was acknowledged.
	// A command whose RequestID was seen before, within the idempotency
	// window, is not applied again: the first outcome is returned.
	apply(ctx context.Context, cmd command) (outcome, error)
	// read returns the stored record of id in shard, expired or not, or nil.
	read(ctx context.Context, shard int, id string) (*pb.Session, error)
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
	// opExpire deletes the record if it is expired at NowMs (lazy expiry).
	opExpire
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
	}
	return "unknown"
}

// command is one mutation. It carries everything needed to apply it
// deterministically (including the time), so it can be a Raft log entry.
type command struct {
	Op              op
	Shard           int
	ID              string
	Data            []byte
	IdleTTLMs       int64
	ExpectedVersion uint64
	// RequestID is the client's idempotency key; empty for touch and expire.
	RequestID string
	NowMs     int64
}

// outcome is the answer to a command: Session on success (nil for a
// delete), or Status for a refused operation.
type outcome struct {
	Session *pb.Session
	Status  *status.Status
}

func (o outcome) err() error {
	if o.Status == nil {
		return nil
	}
	return o.Status.Err()
}
