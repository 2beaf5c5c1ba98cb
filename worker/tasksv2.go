package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"
)

// Tasks v2: the io.modelcontextprotocol/tasks extension (SEP-2663) over
// sessionless MCP 2026-07-28. A client opts in per request by declaring
// the extension in _meta's client capabilities; the server (the tool,
// through Request.ContinueAsTask) decides whether a tools/call becomes a
// task. A task has no session to live in, so each gets its own record in
// the session store (tasksV2SessionID) holding the task, its
// in-flight record and its event streams: tasks/get, tasks/update and
// tasks/cancel work on any worker, and the death sweep fails the task of
// a worker that died, as for 2025-11-25 tasks (tasks.go). The task id is
// 128 random bits and is the only handle on the task; its record's id
// also hashes in the authenticated principal, so another principal finds
// no task under the same id (unknown, as a task that never existed).
//
// A task that needs the client's input (MRTR inside a task) is parked in
// status input_required with its inputRequests in the stored task; the
// client answers with tasks/update on any worker, and when every pending
// input is answered the worker running the task runs the continuation
// again with all the answers, as a sessionless MRTR retry would.

// TasksExtension is the extension id of tasks v2.
const TasksExtension = "io.modelcontextprotocol/tasks"

// taskInputRequired is the v2 status of a task waiting for the client.
const taskInputRequired = "input_required"

// tasksV2SessionPrefix starts the store record ids of v2 tasks; session
// ids of ours are plain hex, so they never meet.
const tasksV2SessionPrefix = "task2-"

// tasksV2SessionID is the store record of task taskID of principal ("" with
// auth off).
func tasksV2SessionID(principal, taskID string) string {
	sum := sha256.Sum256([]byte(principal + "\x00" + taskID))
	return tasksV2SessionPrefix + hex.EncodeToString(sum[:16])
}

// taskV2Inputs is a v2 task's Data while it is not failed: the inputs it
// waits for and the answers delivered so far. A failed task's Data is its
// JSON-RPC error, as for 2025-11-25 tasks (the death sweep writes it).
type taskV2Inputs struct {
	Requests  map[string]inputRequest    `json:"inputRequests,omitempty"`
	Responses map[string]json.RawMessage `json:"inputResponses,omitempty"`
}

// taskCreated is what ContinueAsTask returns when it created a task:
// runTool answers the tools/call with its CreateTaskResult.
type taskCreated struct{ result map[string]any }

func (*taskCreated) Error() string { return "the tool continues as a task" }

// TaskFunc is the part of a tool that runs as a task.
type TaskFunc func(ctx context.Context, req *Request) (*ToolResult, error)

// ContinueAsTask runs fn as a v2 task when the request is a sessionless
// tools/call whose client declared the tasks extension: the task is
// created in the store (durably, before the client hears of it), fn runs
// in the background on this worker, and the handler must return what
// ContinueAsTask returns, which answers the call with a CreateTaskResult.
// Otherwise fn runs now, in the request. Inputs asked for before the call
// are sessionless MRTR rounds; inside the task, Request.Input parks the
// task in input_required until tasks/update brings the answers, and fn is
// then run again with them, so fn must be safe to repeat up to its inputs.
func (r *Request) ContinueAsTask(ctx context.Context, fn TaskFunc) (*ToolResult, error) {
	if !r.Sessionless() || r.method != "tools/call" || !r.clientHas("extensions", TasksExtension) {
		return fn(ctx, r)
	}
	h := r.h
	now := time.Now()
	task := Task{ID: randomHex(16), Status: taskWorking, Owner: h.cfg.Common.ID, TTL: DefaultTaskTTL, CreatedAt: now, UpdatedAt: now}
	sid := tasksV2SessionID(principalOf(ctx), task.ID)
	rec := sessionRecord{V: sessionRecordVersion, ProtocolVersion: ModernProtocolVersion,
		ClientCapabilities: r.sess.rec.ClientCapabilities, ClientInfo: r.sess.rec.ClientInfo,
		CreatedBy: h.cfg.Common.ID, Principal: principalOf(ctx)}
	// The record outlives a finished task by its TTL (every write to the
	// task refreshes the idle timer).
	if _, err := h.store.Create(ctx, sid, rec.encode(), task.TTL); err != nil {
		return nil, fmt.Errorf("create the task's record: %w", err)
	}
	zero := uint64(0)
	task, err := h.store.PutTask(ctx, sid, task, &zero)
	if err != nil {
		return nil, fmt.Errorf("store the task: %w", err)
	}
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.cfg.CallTimeout)
	sess := &session{id: sid, rec: rec}
	go func() {
		defer cancel()
		// Tracked in the background, off the client's wait: tasks/cancel
		// on any worker reaches the watch, and the death sweep finds the
		// task if this worker dies (until then a reader fails it lazily).
		tctx, done, err := h.trackNow(bg, sid, taskCancelID(task.ID), "")
		if err != nil {
			h.finishTask(bg, sid, task.ID, nil, nil, fmt.Errorf("track the task: %w", err), nil)
			return
		}
		defer done()
		// A cancellation stored before the watch began is not in its
		// view of the control stream (tasks/cancel stores the status
		// first, then the event), but it is in the task.
		if t, err := h.store.GetTask(tctx, sid, task.ID); err == nil && terminal(t.Status) {
			return
		}
		res, rerr, serr := h.runTaskV2(tctx, sess, task.ID, r, fn)
		var out any
		if res != nil {
			out = res
		}
		h.finishTask(context.WithoutCancel(bg), sid, task.ID, out, rerr, serr, context.Cause(tctx))
	}()
	created := wireTaskV2(task)
	created["resultType"] = "task"
	return nil, &taskCreated{result: created}
}

