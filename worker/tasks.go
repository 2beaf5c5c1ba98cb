package worker

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Tasks (MCP 2025-11-25, experimental): a task-augmented tools/call is
// answered at once with a task; the tool runs on in the background on the
// worker that received it, and its state and result live in the store
// (PutTask), so tasks/get, tasks/result, tasks/list and tasks/cancel work
// on any worker. A task whose worker left membership while it was working
// is failed by whichever worker looks at it next.

// Task statuses.
const (
	taskWorking   = "working"
	taskCompleted = "completed"
	taskFailed    = "failed"
	taskCancelled = "cancelled"
)

// DefaultTaskTTL is how long a task is kept when the client asks for none.
const DefaultTaskTTL = time.Hour

// taskPollInterval is the pollInterval suggested to clients.
const taskPollInterval = 500 * time.Millisecond

func terminal(status string) bool {
	return status == taskCompleted || status == taskFailed || status == taskCancelled
}

// taskStream is the stream a task's completion is announced on, so
// tasks/result can long-poll.
func taskStream(id string) string { return "t/" + id }

// taskCancelID is the id a task's cancellation carries on the control
// stream.
func taskCancelID(id string) json.RawMessage {
	b, _ := json.Marshal("task:" + id)
	return b
}

// wireTask is a Task as MCP sends it.
func wireTask(t Task) map[string]any { return taskFields(t, "ttl", "pollInterval") }

// taskFields is a Task on the wire, its TTL and poll interval (integer ms)
// under the names ttlKey and pollKey.
func taskFields(t Task, ttlKey, pollKey string) map[string]any {
	m := map[string]any{
		"taskId":        t.ID,
		"status":        t.Status,
		"createdAt":     t.CreatedAt.UTC().Format(time.RFC3339Nano),
		"lastUpdatedAt": t.UpdatedAt.UTC().Format(time.RFC3339Nano),
		ttlKey:          t.TTL.Milliseconds(),
		pollKey:         taskPollInterval.Milliseconds(),
	}
	if t.StatusMessage != "" {
		m["statusMessage"] = t.StatusMessage
	}
	return m
}

// startTask creates the task, answers with it, and runs the tool in the
// background.
func startTask(ctx context.Context, c *call, t *tool, p toolCallParams) (any, *Error) {
	if t.support == "forbidden" {
		return nil, errorf(CodeMethodNotFound, "Tool %q does not run as a task", t.def.Name)
	}
	var tp struct {
		TTL *int64 `json:"ttl"`
	}
	_ = json.Unmarshal(p.Task, &tp)
	ttl := DefaultTaskTTL
	if tp.TTL != nil && *tp.TTL > 0 {
		ttl = time.Duration(*tp.TTL) * time.Millisecond
	}
	h, sid := c.h, c.session.id
	zero := uint64(0)
	task, err := h.store.PutTask(ctx, sid, Task{ID: randomHex(16), Status: taskWorking, Owner: h.cfg.Common.ID, TTL: ttl}, &zero)
	if err != nil {
		c.storeErr = err
		return nil, nil
	}
	// The tool runs beyond this HTTP request, bounded by CallTimeout; its
	// messages go to the session's standalone stream.
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.cfg.CallTimeout)
	tctx, done, err := h.trackNow(bg, sid, taskCancelID(task.ID), "")
	if err != nil {
		cancel()
		c.storeErr = err
		return nil, nil
	}
	out := &outbox{h: h, sid: sid, stream: streamGet}
	bc := &call{h: h, session: c.session, msg: c.msg}
	bc.req = &Request{h: h, sess: c.session, id: c.msg.ID, method: c.msg.Method, out: out, started: time.Now()}
	go func() {
		defer cancel()
		defer done()
		defer out.close()
		res, rerr := runTool(tctx, bc, t, p.Arguments)
		h.finishTask(context.WithoutCancel(bg), sid, task.ID, res, rerr, bc.storeErr, context.Cause(tctx))
	}()
	return map[string]any{"task": wireTask(task)}, nil
}

// finishTask stores the outcome unless the task ended meanwhile
// (cancelled); nothing is left to tell the tool when the store fails.
func (h *Handler) finishTask(ctx context.Context, sid, id string, res any, rerr *Error, serr, cause error) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.RequestTimeout)
	defer cancel()
	ended := false
	err := h.updateTask(ctx, sid, id, func(t *Task) bool {
		if terminal(t.Status) {
			ended = true
			return false
		}
		switch {
		case errors.Is(cause, errCancelled):
			t.Status, t.StatusMessage = taskCancelled, "cancelled by the client"
		case serr != nil:
			t.Status, t.StatusMessage = taskFailed, "session store failure: "+serr.Error()
		case rerr != nil:
			t.Status, t.StatusMessage = taskFailed, rerr.Message
			t.Data, _ = json.Marshal(rerr)
		default:
			t.Status = taskCompleted
			t.Result, _ = json.Marshal(res)
		}
		return true
	})
	if err == nil && ended {
		// The task had ended already (a cancel, the death sweep): the
		// tool's own end is still an event on the task's stream.
		_, _ = h.store.AppendEvents(ctx, sid, taskStream(id), []byte(`{}`))
	}
}

