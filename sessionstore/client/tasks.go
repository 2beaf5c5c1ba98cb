package client

import (
	"context"
	"fmt"
	"math"
	"time"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
)

// Task is one MCP task's record. The store does not interpret Status or
// Result.
type Task struct {
	ID, Status, StatusMessage, Owner string
	Result, Data                     []byte
	// CreatedAt is set by the store at the first write and kept;
	// UpdatedAt at every write. Values given to PutTask are ignored.
	CreatedAt, UpdatedAt time.Time
	// TTL is how long a finished task is kept (0: as long as its session).
	TTL time.Duration
	// Version starts at 1 and grows by one per write (set by the store).
	Version uint64
}

func taskToPB(t Task) *pb.Task {
	ttl := t.TTL.Milliseconds()
	if t.TTL > 0 && ttl == 0 {
		ttl = 1
	}
	return &pb.Task{
		TaskId: t.ID, Status: t.Status, StatusMessage: t.StatusMessage, Result: t.Result,
		Owner: t.Owner, TtlMs: ttl, Data: t.Data,
	}
}

func taskFromPB(t *pb.Task) Task {
	return Task{
		ID: t.GetTaskId(), Status: t.GetStatus(), StatusMessage: t.GetStatusMessage(), Owner: t.GetOwner(),
		Result: t.GetResult(), Data: t.GetData(),
		CreatedAt: time.UnixMilli(t.GetCreatedAtUnixMs()), UpdatedAt: time.UnixMilli(t.GetUpdatedAtUnixMs()),
		TTL: time.Duration(t.GetTtlMs()) * time.Millisecond, Version: t.GetVersion(),
	}
}

// PutTask creates or replaces the task t.ID and returns it as stored.
// expectedVersion: nil = unconditional; pointer to 0 = only if absent;
// pointer to n = only if at version n (else ErrVersionConflict). A new task
// beyond the store's per-session limit is ErrLimitExceeded.
func (c *Client) PutTask(ctx context.Context, sessionID string, t Task, expectedVersion *uint64) (Task, error) {
	req := &pb.PutTaskRequest{SessionId: sessionID, Task: taskToPB(t), RequestId: newRequestID()}
	if expectedVersion != nil {
		v := *expectedVersion
		req.ExpectedVersion = &v
	}
	resp, err := call(ctx, c, "PutTask", fmt.Sprintf("put task %q of", t.ID), sessionID, 0, func(ctx context.Context, sc pb.SessionStoreServiceClient) (*pb.PutTaskResponse, error) {
		return sc.PutTask(ctx, req)
	})
	if err != nil {
		return Task{}, err
	}
	return taskFromPB(resp.GetTask()), nil
}

// GetTask reads one task. ErrNotFound when the task is absent
// (ErrSessionNotFound as well when the session is).
func (c *Client) GetTask(ctx context.Context, sessionID, taskID string) (Task, error) {
	req := &pb.GetTaskRequest{SessionId: sessionID, TaskId: taskID}
	resp, err := call(ctx, c, "GetTask", fmt.Sprintf("get task %q of", taskID), sessionID, 0, func(ctx context.Context, sc pb.SessionStoreServiceClient) (*pb.GetTaskResponse, error) {
		return sc.GetTask(ctx, req)
	})
	if err != nil {
		return Task{}, err
	}
	return taskFromPB(resp.GetTask()), nil
}

// ListTasks returns up to limit tasks with ids after afterTaskID, in id
// order (limit 0: the store's default, 100; at most 1000), and the id to
// pass as afterTaskID for the next page ("" when there are no more).
func (c *Client) ListTasks(ctx context.Context, sessionID, afterTaskID string, limit int) ([]Task, string, error) {
	req := &pb.ListTasksRequest{SessionId: sessionID, AfterTaskId: afterTaskID, Limit: uint32(min(max(int64(limit), 0), math.MaxUint32))}
	resp, err := call(ctx, c, "ListTasks", "list tasks of", sessionID, 0, func(ctx context.Context, sc pb.SessionStoreServiceClient) (*pb.ListTasksResponse, error) {
		return sc.ListTasks(ctx, req)
	})
	if err != nil {
		return nil, "", err
	}
	out := make([]Task, len(resp.GetTasks()))
	for i, t := range resp.GetTasks() {
		out[i] = taskFromPB(t)
	}
	return out, resp.GetNextAfterTaskId(), nil
}
