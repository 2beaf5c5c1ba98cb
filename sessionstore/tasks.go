package sessionstore

import (
	"bytes"
	"context"
	"fmt"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Task limits.
const (
	MaxTaskIDBytes     = 256
	MaxTaskStatusBytes = 256
	MaxTaskOwnerBytes  = 256
	MaxTasksPerSession = 10_000
	// DefaultListTasksLimit is ListTasks' page size when the request sets
	// 0; MaxListTasksLimit the largest page.
	DefaultListTasksLimit = 100
	MaxListTasksLimit     = 1000
)

func getTaskRecord(st shardTx, id, taskID string) (*pb.Task, error) {
	b := st.existing(bkTasks)
	if b == nil {
		return nil, nil
	}
	v := b.Get(childKey(id, taskID))
	if v == nil {
		return nil, nil
	}
	t := &pb.Task{}
	if err := proto.Unmarshal(v, t); err != nil {
		return nil, fmt.Errorf("decode stored task %q of session %q: %w", taskID, id, err)
	}
	return t, nil
}

// putTask writes cmd.Task at the next version, if cmd.ExpectedVersion
// matches when set (0: the task must be absent). created_at is kept from the
// first write; updated_at is the command's time.
func putTask(st shardTx, cmd command) (outcome, error) {
	b, err := st.bucket(bkTasks)
	if err != nil {
		return outcome{}, err
	}
	taskID := cmd.Task.GetTaskId()
	cur, err := getTaskRecord(st, cmd.ID, taskID)
	if err != nil {
		return outcome{}, err
	}
	var curVersion uint64
	created := cmd.NowMs
	if cur != nil {
		curVersion, created = cur.Version, cur.CreatedAtUnixMs
	}
	if cmd.HasExpected && cmd.ExpectedVersion != curVersion {
		return outcome{Status: statusItemConflict(cmd.ID, "task", taskID, cmd.ExpectedVersion, curVersion)}, nil
	}
	if cur == nil {
		metaB, meta, err := loadMeta(st, cmd.ID)
		if err != nil {
			return outcome{}, err
		}
		if meta.Tasks >= cmd.Limits.MaxTasks {
			return outcome{Status: statusLimit(cmd.ID, "tasks_per_session", cmd.Limits.MaxTasks,
				fmt.Sprintf("cannot add task %q: the session has %d tasks", taskID, meta.Tasks))}, nil
		}
		meta.Tasks++
		if err := saveMeta(metaB, cmd.ID, meta); err != nil {
			return outcome{}, err
		}
	}
	t := proto.Clone(cmd.Task).(*pb.Task)
	t.CreatedAtUnixMs, t.UpdatedAtUnixMs, t.Version = created, cmd.NowMs, curVersion+1
	v, err := proto.MarshalOptions{Deterministic: true}.Marshal(t)
	if err != nil {
		return outcome{}, err
	}
	if err := b.Put(childKey(cmd.ID, taskID), v); err != nil {
		return outcome{}, err
	}
	return outcome{Task: t}, nil
}

// listTasks returns up to limit tasks with ids after afterID, in id order,
// and the id to continue after ("" when there are no more).
func listTasks(st shardTx, id, afterID string, limit int) ([]*pb.Task, string, error) {
	b := st.existing(bkTasks)
	if b == nil {
		return nil, "", nil
	}
	prefix := childPrefix(id)
	c := b.Cursor()
	k, v := c.Seek(childKey(id, afterID))
	if afterID != "" && k != nil && string(k[len(prefix):]) == afterID && bytes.HasPrefix(k, prefix) {
		k, v = c.Next()
	}
	var out []*pb.Task
	size := 0
	for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if len(out) == limit || (len(out) > 0 && size+len(v) > readBudgetBytes) {
			return out, out[len(out)-1].TaskId, nil
		}
		t := &pb.Task{}
		if err := proto.Unmarshal(v, t); err != nil {
			return nil, "", fmt.Errorf("decode stored task %q of session %q: %w", k[len(prefix):], id, err)
		}
		size += len(v)
		out = append(out, t)
	}
	return out, "", nil
}

