package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// tasksClientMeta declares the tasks extension (and elicitation).
const tasksClientMeta = `"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"elicitation":{},"extensions":{"io.modelcontextprotocol/tasks":{}}}}`

// plainClientMeta declares no extension.
const plainClientMeta = `"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"elicitation":{}}}`

// v2Call posts a 2026-07-28 request with meta (tasksClientMeta or
// plainClientMeta) and the routing headers the body calls for.
func v2Call(t *testing.T, url, meta, method, params string) reply {
	t.Helper()
	var p struct {
		Name   string `json:"name"`
		TaskID string `json:"taskId"`
	}
	mustUnmarshal(t, []byte("{"+params+"}"), &p)
	name := p.Name + p.TaskID
	if params != "" {
		params += ","
	}
	body := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":%q,"params":{%s%s}}`, method, params, meta)
	return post(t, url, body, modernHeaders(method, name))
}

// TestTasksV2AcrossWorkers: v2 tasks created on one worker are read,
// answered (tasks/update) and cancelled on the others, against a real
// store node; a task whose worker died is failed; un-negotiated clients
// get -32021 or a plain result.
func TestTasksV2AcrossWorkers(t *testing.T) {
	e, cli := realStore(t)
	key := newMRTRKey()
	var deadMu sync.Mutex
	dead := map[string]bool{}
	alive := func(id string) bool { deadMu.Lock(); defer deadMu.Unlock(); return !dead[id] }
	urls := map[string]string{}
	for _, id := range []string{"a", "b", "c"} {
		urls[id] = modernWorker(t, StoreFromClient(storeClient(t, e, cli)), id, WithMRTRKey(key), WithAlive(alive)).URL
	}
	sc := storeClient(t, e, cli)

	create := func(url, tool, args string) map[string]any {
		t.Helper()
		m := resultMap(t, v2Call(t, url, tasksClientMeta, "tools/call", `"name":"`+tool+`","arguments":`+args))
		if m["resultType"] != "task" || m["taskId"] == "" || m["status"] != taskWorking || m["ttlMs"] != float64(DefaultTaskTTL.Milliseconds()) {
			t.Fatalf("%s: not a CreateTaskResult: %v", tool, m)
		}
		for _, k := range []string{"task", "ttl", "pollInterval", "result", "error", "inputRequests", "requestState"} {
			if _, ok := m[k]; ok {
				t.Fatalf("%s: CreateTaskResult carries %q: %v", tool, k, m)
			}
		}
		return m
	}
	get := func(url, id string) map[string]any {
		t.Helper()
		return resultMap(t, v2Call(t, url, tasksClientMeta, "tasks/get", `"taskId":"`+id+`"`))
	}
	// waitStatus polls tasks/get on url until the task is in status.
	waitStatus := func(url, id, status string) map[string]any {
		t.Helper()
		deadline := time.Now().Add(testDeadline)
		for {
			m := get(url, id)
			if m["status"] == status {
				return m
			}
			if time.Now().After(deadline) {
				t.Fatalf("task %s: status %v, want %s: %v", id, m["status"], status, m)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	ack := func(r reply) {
		t.Helper()
		m := resultMap(t, r)
		delete(m, "_meta")
		if len(m) != 1 || m["resultType"] != "complete" {
			t.Fatalf("want an empty ack, got %s", r.body)
		}
	}
	firstText := func(m map[string]any) string {
		t.Helper()
		res, _ := m["result"].(map[string]any)
		content, _ := res["content"].([]any)
		if len(content) == 0 {
			t.Fatalf("no result content: %v", m)
		}
		text, _ := content[0].(map[string]any)["text"].(string)
		return text
	}

	// waitStopped waits until the task's tool no longer runs: its
	// in-flight record is removed when it returns.
	waitStopped := func(id string) {
		t.Helper()
		deadline := time.Now().Add(testDeadline)
		for {
			ents, err := sc.ListState(context.Background(), tasksV2SessionID("", id), "")
			if err != nil {
				t.Fatal(err)
			}
			if len(ents) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("task %s still runs: %d in-flight records", id, len(ents))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// Cancelled on C: the tool running on A stops (its in-flight record
	// goes away long before its 60 s are up).
	id := create(urls["a"], "slow_compute", `{"seconds":60,"label":"x"}`)["taskId"].(string)
	if m := get(urls["b"], id); m["status"] != taskWorking || m["result"] != nil {
		t.Fatalf("tasks/get on B: %v", m)
	}
	ack(v2Call(t, urls["c"], tasksClientMeta, "tasks/cancel", `"taskId":"`+id+`"`))
	waitStatus(urls["b"], id, taskCancelled)
	ack(v2Call(t, urls["b"], tasksClientMeta, "tasks/cancel", `"taskId":"`+id+`"`)) // idempotent
	waitStopped(id)

	// Input inside a task: parked on A, answered on C, completed.
	id = create(urls["a"], "confirm_delete", `{"filename":"f.txt"}`)["taskId"].(string)
	m := waitStatus(urls["b"], id, taskInputRequired)
	reqs, _ := m["inputRequests"].(map[string]any)
	if r, _ := reqs["confirm"].(map[string]any); len(reqs) != 1 || r["method"] != "elicitation/create" {
		t.Fatalf("inputRequests: %v", m)
	}
	ack(v2Call(t, urls["c"], tasksClientMeta, "tasks/update", `"taskId":"`+id+`","inputResponses":{"confirm":{"action":"accept","content":{"confirm":true}}}`))
	if got := firstText(waitStatus(urls["b"], id, taskCompleted)); got != "Deleted f.txt" {
		t.Fatalf("confirm_delete result %q", got)
	}

	// Two inputs answered one at a time, on different workers.
	id = create(urls["b"], "multi_input", `{}`)["taskId"].(string)
	// The tool asks both before it parks: input_required shows both.
	if m = waitStatus(urls["c"], id, taskInputRequired); len(m["inputRequests"].(map[string]any)) != 2 {
		t.Fatalf("multi_input: %v", m)
	}
	ack(v2Call(t, urls["a"], tasksClientMeta, "tasks/update", `"taskId":"`+id+`","inputResponses":{"name":{"action":"accept","content":{"name":"Ann"}},"unknown":{"x":1}}`))
	m = get(urls["c"], id)
	if reqs := m["inputRequests"].(map[string]any); m["status"] != taskInputRequired || len(reqs) != 1 || reqs["confirm"] == nil {
		t.Fatalf("after a partial update: %v", m)
	}
	ack(v2Call(t, urls["c"], tasksClientMeta, "tasks/update", `"taskId":"`+id+`","inputResponses":{"confirm":{"action":"accept","content":{"confirm":true}}}`))
	if got := firstText(waitStatus(urls["a"], id, taskCompleted)); got != "name: Ann; confirm: true" {
		t.Fatalf("multi_input result %q", got)
	}

	// Tool error: completed with isError; protocol error: failed with error.
	id = create(urls["a"], "failing_job", `{}`)["taskId"].(string)
	m = waitStatus(urls["c"], id, taskCompleted)
	if res := m["result"].(map[string]any); res["isError"] != true {
		t.Fatalf("failing_job: %v", m)
	}
	id = create(urls["a"], "protocol_error_job", `{}`)["taskId"].(string)
	m = waitStatus(urls["b"], id, taskFailed)
	if e, _ := m["error"].(map[string]any); e["code"] != float64(CodeInternalError) || m["result"] != nil {
		t.Fatalf("protocol_error_job: %v", m)
	}

	// MRTR, then a task: round 1 on A, round 2 on B, the result on C.
	r1 := resultMap(t, v2Call(t, urls["a"], tasksClientMeta, "tools/call", `"name":"test_tool_with_task","arguments":{}`))
	if r1["resultType"] != "input_required" || r1["taskId"] != nil {
		t.Fatalf("round 1: %v", r1)
	}
	state, _ := json.Marshal(r1["requestState"])
	m = create(urls["b"], "test_tool_with_task", `{},"inputResponses":{"user_name":{"action":"accept","content":{"name":"Alice"}}},"requestState":`+string(state))
	if got := firstText(waitStatus(urls["c"], m["taskId"].(string), taskCompleted)); !strings.Contains(got, "Alice") {
		t.Fatalf("test_tool_with_task result %q", got)
	}

	// The worker running a task died: failed with a definite error.
	id = create(urls["a"], "slow_compute", `{"seconds":5}`)["taskId"].(string)
	deadMu.Lock()
	dead["a"] = true
	deadMu.Unlock()
	m = get(urls["b"], id)
	if e, _ := m["error"].(map[string]any); m["status"] != taskFailed || e["code"] != float64(CodeWorkerLost) {
		t.Fatalf("task of a dead worker: %v", m)
	}
	deadMu.Lock()
	dead["a"] = false
	deadMu.Unlock()
	ack(v2Call(t, urls["c"], tasksClientMeta, "tasks/cancel", `"taskId":"`+id+`"`)) // ended: still an ack
	waitStopped(id)
	if m := get(urls["a"], id); m["status"] != taskFailed {
		t.Fatalf("a failed task was overwritten when its tool ended: %v", m)
	}

	// Without the extension: tasks/* answer -32021, a required-task tool
	// too, an optional one runs in the request.
	for _, method := range []string{"tasks/get", "tasks/update", "tasks/cancel"} {
		r := v2Call(t, urls["a"], plainClientMeta, method, `"taskId":"`+id+`","inputResponses":{}`)
		if r.status != 400 || r.rpc.Error == nil || r.rpc.Error.Code != CodeMissingClientCapability {
			t.Fatalf("%s without the extension: %d %s", method, r.status, r.body)
		}
	}
	r := v2Call(t, urls["a"], plainClientMeta, "tools/call", `"name":"failing_job","arguments":{}`)
	if r.rpc.Error == nil || r.rpc.Error.Code != CodeMissingClientCapability || !strings.Contains(string(r.body), `"requiredCapabilities":{"extensions":{"io.modelcontextprotocol/tasks":{}}}`) {
		t.Fatalf("required-task tool without the extension: %d %s", r.status, r.body)
	}
	if m := resultMap(t, v2Call(t, urls["a"], plainClientMeta, "tools/call", `"name":"slow_compute","arguments":{"seconds":0}`)); m["resultType"] != "complete" || m["taskId"] != nil {
		t.Fatalf("optional-task tool without the extension: %v", m)
	}

	// Unknown tasks, removed methods, a mismatched Mcp-Name.
	for _, tc := range []struct {
		method string
		code   int
	}{{"tasks/get", CodeInvalidParams}, {"tasks/update", CodeInvalidParams}, {"tasks/cancel", CodeInvalidParams}, {"tasks/result", CodeMethodNotFound}, {"tasks/list", CodeMethodNotFound}} {
		r := v2Call(t, urls["b"], tasksClientMeta, tc.method, `"taskId":"nope","inputResponses":{}`)
		if r.rpc.Error == nil || r.rpc.Error.Code != tc.code {
			t.Errorf("%s of an unknown task: %d %s", tc.method, r.status, r.body)
		}
	}
	body := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"taskId":%q,%s}}`, id, tasksClientMeta)
	if r := post(t, urls["a"], body, modernHeaders("tasks/get", "other")); r.status != 400 || r.rpc.Error == nil || r.rpc.Error.Code != CodeHeaderMismatch {
		t.Fatalf("mismatched Mcp-Name: %d %s", r.status, r.body)
	}
	// With auth on, a task is found only by its principal.
	cfg := DefaultConfig()
	cfg.Common.ID, cfg.Toolset, cfg.Sessionless, cfg.AuthPrincipalHeader = "d", ToolsetAll, true, "X-User"
	hd := NewHandler(StoreFromClient(storeClient(t, e, cli)), WithConfig(cfg), WithMRTRKey(key), WithAlive(alive))
	d := httptest.NewServer(hd)
	t.Cleanup(d.Close)
	t.Cleanup(hd.Close)
	as := func(user, method, params string) reply {
		t.Helper()
		var p struct {
			Name   string `json:"name"`
			TaskID string `json:"taskId"`
		}
		mustUnmarshal(t, []byte("{"+params+"}"), &p)
		hdrs := modernHeaders(method, p.Name+p.TaskID)
		hdrs["X-User"] = user
		return post(t, d.URL, fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":%q,"params":{%s,%s}}`, method, params, tasksClientMeta), hdrs)
	}
	id = resultMap(t, as("ann", "tools/call", `"name":"slow_compute","arguments":{"seconds":0}`))["taskId"].(string)
	if r := as("bob", "tasks/get", `"taskId":"`+id+`"`); r.rpc.Error == nil || r.rpc.Error.Code != CodeInvalidParams {
		t.Fatalf("another principal's tasks/get: %d %s", r.status, r.body)
	}
	if m := resultMap(t, as("ann", "tasks/get", `"taskId":"`+id+`"`)); m["taskId"] != id {
		t.Fatalf("the principal's own tasks/get: %v", m)
	}

	disc := resultMap(t, post(t, urls["c"], modernBody("server/discover", ""), modernHeaders("server/discover", "")))
	if caps := disc["capabilities"].(map[string]any); caps["tasks"] != nil || caps["extensions"].(map[string]any)[TasksExtension] == nil {
		t.Fatalf("capabilities %v", caps)
	}
}