// loadTask reads a task, failing it when its worker is gone.
func (c *call) loadTask(ctx context.Context) (Task, *Error) {
	var p struct {
		TaskID string `json:"taskId"`
	}
	if e := decodeParams(c.msg.Params, &p); e != nil {
		return Task{}, e
	}
	if p.TaskID == "" {
		return Task{}, errorf(CodeInvalidParams, `Invalid params: needs a "taskId"`)
	}
	t, err := c.h.store.GetTask(ctx, c.session.id, p.TaskID)
	if err != nil {
		if errors.Is(err, ErrNotFound) && !errors.Is(err, ErrSessionNotFound) {
			return Task{}, errorf(CodeInvalidParams, "Unknown task %q", p.TaskID)
		}
		c.storeErr = err
		return Task{}, nil
	}
	if !terminal(t.Status) && c.h.alive != nil && !c.h.alive(t.Owner) {
		version := t.Version
		t.Status, t.StatusMessage = taskFailed, "the worker running this task stopped; retry it"
		t.Data, _ = json.Marshal(errorf(CodeWorkerLost, "the worker running this task stopped; retry it"))
		nt, err := c.h.store.PutTask(ctx, c.session.id, t, &version)
		switch {
		case err == nil:
			t = nt
		case errors.Is(err, ErrVersionConflict):
			// Changed meanwhile (finished, or failed by another
			// worker): read it again.
			return c.loadTask(ctx)
		default:
			// Not again on a store that refuses writes: a loop of
			// reads and failed writes until the context ends.
			c.storeErr = err
			return Task{}, nil
		}
	}
	return t, nil
}

func methodTaskGet(ctx context.Context, c *call) (any, *Error) {
	t, e := c.loadTask(ctx)
	if e != nil || c.storeErr != nil {
		return nil, e
	}
	return wireTask(t), nil
}

// methodTaskResult waits for the task to end and answers with the tool's
// result (or its error).
func methodTaskResult(ctx context.Context, c *call) (any, *Error) {
	for {
		t, e := c.loadTask(ctx)
		if e != nil || c.storeErr != nil {
			return nil, e
		}
		if terminal(t.Status) {
			meta := map[string]any{"io.modelcontextprotocol/related-task": map[string]any{"taskId": t.ID}}
			switch {
			case len(t.Result) > 0:
				var res map[string]any
				_ = json.Unmarshal(t.Result, &res)
				res["_meta"] = meta
				return res, nil
			case len(t.Data) > 0:
				var je Error
				_ = json.Unmarshal(t.Data, &je)
				return nil, &je
			}
			return nil, errorf(CodeInternalError, "Task %s ended %s: %s", t.ID, t.Status, t.StatusMessage)
		}
		if _, err := c.h.store.ReadEvents(ctx, c.session.id, taskStream(t.ID), 0, 1, c.h.cfg.PollWait); err != nil {
			if ctx.Err() != nil {
				return nil, errorf(CodeInternalError, "Task %s did not end in time; call tasks/result again", t.ID)
			}
			c.storeErr = err
			return nil, nil
		}
	}
}

func methodTaskList(ctx context.Context, c *call) (any, *Error) {
	var p struct {
		Cursor string `json:"cursor"`
	}
	if e := decodeParams(c.msg.Params, &p); e != nil {
		return nil, e
	}
	tasks, next, err := c.h.store.ListTasks(ctx, c.session.id, p.Cursor, 100)
	if err != nil {
		c.storeErr = err
		return nil, nil
	}
	out := make([]map[string]any, 0, len(tasks))
	for _, t := range tasks {
		out = append(out, wireTask(t))
	}
	res := map[string]any{"tasks": out}
	if next != "" {
		res["nextCursor"] = next
	}
	return res, nil
}

// methodTaskCancel marks the task cancelled and tells its worker, through
// the control stream, to cancel the tool's context.
func methodTaskCancel(ctx context.Context, c *call) (any, *Error) {
	for range maxUpdateAttempts {
		t, e := c.loadTask(ctx)
		if e != nil || c.storeErr != nil {
			return nil, e
		}
		if terminal(t.Status) {
			return nil, errorf(CodeInvalidParams, "Task %s already ended (%s)", t.ID, t.Status)
		}
		version := t.Version
		t.Status, t.StatusMessage = taskCancelled, "cancelled by the client"
		nt, err := c.h.store.PutTask(ctx, c.session.id, t, &version)
		if errors.Is(err, ErrVersionConflict) {
			continue
		}
		if err != nil {
			c.storeErr = err
			return nil, nil
		}
		b, _ := json.Marshal(ctlEvent{Cancel: taskCancelID(t.ID), Reason: "tasks/cancel"})
		if _, err := c.h.store.AppendEvents(ctx, c.session.id, streamCtl, b); err != nil {
			c.storeErr = err
			return nil, nil
		}
		_, _ = c.h.store.AppendEvents(ctx, c.session.id, taskStream(t.ID), []byte(`{}`))
		return wireTask(nt), nil
	}
	return nil, errorf(CodeInternalError, "Task kept changing; retry tasks/cancel")
}
