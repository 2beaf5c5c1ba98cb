package sessionstore

import (
	"context"
	"fmt"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Input limits.
const (
	MaxIDBytes        = 256
	MaxRequestIDBytes = 256
)

// service implements SessionStoreService on a node.
type service struct {
	pb.UnimplementedSessionStoreServiceServer
	n *Node
}

func (s *service) CreateSession(ctx context.Context, req *pb.CreateSessionRequest) (*pb.CreateSessionResponse, error) {
	if err := s.n.checkMutation(req.GetId(), req.GetRequestId(), req.GetData()); err != nil {
		return nil, err
	}
	if req.GetIdleTtlMs() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "idle_ttl_ms %d: must be 0 (never expires) or positive", req.GetIdleTtlMs())
	}
	out, err := s.n.apply(ctx, command{Op: opCreate, ID: req.GetId(), Data: req.GetData(), IdleTTLMs: req.GetIdleTtlMs(), RequestID: req.GetRequestId()})
	if err != nil {
		return nil, err
	}
	return &pb.CreateSessionResponse{Session: out.Session}, nil
}

func (s *service) GetSession(ctx context.Context, req *pb.GetSessionRequest) (*pb.GetSessionResponse, error) {
	if err := checkID(req.GetId()); err != nil {
		return nil, err
	}
	if req.GetTouch() {
		out, err := s.n.apply(ctx, command{Op: opTouch, ID: req.GetId()})
		if err != nil {
			return nil, err
		}
		return &pb.GetSessionResponse{Session: out.Session}, nil
	}
	var rec *pb.Session
	err := s.n.viewSession(ctx, req.GetId(), func(st shardTx) error {
		var err error
		rec, err = getRecord(st.existing(bkSessions), req.GetId())
		return err
	})
	if err != nil {
		return nil, err
	}
	return &pb.GetSessionResponse{Session: rec}, nil
}

func (s *service) CompareAndSetSession(ctx context.Context, req *pb.CompareAndSetSessionRequest) (*pb.CompareAndSetSessionResponse, error) {
	if err := s.n.checkMutation(req.GetId(), req.GetRequestId(), req.GetData()); err != nil {
		return nil, err
	}
	out, err := s.n.apply(ctx, command{Op: opCompareAndSet, ID: req.GetId(), Data: req.GetData(), ExpectedVersion: req.GetExpectedVersion(), RequestID: req.GetRequestId()})
	if err != nil {
		return nil, err
	}
	return &pb.CompareAndSetSessionResponse{Session: out.Session}, nil
}

func (s *service) DeleteSession(ctx context.Context, req *pb.DeleteSessionRequest) (*pb.DeleteSessionResponse, error) {
	if err := s.n.checkMutation(req.GetId(), req.GetRequestId(), nil); err != nil {
		return nil, err
	}
	if _, err := s.n.apply(ctx, command{Op: opDelete, ID: req.GetId(), RequestID: req.GetRequestId()}); err != nil {
		return nil, err
	}
	return &pb.DeleteSessionResponse{}, nil
}

// checkID refuses an id that is empty, too long or not visible ASCII.
func checkID(id string) error {
	if id == "" {
		return status.Error(codes.InvalidArgument, "id is empty: give the session id")
	}
	return checkChars("id", id, MaxIDBytes)
}

func (n *Node) checkMutation(id, requestID string, data []byte) error {
	if err := checkID(id); err != nil {
		return err
	}
	if requestID == "" {
		return status.Error(codes.InvalidArgument, "request_id is empty: every mutation needs a client-chosen idempotency key, reused only when retrying the same request")
	}
	if len(requestID) > MaxRequestIDBytes {
		return status.Errorf(codes.InvalidArgument, "request_id is %d bytes; the limit is %d bytes", len(requestID), MaxRequestIDBytes)
	}
	if len(data) > n.cfg.MaxValueBytes {
		return status.Errorf(codes.InvalidArgument, "data is %d bytes; the limit is %d bytes (the store's --max-value-bytes)", len(data), n.cfg.MaxValueBytes)
	}
	return nil
}