// TestTasksV2DeathSweep: the death sweep, run by another worker for a
// dead worker's incarnation, fails that worker's running v2 task with a
// definite error, read by tasks/get on any worker.
func TestTasksV2DeathSweep(t *testing.T) {
	e, cli := realStore(t)
	a := modernWorker(t, StoreFromClient(storeClient(t, e, cli)), "a", WithIncarnation("a-1"))
	bcfg := DefaultConfig()
	bcfg.Common.ID, bcfg.Toolset, bcfg.Sessionless = "b", ToolsetAll, true
	hb := NewHandler(StoreFromClient(storeClient(t, e, cli)), WithConfig(bcfg), WithIncarnation("b-1"))
	b := httptest.NewServer(hb)
	t.Cleanup(b.Close)
	t.Cleanup(hb.Close)
	sc := storeClient(t, e, cli)

	m := resultMap(t, v2Call(t, a.URL, tasksClientMeta, "tools/call", `"name":"slow_compute","arguments":{"seconds":5}`))
	id, _ := m["taskId"].(string)
	sid := tasksV2SessionID("", id)
	// The task is tracked (indexed under a-1) in the background.
	deadline := time.Now().Add(testDeadline)
	for {
		ents, err := sc.ListState(context.Background(), sid, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s was never tracked", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	res, err := hb.SweepIncarnation(ctx, "a-1", "a")
	if err != nil || !res.Complete || res.Resolved != 1 {
		t.Fatalf("sweep: %+v %v", res, err)
	}
	m = resultMap(t, v2Call(t, b.URL, tasksClientMeta, "tasks/get", `"taskId":"`+id+`"`))
	if e, _ := m["error"].(map[string]any); m["status"] != taskFailed || e["code"] != float64(CodeWorkerLost) {
		t.Fatalf("swept task: %v", m)
	}
	// The tool on a (alive after all) ends; the failure stands. Its end
	// is the second event of the task's stream (the sweep wrote the
	// first).
	for {
		ev, err := sc.ReadEvents(context.Background(), sid, taskStream(id), 0, 10, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(ev.Events) >= 2 {
			break
		}
		if time.Now().After(deadline.Add(testDeadline)) {
			t.Fatalf("task %s still runs: %d events", id, len(ev.Events))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if m := resultMap(t, v2Call(t, b.URL, tasksClientMeta, "tasks/get", `"taskId":"`+id+`"`)); m["status"] != taskFailed {
		t.Fatalf("after the tool ended: %v", m)
	}
}