// runTaskV2 runs fn until it ends, parking the task for the client's input
// whenever a round asks for some. It returns the result, or a JSON-RPC
// error, or a store failure.
func (h *Handler) runTaskV2(ctx context.Context, sess *session, taskID string, orig *Request, fn TaskFunc) (res *ToolResult, rerr *Error, serr error) {
	answers := map[string]json.RawMessage{}
	for {
		mr := &mrtr{responses: maps.Clone(answers), pending: map[string]inputRequest{}}
		req := &Request{h: h, sess: sess, id: orig.id, method: orig.method, out: &outbox{h: h, direct: true}, mrtr: mr, started: time.Now()}
		r, err := safeTaskRun(ctx, req, fn)
		if len(mr.pending) == 0 || (err != nil && !errors.Is(err, ErrInputRequired)) {
			return toolOutcome(r, err)
		}
		got, err := h.awaitTaskInputs(ctx, sess.id, taskID, mr.pending)
		if err != nil {
			if ctx.Err() != nil {
				// finishTask records a cancellation as such; this error
				// is for a task that ran out of time.
				return nil, errorf(CodeInternalError, "Internal error: the task ended while waiting for input: %v", context.Cause(ctx)), nil
			}
			return nil, nil, err
		}
		maps.Copy(answers, got)
	}
}

// safeTaskRun runs fn, turning a panic into an internal error: a task runs
// outside any HTTP handler, where a panic would end the worker.
func safeTaskRun(ctx context.Context, req *Request, fn TaskFunc) (res *ToolResult, err error) {
	defer func() {
		if p := recover(); p != nil {
			res, err = nil, errorf(CodeInternalError, "Internal error: the task panicked: %v", p)
		}
	}()
	return fn(ctx, req)
}

// toolOutcome maps a tool's return, for a task (runTaskV2) and for a call
// (runTool, after the errors only a call has): a *Error is a protocol
// error (the task fails), a store failure is returned as such (the task
// fails; a call is answered as the store's failure), any other error is a
// tool result with isError (the task completes).
func toolOutcome(res *ToolResult, err error) (*ToolResult, *Error, error) {
	var je *Error
	switch {
	case err == nil:
		if res == nil {
			res = &ToolResult{Content: []Content{}}
		}
		return res, nil, nil
	case errors.As(err, &je):
		return nil, je, nil
	case errors.Is(err, ErrSessionNotFound), errors.Is(err, ErrStoreUnavailable):
		return nil, nil, err
	}
	return &ToolResult{Content: []Content{TextContent(err.Error())}, IsError: true}, nil, nil
}

