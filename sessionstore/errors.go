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