func (n *Node) checkTask(t *pb.Task) error {
	if t == nil {
		return status.Error(codes.InvalidArgument, "task is missing")
	}
	if err := checkName("task_id", t.GetTaskId(), MaxTaskIDBytes); err != nil {
		return err
	}
	if len(t.GetStatus()) > MaxTaskStatusBytes {
		return status.Errorf(codes.InvalidArgument, "task status is %d bytes; the limit is %d bytes", len(t.GetStatus()), MaxTaskStatusBytes)
	}
	if len(t.GetOwner()) > MaxTaskOwnerBytes {
		return status.Errorf(codes.InvalidArgument, "task owner is %d bytes; the limit is %d bytes", len(t.GetOwner()), MaxTaskOwnerBytes)
	}
	if t.GetTtlMs() < 0 {
		return status.Errorf(codes.InvalidArgument, "task ttl_ms %d: must be 0 (kept as long as its session) or positive", t.GetTtlMs())
	}
	if size := len(t.GetResult()) + len(t.GetData()) + len(t.GetStatusMessage()); size > n.cfg.MaxValueBytes {
		return status.Errorf(codes.InvalidArgument, "task result, data and status_message are %d bytes in all; the limit is %d bytes (the store's --max-value-bytes)", size, n.cfg.MaxValueBytes)
	}
	return nil
}

func (s *service) PutTask(ctx context.Context, req *pb.PutTaskRequest) (*pb.PutTaskResponse, error) {
	if err := s.n.checkMutation(req.GetSessionId(), req.GetRequestId(), nil); err != nil {
		return nil, err
	}
	if err := s.n.checkTask(req.GetTask()); err != nil {
		return nil, err
	}
	// The store sets these; clear them so a retry that differs only in
	// them is the same request.
	t := proto.Clone(req.GetTask()).(*pb.Task)
	t.CreatedAtUnixMs, t.UpdatedAtUnixMs, t.Version = 0, 0, 0
	out, err := s.n.apply(ctx, command{
		Op: opPutTask, ID: req.GetSessionId(), Task: t,
		HasExpected: req.ExpectedVersion != nil, ExpectedVersion: req.GetExpectedVersion(),
		RequestID: req.GetRequestId(),
	})
	if err != nil {
		return nil, err
	}
	return &pb.PutTaskResponse{Task: out.Task}, nil
}

func (s *service) GetTask(ctx context.Context, req *pb.GetTaskRequest) (*pb.GetTaskResponse, error) {
	id, taskID := req.GetSessionId(), req.GetTaskId()
	if err := checkID(id); err != nil {
		return nil, err
	}
	if err := checkName("task_id", taskID, MaxTaskIDBytes); err != nil {
		return nil, err
	}
	var t *pb.Task
	err := s.n.viewSession(ctx, id, func(st shardTx) error {
		var err error
		t, err = getTaskRecord(st, id, taskID)
		return err
	})
	if err != nil {
		return nil, err
	}
	if t == nil {
		return nil, statusTaskNotFound(id, taskID).Err()
	}
	return &pb.GetTaskResponse{Task: t}, nil
}

func (s *service) ListTasks(ctx context.Context, req *pb.ListTasksRequest) (*pb.ListTasksResponse, error) {
	id := req.GetSessionId()
	if err := checkID(id); err != nil {
		return nil, err
	}
	if err := checkChars("after_task_id", req.GetAfterTaskId(), MaxTaskIDBytes); err != nil {
		return nil, err
	}
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = DefaultListTasksLimit
	}
	limit = min(limit, MaxListTasksLimit)
	resp := &pb.ListTasksResponse{}
	err := s.n.viewSession(ctx, id, func(st shardTx) error {
		var err error
		resp.Tasks, resp.NextAfterTaskId, err = listTasks(st, id, req.GetAfterTaskId(), limit)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}