// awaitTaskInputs parks the task in input_required with pending and waits
// until tasks/update has answered all of them; it returns the answers.
func (h *Handler) awaitTaskInputs(ctx context.Context, sid, taskID string, pending map[string]inputRequest) (map[string]json.RawMessage, error) {
	// The stream's end before parking: any later update wakes the wait.
	ev, err := h.store.ReadEvents(ctx, sid, taskStream(taskID), 0, 1, 0)
	if err != nil {
		return nil, err
	}
	after := ev.LastSeq
	if err := h.updateTask(ctx, sid, taskID, func(t *Task) bool {
		if terminal(t.Status) {
			return false
		}
		t.Status, t.StatusMessage = taskInputRequired, "waiting for the client's input (tasks/update)"
		t.Data, _ = json.Marshal(taskV2Inputs{Requests: pending})
		return true
	}); err != nil {
		return nil, err
	}
	for {
		t, err := h.store.GetTask(ctx, sid, taskID)
		if err != nil {
			return nil, err
		}
		if terminal(t.Status) {
			return nil, fmt.Errorf("task %s ended (%s) while waiting for input: %w", taskID, t.Status, context.Canceled)
		}
		if t.Status == taskWorking {
			var in taskV2Inputs
			_ = json.Unmarshal(t.Data, &in)
			return in.Responses, nil
		}
		ev, err := h.store.ReadEvents(ctx, sid, taskStream(taskID), after, 16, h.cfg.PollWait)
		if err != nil {
			return nil, err
		}
		after = max(after, ev.LastSeq)
	}
}

// updateTask applies change to the stored task with compare-and-set,
// retrying on conflicts; change returns false to leave the task as is.
// A change made wakes whoever waits on the task's stream. Used by both
// task versions and the death sweep.
func (h *Handler) updateTask(ctx context.Context, sid, taskID string, change func(*Task) bool) error {
	for range maxUpdateAttempts {
		t, err := h.store.GetTask(ctx, sid, taskID)
		if err != nil {
			return err
		}
		if !change(&t) {
			return nil
		}
		version := t.Version
		if _, err := h.store.PutTask(ctx, sid, t, &version); errors.Is(err, ErrVersionConflict) {
			continue
		} else if err != nil {
			return err
		}
		_, err = h.store.AppendEvents(ctx, sid, taskStream(taskID), []byte(`{}`))
		return err
	}
	return fmt.Errorf("%w: task %s kept changing", ErrStoreUnavailable, taskID)
}

// wireTaskV2 is a Task as tasks v2 sends it: wireTask's fields, with the
// durations' names ending in Ms.
func wireTaskV2(t Task) map[string]any { return taskFields(t, "ttlMs", "pollIntervalMs") }

// detailedTaskV2 is tasks/get's answer: the task with its result (when
// completed), its error (when failed) or its inputRequests (when waiting).
func detailedTaskV2(t Task) map[string]any {
	m := wireTaskV2(t)
	switch t.Status {
	case taskCompleted:
		var res map[string]any
		if json.Unmarshal(t.Result, &res) != nil || res == nil {
			res = map[string]any{"content": []any{}}
		}
		m["result"] = res
	case taskFailed:
		var e Error
		if json.Unmarshal(t.Data, &e) != nil || e.Code == 0 {
			e = Error{Code: CodeInternalError, Message: t.StatusMessage}
		}
		m["error"] = e
	case taskInputRequired:
		var in taskV2Inputs
		_ = json.Unmarshal(t.Data, &in)
		reqs := in.Requests
		if reqs == nil {
			reqs = map[string]inputRequest{}
		}
		m["inputRequests"] = reqs
	}
	return m
}

// tasksV2Gate answers -32021 when the request did not declare the tasks
// extension: tasks/* exist only for clients that negotiated it.
func tasksV2Gate(c *call) *Error {
	if c.req != nil && c.req.clientHas("extensions", TasksExtension) {
		return nil
	}
	return missingTasksExtension(c.msg.Method + " needs the " + TasksExtension + " extension in the request's client capabilities")
}

// missingTasksExtension is the -32021 error naming the tasks extension.
func missingTasksExtension(message string) *Error {
	return &Error{Code: CodeMissingClientCapability, Message: message,
		Data: map[string]any{"requiredCapabilities": map[string]any{"extensions": map[string]any{TasksExtension: map[string]any{}}}}}
}

// taskV2Params are the params of tasks/get, tasks/update and tasks/cancel.
type taskV2Params struct {
	TaskID         string          `json:"taskId"`
	InputResponses json.RawMessage `json:"inputResponses"`
}