// apply routes cmd to its shard, stamps it with the time and the limits,
// and applies it.
func (n *Node) apply(ctx context.Context, cmd command) (outcome, error) {
	shard, err := n.shardFor(cmd.ID)
	if err != nil {
		return outcome{}, err
	}
	cmd.Shard = shard
	cmd.NowMs = n.store.nowMs(shard)
	cmd.Limits = n.limits()
	out, aerr := n.store.apply(ctx, cmd)
	if aerr != nil {
		if _, ok := status.FromError(aerr); ok {
			return outcome{}, aerr
		}
		n.log.WithError(aerr).WithField("shard", shard).Error("disk write failed")
		return outcome{}, status.Errorf(codes.Unavailable, "store node %q: disk write failed, nothing was applied: %v", n.ID(), aerr)
	}
	return out, out.err()
}

func (n *Node) limits() limits {
	return limits{
		EventRetention: n.cfg.EventRetention,
		MaxStreams:     n.cfg.MaxStreamsPerSession,
		MaxStateKeys:   MaxStateKeysPerSession,
		MaxTasks:       MaxTasksPerSession,
	}
}

// expire deletes an expired session found by a read (lazy expiry); a
// failure only delays the deletion (the leader's sweep gets it too).
func (n *Node) expire(ctx context.Context, shard int, id string, nowMs int64) {
	cmd := command{Op: opExpire, Shard: shard, ID: id, NowMs: nowMs, Limits: n.limits()}
	if _, err := n.store.apply(ctx, cmd); err != nil {
		n.log.WithError(err).Debug("could not delete an expired session")
	}
}

// viewSession runs fn in a read transaction of id's shard once it has
// checked that the session exists and is live: NOT_FOUND
// (SESSION_NOT_FOUND or SESSION_EXPIRED, which also deletes it) otherwise.
// A gRPC status fn returns is answered as is; any other error is a failed
// disk read.
func (n *Node) viewSession(ctx context.Context, id string, fn func(shardTx) error) error {
	shard, err := n.shardFor(id)
	if err != nil {
		return err
	}
	var missing, isExpired bool
	// The leader's clock at read time (never before the shard's).
	now := n.store.nowMs(shard)
	err = n.store.view(ctx, shard, func(st shardTx) error {
		rec, err := getRecord(st.existing(bkSessions), id)
		switch {
		case err != nil:
			return err
		case rec == nil:
			missing = true
			return nil
		case expired(rec, now):
			isExpired = true
			return nil
		}
		return fn(st)
	})
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return err
		}
		return status.Errorf(codes.Unavailable, "store node %q: disk read failed: %v", n.ID(), err)
	}
	switch {
	case missing:
		return statusNotFound(id).Err()
	case isExpired:
		n.expire(ctx, shard, id, now)
		return statusExpired(id).Err()
	}
	return nil
}

// shardFor returns the shard of id if this node hosts it, or the status
// to answer: UNAVAILABLE while starting, FAILED_PRECONDITION with a
// ShardHint when another node hosts it.
func (n *Node) shardFor(id string) (int, error) {
	r := n.route.Load()
	if r == nil {
		return 0, status.Errorf(codes.Unavailable, "store node %q is starting: it has not yet read the cluster config and shard map from etcd; retry shortly", n.ID())
	}
	if !n.leaseHeld() {
		return 0, status.Errorf(codes.Unavailable, "store node %q does not hold its membership lease in etcd (lost, or about to expire unrenewed); it serves again once registered again", n.ID())
	}
	shard := clusterstate.ShardOf(id, r.cluster.ShardCount)
	sh := r.shards[shard]
	if sh.Hosts(n.ID()) {
		return shard, nil
	}
	hint := &pb.ShardHint{Shard: uint32(shard)}
	target := sh.Preferred()
	msg := fmt.Sprintf("store node %q does not host shard %d", n.ID(), shard)
	switch {
	case target == "":
		msg += "; the shard map assigns it to no store yet"
	default:
		hint.NodeId = target
		if m, ok := r.stores[target]; ok {
			hint.Addr = m.Addr
			msg += fmt.Sprintf("; store %q at %s does", target, m.Addr)
		} else {
			msg += fmt.Sprintf("; the shard map names store %q, which is not registered", target)
		}
	}
	return 0, statusWrongShard(hint, msg).Err()
}
