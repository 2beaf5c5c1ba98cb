package sessionstore

import (
	"fmt"
	"strconv"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorInfo reasons, as documented in the proto.
const (
	ReasonSessionNotFound = "SESSION_NOT_FOUND"
	ReasonSessionExpired  = "SESSION_EXPIRED"
	ReasonVersionConflict = "VERSION_CONFLICT"
	// ReasonKeyNotFound: GetState of a key the (live) session lacks.
	ReasonKeyNotFound = "KEY_NOT_FOUND"
	// ReasonTaskNotFound: GetTask of a task the (live) session lacks.
	ReasonTaskNotFound = "TASK_NOT_FOUND"
	// ReasonLimitExceeded: RESOURCE_EXHAUSTED; metadata "limit" names the
	// limit and "max" its value.
	ReasonLimitExceeded = "LIMIT_EXCEEDED"
	// ReasonStorageUnavailable: UNAVAILABLE from a store node that refuses
	// work because a write or fsync of its disk failed (full disk, I/O
	// error) until a probe write succeeds; the shard's other replicas keep
	// serving, so retry (with the same request_id: a write in flight may
	// have been committed by them).
	ReasonStorageUnavailable = "STORAGE_UNAVAILABLE"
	// ErrorDomain is the ErrorInfo domain of every detail this service sets.
	ErrorDomain = "sessionstore.erlmcp"
)

func withInfo(code codes.Code, msg, reason string, md map[string]string) *status.Status {
	st := status.New(code, msg)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: md}); err == nil {
		return d
	}
	return st
}

func statusNotFound(id string) *status.Status {
	return withInfo(codes.NotFound, fmt.Sprintf("session %q not found", id), ReasonSessionNotFound, nil)
}

func statusExpired(id string) *status.Status {
	return withInfo(codes.NotFound, fmt.Sprintf("session %q expired (idle longer than its idle TTL)", id), ReasonSessionExpired, nil)
}

func statusConflict(id string, expected, current uint64) *status.Status {
	return withInfo(codes.Aborted,
		fmt.Sprintf("session %q is at version %d, not the expected %d", id, current, expected),
		ReasonVersionConflict, map[string]string{"current_version": strconv.FormatUint(current, 10)})
}

func statusExists(id string, version uint64) *status.Status {
	return status.Newf(codes.AlreadyExists, "session %q already exists (version %d)", id, version)
}

func statusWrongShard(hint *pb.ShardHint, msg string) *status.Status {
	st := status.New(codes.FailedPrecondition, msg)
	if d, err := st.WithDetails(hint); err == nil {
		return d
	}
	return st
}

func statusKeyNotFound(id, key string) *status.Status {
	return withInfo(codes.NotFound, fmt.Sprintf("session %q has no state key %q", id, key), ReasonKeyNotFound, nil)
}

func statusTaskNotFound(id, taskID string) *status.Status {
	return withInfo(codes.NotFound, fmt.Sprintf("session %q has no task %q", id, taskID), ReasonTaskNotFound, nil)
}

// statusItemConflict is VERSION_CONFLICT for a state key or task ("state
// key" / "task"); current 0 means absent.
func statusItemConflict(id, kind, name string, expected, current uint64) *status.Status {
	var msg string
	switch {
	case current == 0:
		msg = fmt.Sprintf("%s %q of session %q is absent, not at the expected version %d", kind, name, id, expected)
	case expected == 0:
		msg = fmt.Sprintf("%s %q of session %q exists (version %d); expected it absent", kind, name, id, current)
	default:
		msg = fmt.Sprintf("%s %q of session %q is at version %d, not the expected %d", kind, name, id, current, expected)
	}
	return withInfo(codes.Aborted, msg, ReasonVersionConflict, map[string]string{"current_version": strconv.FormatUint(current, 10)})
}

// statusLimit is RESOURCE_EXHAUSTED naming the limit.
func statusLimit(id, limit string, max int, msg string) *status.Status {
	return withInfo(codes.ResourceExhausted,
		fmt.Sprintf("session %q: %s (limit %s = %d)", id, msg, limit, max),
		ReasonLimitExceeded, map[string]string{"limit": limit, "max": strconv.Itoa(max)})
}

// statusStorageUnavailable is UNAVAILABLE for a node refusing work after a
// failed write or fsync; err (multiraft.ErrStorageUnavailable) names the
// cause and the directory to free space in.
func statusStorageUnavailable(node string, err error) *status.Status {
	return withInfo(codes.Unavailable, fmt.Sprintf("store node %q: %v", node, err), ReasonStorageUnavailable, nil)
}