// loadTaskV2 gates the request, reads its params and the task, failing a
// task whose worker left membership while it ran. Unknown ids are -32602.
func (c *call) loadTaskV2(ctx context.Context) (Task, taskV2Params, *Error) {
	var p taskV2Params
	if e := tasksV2Gate(c); e != nil {
		return Task{}, p, e
	}
	if e := decodeParams(c.msg.Params, &p); e != nil {
		return Task{}, p, e
	}
	if p.TaskID == "" {
		return Task{}, p, errorf(CodeInvalidParams, `Invalid params: needs a string "taskId"`)
	}
	sid := tasksV2SessionID(principalOf(ctx), p.TaskID)
	t, err := c.h.store.GetTask(ctx, sid, p.TaskID)
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrSessionNotFound):
		return Task{}, p, errorf(CodeInvalidParams, "Unknown task %q", p.TaskID)
	case err != nil:
		c.storeErr = err
		return Task{}, p, nil
	}
	if !terminal(t.Status) && c.h.alive != nil && !c.h.alive(t.Owner) {
		if err := c.h.failOrphanTask(ctx, sid, t.ID, t.Owner); err != nil {
			c.storeErr = err
			return Task{}, p, nil
		}
		if t, err = c.h.store.GetTask(ctx, sid, p.TaskID); err != nil {
			c.storeErr = err
			return Task{}, p, nil
		}
	}
	return t, p, nil
}

// methodTaskGetV2 answers tasks/get with the DetailedTask.
func methodTaskGetV2(ctx context.Context, c *call) (any, *Error) {
	t, _, e := c.loadTaskV2(ctx)
	if e != nil || c.storeErr != nil {
		return nil, e
	}
	return detailedTaskV2(t), nil
}

// methodTaskUpdateV2 delivers inputResponses to a task waiting for them;
// answers to inputs the task does not wait for are ignored. The answer is
// an empty ack: the task's new state is for tasks/get to tell.
func methodTaskUpdateV2(ctx context.Context, c *call) (any, *Error) {
	t, p, e := c.loadTaskV2(ctx)
	if e != nil || c.storeErr != nil {
		return nil, e
	}
	var responses map[string]json.RawMessage
	if len(p.InputResponses) == 0 || p.InputResponses[0] != '{' || json.Unmarshal(p.InputResponses, &responses) != nil {
		return nil, errorf(CodeInvalidParams, "Invalid params: inputResponses must be an object of responses")
	}
	for k, v := range responses {
		if len(v) == 0 || v[0] != '{' {
			return nil, errorf(CodeInvalidParams, "Invalid params: inputResponses[%q] must be a result object", k)
		}
	}
	sid := tasksV2SessionID(principalOf(ctx), t.ID)
	err := c.h.updateTask(ctx, sid, t.ID, func(t *Task) bool {
		if t.Status != taskInputRequired {
			return false
		}
		var in taskV2Inputs
		_ = json.Unmarshal(t.Data, &in)
		changed := false
		for k, v := range responses {
			if _, waiting := in.Requests[k]; !waiting {
				continue
			}
			if in.Responses == nil {
				in.Responses = map[string]json.RawMessage{}
			}
			in.Responses[k], changed = v, true
			delete(in.Requests, k)
		}
		if !changed {
			return false
		}
		if len(in.Requests) == 0 {
			t.Status, t.StatusMessage = taskWorking, ""
		}
		t.Data, _ = json.Marshal(in)
		return true
	})
	if err != nil {
		c.storeErr = err
		return nil, nil
	}
	return map[string]any{}, nil
}

// methodTaskCancelV2 cancels a task that has not ended and tells its
// worker, through the control stream, to stop it; a task already ended
// gets the same empty ack (cancel is idempotent).
func methodTaskCancelV2(ctx context.Context, c *call) (any, *Error) {
	t, _, e := c.loadTaskV2(ctx)
	if e != nil || c.storeErr != nil {
		return nil, e
	}
	if terminal(t.Status) {
		return map[string]any{}, nil
	}
	sid := tasksV2SessionID(principalOf(ctx), t.ID)
	cancelled := false
	err := c.h.updateTask(ctx, sid, t.ID, func(t *Task) bool {
		if terminal(t.Status) {
			return false
		}
		t.Status, t.StatusMessage = taskCancelled, "cancelled by the client"
		cancelled = true
		return true
	})
	if err == nil && cancelled {
		b, _ := json.Marshal(ctlEvent{Cancel: taskCancelID(t.ID), Reason: "tasks/cancel"})
		_, err = c.h.store.AppendEvents(ctx, sid, streamCtl, b)
	}
	if err != nil {
		c.storeErr = err
		return nil, nil
	}
	return map[string]any{}, nil
}
