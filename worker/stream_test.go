package worker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testDeadline bounds every wait in these tests.
const testDeadline = 10 * time.Second

// hooks lets a test talk to the tools of testServer while they run.
type hooks struct {
	started  chan string   // a tool began (its name)
	release  chan struct{} // the "gate" tool continues
	finished chan error    // the "block" tool ended (its context's error)
}

type typedIn struct {
	Name  string `json:"name" jsonschema:"who to greet"`
	Times int    `json:"times,omitempty" jsonschema:"how often"`
}

type typedOut struct {
	Greeting string `json:"greeting"`
	Stored   uint64 `json:"stored"`
}

// testServer is a Server with the demo and everything sets plus tools that
// block, wait on the test, log at every level and ask the client for roots.
func testServer(hk *hooks) *Server {
	s := NewServer()
	AddDemo(s)
	AddEverything(s)
	AddTool(s, &Tool{Name: "block", Description: "runs until cancelled", TaskSupport: "optional"},
		func(ctx context.Context, req *Request, _ struct{}) (*ToolResult, any, error) {
			_ = req.Log(ctx, "info", "block", "started")
			hk.started <- "block"
			<-ctx.Done()
			hk.finished <- context.Cause(ctx)
			return nil, nil, ctx.Err()
		})
	AddTool(s, &Tool{Name: "gate", Description: "logs one, waits for the test, logs two", TaskSupport: "optional"},
		func(ctx context.Context, req *Request, _ struct{}) (*ToolResult, any, error) {
			if err := req.Log(ctx, "info", "gate", "one"); err != nil {
				return nil, nil, err
			}
			hk.started <- "gate"
			select {
			case <-hk.release:
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			}
			if err := req.Log(ctx, "info", "gate", "two"); err != nil {
				return nil, nil, err
			}
			return &ToolResult{Content: []Content{TextContent("done")}}, nil, nil
		})
	AddTool(s, &Tool{Name: "quiet", Description: "waits for the test without sending anything"},
		func(ctx context.Context, _ *Request, _ struct{}) (*ToolResult, any, error) {
			hk.started <- "quiet"
			select {
			case <-hk.release:
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			}
			return &ToolResult{Content: []Content{TextContent("quiet done")}}, nil, nil
		})
	AddTool(s, &Tool{Name: "levels", Description: "logs once at every level"},
		func(ctx context.Context, req *Request, _ struct{}) (*ToolResult, any, error) {
			for _, l := range logLevels {
				if err := req.Log(ctx, l, "levels", l); err != nil {
					return nil, nil, err
				}
			}
			return &ToolResult{Content: []Content{TextContent("logged")}}, nil, nil
		})
	AddTool(s, &Tool{Name: "roots", Description: "lists the client's roots"},
		func(ctx context.Context, req *Request, _ struct{}) (*ToolResult, any, error) {
			roots, err := req.ListRoots(ctx)
			if err != nil {
				return nil, nil, err
			}
			var uris []string
			for _, r := range roots {
				uris = append(uris, r.URI)
			}
			return &ToolResult{Content: []Content{TextContent(strings.Join(uris, ","))}}, nil, nil
		})
	AddTool(s, &Tool{Name: "elicit_url", Description: "URL-mode elicitation"},
		func(ctx context.Context, req *Request, _ struct{}) (*ToolResult, any, error) {
			res, err := req.Elicit(ctx, &ElicitParams{Mode: "url", Message: "log in", URL: "https://example.com/login", ElicitationID: "e1"})
			if err != nil {
				return nil, nil, err
			}
			if err := req.CompleteElicitation(ctx, "e1"); err != nil {
				return nil, nil, err
			}
			return &ToolResult{Content: []Content{TextContent(res.Action)}}, nil, nil
		})
	AddTool(s, &Tool{Name: "typed", Description: "typed input and output"},
		func(ctx context.Context, req *Request, in typedIn) (*ToolResult, typedOut, error) {
			v, err := req.PutState(ctx, "greeted", []byte(in.Name), nil)
			if err != nil {
				return nil, typedOut{}, err
			}
			return nil, typedOut{Greeting: strings.Repeat("hi "+in.Name+" ", max(in.Times, 1)), Stored: v}, nil
		})
	return s
}

func newHooks() *hooks {
	return &hooks{started: make(chan string, 16), release: make(chan struct{}, 16), finished: make(chan error, 16)}
}

// cluster is several workers over one store.
type cluster struct {
	store *memStore
	hk    *hooks
	urls  map[string]string
	dead  sync.Map // worker id → true when "not alive"
}

func newCluster(t *testing.T, ids []string, tweak func(*Config)) *cluster {
	t.Helper()
	m := newMemStore()
	c := clusterOver(t, ids, tweak, func() SessionStore { return m })
	c.store = m
	return c
}

// clusterOver starts workers each over the store newStore returns.
func clusterOver(t *testing.T, ids []string, tweak func(*Config), newStore func() SessionStore) *cluster {
	t.Helper()
	c := &cluster{hk: newHooks(), urls: map[string]string{}}
	srv := testServer(c.hk)
	for _, id := range ids {
		cfg := DefaultConfig()
		cfg.Common.ID = id
		cfg.PollWait = 50 * time.Millisecond
		if tweak != nil {
			tweak(&cfg)
		}
		h := NewHandler(newStore(), WithConfig(cfg), WithServer(srv), WithAlive(func(w string) bool {
			_, dead := c.dead.Load(w)
			return !dead
		}))
		ts := httptest.NewServer(h)
		t.Cleanup(ts.Close)
		t.Cleanup(h.Close)
		c.urls[id] = ts.URL
	}
	return c
}

func initBodyFor(version, caps string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":%q,"capabilities":%s,"clientInfo":{"name":"test","version":"1"}}}`, version, caps)
}

// initOn initializes a session on url with version and client caps.
func initOn(t *testing.T, url, version, caps string) string {
	t.Helper()
	r := post(t, url, initBodyFor(version, caps), nil)
	if r.status != 200 || r.rpc.Error != nil {
		t.Fatalf("initialize: %d %s", r.status, r.body)
	}
	sid := r.header.Get(HeaderSessionID)
	if n := post(t, url, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, hdr(sid, version)); n.status != 202 {
		t.Fatalf("initialized: %d %s", n.status, n.body)
	}
	return sid
}

func hdr(sid, version string) map[string]string {
	return map[string]string{HeaderSessionID: sid, HeaderProtocolVersion: version}
}

// sseStream reads an SSE response incrementally.
type sseStream struct {
	t    *testing.T
	resp *http.Response
	rd   *bufio.Reader
	evs  chan sseEvent
	comm atomic.Int32 // comments seen
}

// openSSE sends req and returns the stream; it fails unless the answer is
// 200 text/event-stream.
func openSSE(t *testing.T, req *http.Request) *sseStream {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("want an SSE stream, got %d %s: %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	s := &sseStream{t: t, resp: resp, rd: bufio.NewReader(resp.Body), evs: make(chan sseEvent, 64)}
	t.Cleanup(func() { resp.Body.Close() })
	go s.read()
	return s
}

func (s *sseStream) read() {
	defer close(s.evs)
	var ev sseEvent
	seen := false
	for {
		line, err := s.rd.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\n")
		if line == "" {
			if seen {
				s.evs <- ev
			}
			ev, seen = sseEvent{}, false
			continue
		}
		if strings.HasPrefix(line, ":") {
			s.comm.Add(1)
			continue
		}
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimPrefix(v, " ")
		switch k {
		case "id":
			ev.id = v
		case "data":
			ev.data = v
		case "retry":
			ev.retry = v
		}
		seen = true
	}
}

// next returns the next event; ok is false at the end of the stream.
func (s *sseStream) next() (sseEvent, bool) {
	s.t.Helper()
	select {
	case ev, ok := <-s.evs:
		return ev, ok
	case <-time.After(testDeadline):
		s.t.Fatal("no SSE event in time")
		return sseEvent{}, false
	}
}

// rest reads until the stream ends.
func (s *sseStream) rest() []sseEvent {
	s.t.Helper()
	var out []sseEvent
	for {
		ev, ok := s.next()
		if !ok {
			return out
		}
		out = append(out, ev)
	}
}

func (s *sseStream) close() { s.resp.Body.Close() }

func postReq(t *testing.T, url, body string, headers map[string]string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/mcp", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	return req
}

func getReq(t *testing.T, url, sid, version, lastEventID string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url+"/mcp", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set(HeaderSessionID, sid)
	req.Header.Set(HeaderProtocolVersion, version)
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	return req
}

// rpcMsg is a decoded SSE data payload.
type rpcMsg struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	Result json.RawMessage `json:"result"`
	Error  *Error          `json:"error"`
}

func decodeMsg(t *testing.T, data string) rpcMsg {
	t.Helper()
	var m rpcMsg
	if err := json.Unmarshal([]byte(data), &m); err != nil {
		t.Fatalf("event data %q: %v", data, err)
	}
	return m
}

func waitStarted(t *testing.T, hk *hooks, name string) {
	t.Helper()
	select {
	case got := <-hk.started:
		if got != name {
			t.Fatalf("started %q, want %q", got, name)
		}
	case <-time.After(testDeadline):
		t.Fatalf("tool %s did not start", name)
	}
}

// TestSSEPostStream: a streaming request answers as SSE: a priming event
// (2025-11-25: id, retry, empty data), the request's notifications, then
// the response; every event was stored before it was written, under ids
// "<stream>/<seq>". A plain request still answers JSON.
func TestSSEPostStream(t *testing.T) {
	c := newCluster(t, []string{"a"}, nil)
	tests := []struct {
		version string
		priming bool
	}{{"2025-11-25", true}, {"2025-06-18", false}, {"2025-03-26", false}}
	for _, tc := range tests {
		t.Run(tc.version, func(t *testing.T) {
			sid := initOn(t, c.urls["a"], tc.version, `{}`)
			body := `{"jsonrpc":"2.0","id":"p1","method":"tools/call","params":{"name":"test_tool_with_progress","_meta":{"progressToken":"tok"}}}`
			evs := openSSE(t, postReq(t, c.urls["a"], body, hdr(sid, tc.version))).rest()
			if tc.priming {
				if len(evs) == 0 || evs[0].data != "" || evs[0].retry != "1000" || !strings.HasSuffix(evs[0].id, "/1") {
					t.Fatalf("first event %+v, want priming with retry", evs[0])
				}
				evs = evs[1:]
			}
			stream := requestStream(json.RawMessage(`"p1"`))
			stored := c.store.events(sid, stream)
			if len(stored) != len(evs)+1 {
				t.Fatalf("%d events stored, %d written (+1 priming)", len(stored), len(evs))
			}
			var progress int
			for i, ev := range evs {
				if ev.id != eventID(stream, stored[i+1].Seq) || ev.data != string(stored[i+1].Data) {
					t.Fatalf("event %d %+v, stored %s", i, ev, stored[i+1].Data)
				}
				if m := decodeMsg(t, ev.data); m.Method == "notifications/progress" {
					progress++
				}
			}
			last := decodeMsg(t, evs[len(evs)-1].data)
			if progress != 3 || string(last.ID) != `"p1"` || last.Result == nil {
				t.Fatalf("progress %d, last %+v", progress, last)
			}
			// A plain request answers JSON.
			r := post(t, c.urls["a"], `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`, hdr(sid, tc.version))
			if ct := r.header.Get("Content-Type"); ct != "application/json" || r.rpc.Result == nil {
				t.Fatalf("tools/list: %s %s", ct, r.body)
			}
		})
	}
}

// TestLogLevelAcrossWorkers: initialize on A, logging/setLevel on B,
// tools/call on C sends only the messages at or above the level.
func TestLogLevelAcrossWorkers(t *testing.T) {
	c := newCluster(t, []string{"a", "b", "c"}, nil)
	tests := []struct {
		level string // "" never set
		want  []string
	}{
		{"", []string{"info", "notice", "warning", "error", "critical", "alert", "emergency"}},
		{"debug", logLevels},
		{"warning", []string{"warning", "error", "critical", "alert", "emergency"}},
		{"emergency", []string{"emergency"}},
	}
	for _, tc := range tests {
		t.Run("level="+tc.level, func(t *testing.T) {
			v := "2025-11-25"
			sid := initOn(t, c.urls["a"], v, `{}`)
			if tc.level != "" {
				r := post(t, c.urls["b"], `{"jsonrpc":"2.0","id":2,"method":"logging/setLevel","params":{"level":"`+tc.level+`"}}`, hdr(sid, v))
				if r.status != 200 || r.rpc.Error != nil {
					t.Fatalf("setLevel: %d %s", r.status, r.body)
				}
			}
			evs := openSSE(t, postReq(t, c.urls["c"], `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"levels"}}`, hdr(sid, v))).rest()
			var got []string
			for _, ev := range evs {
				if ev.data == "" {
					continue
				}
				if m := decodeMsg(t, ev.data); m.Method == "notifications/message" {
					var p struct{ Level string }
					_ = json.Unmarshal(m.Params, &p)
					got = append(got, p.Level)
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("levels %v, want %v", got, tc.want)
			}
		})
	}
	sid := initOn(t, c.urls["a"], "2025-11-25", `{}`)
	r := post(t, c.urls["b"], `{"jsonrpc":"2.0","id":2,"method":"logging/setLevel","params":{"level":"loud"}}`, hdr(sid, "2025-11-25"))
	if r.rpc.Error == nil || r.rpc.Error.Code != CodeInvalidParams {
		t.Fatalf("bad level: %s", r.body)
	}
}

// TestCancelAcrossWorkers: notifications/cancelled on B cancels a call
// running on A; the SSE stream ends without a response, the JSON answer is
// -32800, and the in-flight record is gone; with a delayed in-flight
// record (the default) and with one written at once (InflightDelay 0).
func TestCancelAcrossWorkers(t *testing.T) {
	for _, delay := range []time.Duration{DefaultInflightDelay, 0} {
		t.Run("delay="+delay.String(), func(t *testing.T) { testCancelAcrossWorkers(t, delay) })
	}
}

func testCancelAcrossWorkers(t *testing.T, delay time.Duration) {
	c := newCluster(t, []string{"a", "b"}, func(cfg *Config) { cfg.InflightDelay = delay })
	v := "2025-11-25"
	for _, mode := range []string{"sse", "json"} {
		t.Run(mode, func(t *testing.T) {
			sid := initOn(t, c.urls["a"], v, `{}`)
			h := hdr(sid, v)
			if mode == "json" {
				h["Accept"] = "application/json"
			}
			req := postReq(t, c.urls["a"], `{"jsonrpc":"2.0","id":"long","method":"tools/call","params":{"name":"block"}}`, h)
			done := make(chan reply, 1)
			var stream *sseStream
			if mode == "sse" {
				stream = openSSE(t, req)
			} else {
				go func() { done <- do(t, req) }()
			}
			waitStarted(t, c.hk, "block")
			// The call is recorded in flight once it outlives InflightDelay
			// (JSON), or before its stream shows (SSE).
			waitInflight(t, c.store, sid, `inflight/"long"`)
			n := post(t, c.urls["b"], `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"long","reason":"test"}}`, hdr(sid, v))
			if n.status != 202 {
				t.Fatalf("cancel: %d %s", n.status, n.body)
			}
			select {
			case cause := <-c.hk.finished:
				if !errors.Is(cause, errCancelled) {
					t.Fatalf("tool context cause %v", cause)
				}
			case <-time.After(testDeadline):
				t.Fatal("the call on A was not cancelled")
			}
			if mode == "sse" {
				for _, ev := range stream.rest() {
					if ev.data != "" && decodeMsg(t, ev.data).ID != nil {
						t.Fatalf("response after cancellation: %s", ev.data)
					}
				}
			} else {
				r := <-done
				if r.rpc.Error == nil || r.rpc.Error.Code != CodeCancelled {
					t.Fatalf("JSON answer %s", r.body)
				}
			}
			if _, err := c.store.GetState(context.Background(), sid, `inflight/"long"`); !errors.Is(err, ErrNotFound) {
				t.Fatalf("in-flight record left: %v", err)
			}
		})
	}
}

// TestServerRequestAcrossWorkers: a tool on A asks the client (sampling,
// form and URL elicitation, roots); the request arrives on A's stream,
// stored; the answer POSTed to C reaches the tool; no answer gives a
// definite JSON-RPC error.
func TestServerRequestAcrossWorkers(t *testing.T) {
	c := newCluster(t, []string{"a", "b", "c"}, func(cfg *Config) { cfg.ServerRequestTimeout = 300 * time.Millisecond })
	caps := `{"sampling":{},"elicitation":{"form":{},"url":{}},"roots":{}}`
	tests := []struct {
		name, tool, args, method, answer, want string
		noAnswer                               bool
		wantCode                               int
	}{
		{name: "sampling", tool: "test_sampling", args: `{"prompt":"hi"}`, method: "sampling/createMessage",
			answer: `{"role":"assistant","content":{"type":"text","text":"hello"},"model":"m"}`, want: "LLM response: hello"},
		{name: "elicitation form", tool: "test_elicitation", args: `{"message":"who?"}`, method: "elicitation/create",
			answer: `{"action":"accept","content":{"username":"u","email":"e"}}`, want: `User response: action=accept, content={"email":"e","username":"u"}`},
		{name: "elicitation url", tool: "elicit_url", args: `{}`, method: "elicitation/create", answer: `{"action":"accept"}`, want: "accept"},
		{name: "roots", tool: "roots", args: `{}`, method: "roots/list", answer: `{"roots":[{"uri":"file:///a"},{"uri":"file:///b"}]}`, want: "file:///a,file:///b"},
		{name: "timeout", tool: "test_sampling", args: `{"prompt":"hi"}`, method: "sampling/createMessage", noAnswer: true, wantCode: CodeClientTimeout},
	}
	v := "2025-11-25"
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sid := initOn(t, c.urls["a"], v, caps)
			s := openSSE(t, postReq(t, c.urls["a"], `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"`+tc.tool+`","arguments":`+tc.args+`}}`, hdr(sid, v)))
			var req rpcMsg
			for req.Method == "" {
				ev, ok := s.next()
				if !ok {
					t.Fatal("stream ended before the server request")
				}
				if ev.data != "" {
					req = decodeMsg(t, ev.data)
				}
			}
			if req.Method != tc.method || req.ID == nil {
				t.Fatalf("server request %+v", req)
			}
			if tc.name == "elicitation url" && !strings.Contains(string(req.Params), `"mode":"url"`) {
				t.Fatalf("params %s", req.Params)
			}
			if !tc.noAnswer {
				r := post(t, c.urls["c"], `{"jsonrpc":"2.0","id":`+string(req.ID)+`,"result":`+tc.answer+`}`, hdr(sid, v))
				if r.status != 202 {
					t.Fatalf("answer: %d %s", r.status, r.body)
				}
			}
			var last rpcMsg
			var methods []string
			for _, ev := range s.rest() {
				if ev.data != "" {
					last = decodeMsg(t, ev.data)
					if last.Method != "" {
						methods = append(methods, last.Method)
					}
				}
			}
			if tc.wantCode != 0 {
				if last.Error == nil || last.Error.Code != tc.wantCode || string(last.ID) != "9" {
					t.Fatalf("want error %d, got %+v", tc.wantCode, last)
				}
				if len(methods) != 1 || methods[0] != "notifications/cancelled" {
					t.Fatalf("after a timeout the server should cancel its request; sent %v", methods)
				}
				return
			}
			var res ToolResult
			if err := json.Unmarshal(last.Result, &res); err != nil || len(res.Content) == 0 || res.Content[0].Text != tc.want {
				t.Fatalf("tool result %s (%v), want %q", last.Result, err, tc.want)
			}
			if tc.name == "elicitation url" && (len(methods) != 1 || methods[0] != "notifications/elicitation/complete") {
				t.Fatalf("URL elicitation: sent %v", methods)
			}
		})
	}
	// A client without the capability: a definite error, no request.
	sid := initOn(t, c.urls["a"], v, `{}`)
	r := post(t, c.urls["a"], `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"test_sampling","arguments":{"prompt":"x"}}}`, hdr(sid, v))
	if r.rpc.Error == nil || r.rpc.Error.Code != CodeMissingClientCapability {
		t.Fatalf("no sampling capability: %s", r.body)
	}
}

// TestResumeOnAnotherWorker: a client drops A's stream; GET with
// Last-Event-ID on B replays what A wrote after that id and continues with
// what A writes later, up to the response; the standalone stream never
// replays a request stream's events.
func TestResumeOnAnotherWorker(t *testing.T) {
	c := newCluster(t, []string{"a", "b"}, nil)
	v := "2025-11-25"
	sid := initOn(t, c.urls["a"], v, `{}`)
	s := openSSE(t, postReq(t, c.urls["a"], `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"gate"}}`, hdr(sid, v)))
	priming, _ := s.next()
	waitStarted(t, c.hk, "gate")
	one, _ := s.next()
	if !strings.Contains(one.data, `"one"`) {
		t.Fatalf("event %+v", one)
	}
	s.close() // the connection to A breaks; the call goes on

	// Resume from the priming event: "one" is replayed.
	r := openSSE(t, getReq(t, c.urls["b"], sid, v, priming.id))
	first, _ := r.next()
	if first.retry == "" {
		t.Fatalf("resumed stream starts with %+v, want a retry field", first)
	}
	replayed, _ := r.next()
	if replayed.id != one.id || replayed.data != one.data {
		t.Fatalf("replayed %+v, want %+v", replayed, one)
	}
	c.hk.release <- struct{}{}
	var rest []string
	for _, ev := range r.rest() {
		rest = append(rest, ev.data)
	}
	if len(rest) != 2 || !strings.Contains(rest[0], `"two"`) || !strings.Contains(rest[1], `"result"`) {
		t.Fatalf("after the replay: %q", rest)
	}
	// Resuming after the response gives nothing more, and the stream ends.
	stored := c.store.events(sid, requestStream(json.RawMessage("5")))
	lastID := eventID(requestStream(json.RawMessage("5")), stored[len(stored)-1].Seq)
	if evs := openSSE(t, getReq(t, c.urls["b"], sid, v, lastID)).rest(); len(evs) != 1 || evs[0].retry == "" {
		t.Fatalf("after the end: %+v", evs)
	}
	// The standalone stream (from its start) holds none of it.
	if evs := c.store.events(sid, streamGet); len(evs) != 0 {
		t.Fatalf("request events in the GET stream: %+v", evs)
	}
}

// TestStandaloneStream: GET opens the standalone stream with a priming
// event; a resource subscribed on A and changed by a tool on C is
// announced on B's stream; idle streams get keep-alive comments and end
// after their lifetime.
func TestStandaloneStream(t *testing.T) {
	c := newCluster(t, []string{"a", "b", "c"}, func(cfg *Config) {
		cfg.SSEKeepAlive = 20 * time.Millisecond
		cfg.SSEStreamLifetime = 500 * time.Millisecond
		cfg.PollWait = 10 * time.Millisecond
	})
	v := "2025-11-25"
	sid := initOn(t, c.urls["a"], v, `{}`)
	if r := post(t, c.urls["a"], `{"jsonrpc":"2.0","id":2,"method":"resources/subscribe","params":{"uri":"demo://counter"}}`, hdr(sid, v)); r.rpc.Error != nil {
		t.Fatalf("subscribe: %s", r.body)
	}
	g := openSSE(t, getReq(t, c.urls["b"], sid, v, ""))
	prime, _ := g.next()
	if prime.data != "" || prime.retry != "1000" || !strings.HasPrefix(prime.id, "g/") {
		t.Fatalf("priming %+v", prime)
	}
	if r := post(t, c.urls["c"], `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"counter"}}`, hdr(sid, v)); r.rpc.Error != nil {
		t.Fatalf("counter: %s", r.body)
	}
	ev, _ := g.next()
	m := decodeMsg(t, ev.data)
	if m.Method != "notifications/resources/updated" || !strings.Contains(string(m.Params), "demo://counter") {
		t.Fatalf("event %+v", ev)
	}
	// Unsubscribed: nothing more; the stream idles with comments, then ends.
	if r := post(t, c.urls["a"], `{"jsonrpc":"2.0","id":4,"method":"resources/unsubscribe","params":{"uri":"demo://counter"}}`, hdr(sid, v)); r.rpc.Error != nil {
		t.Fatalf("unsubscribe: %s", r.body)
	}
	post(t, c.urls["c"], `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"counter"}}`, hdr(sid, v))
	if evs := g.rest(); len(evs) != 0 {
		t.Fatalf("events after unsubscribing: %+v", evs)
	}
	if g.comm.Load() == 0 {
		t.Fatal("no keep-alive comments")
	}
	// Resuming the standalone stream on A replays nothing of request streams.
	gstream, _, _ := parseEventID(prime.id)
	if evs := openSSE(t, getReq(t, c.urls["a"], sid, v, eventID(gstream, 0))).rest(); len(evs) != 2 || !strings.Contains(evs[1].data, "resources/updated") {
		t.Fatalf("g replay %+v", evs)
	}
}

// TestWorkerDeath: a client resuming on B the stream of a request whose
// worker (A) died gets a definite JSON-RPC error for it.
func TestWorkerDeath(t *testing.T) {
	c := newCluster(t, []string{"a", "b"}, nil)
	v := "2025-11-25"
	sid := initOn(t, c.urls["a"], v, `{}`)
	s := openSSE(t, postReq(t, c.urls["a"], `{"jsonrpc":"2.0","id":"d","method":"tools/call","params":{"name":"gate"}}`, hdr(sid, v)))
	priming, _ := s.next()
	waitStarted(t, c.hk, "gate")
	s.close()
	c.dead.Store("a", true) // A left membership
	var last rpcMsg
	for _, ev := range openSSE(t, getReq(t, c.urls["b"], sid, v, priming.id)).rest() {
		if ev.data != "" {
			last = decodeMsg(t, ev.data)
		}
	}
	if last.Error == nil || last.Error.Code != CodeWorkerLost || string(last.ID) != `"d"` || !strings.Contains(last.Error.Message, "retry") {
		t.Fatalf("last event %+v", last)
	}
	c.hk.release <- struct{}{} // let A's (zombie) tool end
}

// TestCounter: the counter adds once per request id, across workers and
// retries, and never skips or goes back under concurrency.
func TestCounter(t *testing.T) {
	c := newCluster(t, []string{"a", "b", "c"}, nil)
	v := "2025-11-25"
	sid := initOn(t, c.urls["a"], v, `{}`)
	call := func(url, id, args string) int64 {
		t.Helper()
		r := post(t, url, `{"jsonrpc":"2.0","id":`+id+`,"method":"tools/call","params":{"name":"counter","arguments":`+args+`}}`, hdr(sid, v))
		var res struct {
			Content           []Content
			StructuredContent CounterOut
		}
		if err := json.Unmarshal(r.rpc.Result, &res); err != nil || len(res.Content) != 1 {
			t.Fatalf("counter: %s", r.body)
		}
		if res.Content[0].Text != fmt.Sprint(res.StructuredContent.Value) {
			t.Fatalf("text %q vs structured %d", res.Content[0].Text, res.StructuredContent.Value)
		}
		return res.StructuredContent.Value
	}
	steps := []struct {
		url, id, args string
		want          int64
	}{
		{c.urls["a"], `"x1"`, `{"by":2}`, 2},
		{c.urls["b"], `"x1"`, `{"by":2}`, 2}, // retried elsewhere: not added again
		{c.urls["c"], `"x2"`, `{}`, 3},
		{c.urls["a"], `"x3"`, `{"by":10}`, 13},
		{c.urls["c"], `"x2"`, `{}`, 3},
	}
	for _, st := range steps {
		if got := call(st.url, st.id, st.args); got != st.want {
			t.Fatalf("%s %s: %d, want %d", st.id, st.args, got, st.want)
		}
	}
	r := post(t, c.urls["a"], `{"jsonrpc":"2.0","id":"bad","method":"tools/call","params":{"name":"counter","arguments":{"by":0}}}`, hdr(sid, v))
	if !strings.Contains(string(r.rpc.Result), `"isError":true`) {
		t.Fatalf("by 0: %s", r.body)
	}
	var wg sync.WaitGroup
	seen := make(chan int64, 30)
	urls := []string{c.urls["a"], c.urls["b"], c.urls["c"]}
	for i := range 30 {
		wg.Go(func() { seen <- call(urls[i%3], fmt.Sprintf(`"c%d"`, i), `{}`) })
	}
	wg.Wait()
	close(seen)
	got := map[int64]bool{}
	for n := range seen {
		if got[n] {
			t.Fatalf("value %d twice", n)
		}
		got[n] = true
	}
	for n := int64(14); n < 44; n++ {
		if !got[n] {
			t.Fatalf("value %d skipped: %v", n, got)
		}
	}
}

// TestDelayedInflight: with InflightDelay, a quick call makes no in-flight
// record, and a cancellation that arrives before a slow call is recorded
// still cancels it once it is.
func TestDelayedInflight(t *testing.T) {
	c := newCluster(t, []string{"a", "b"}, func(cfg *Config) { cfg.InflightDelay = 300 * time.Millisecond })
	v := "2025-11-25"
	sid := initOn(t, c.urls["a"], v, `{}`)
	h := hdr(sid, v)
	h["Accept"] = "application/json"
	r := do(t, postReq(t, c.urls["a"], `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"typed","arguments":{"name":"x"}}}`, h))
	if r.status != 200 || r.rpc.Error != nil {
		t.Fatalf("quick call: %d %s", r.status, r.body)
	}
	if n := c.store.inflightPuts.Load(); n != 0 {
		t.Fatalf("%d in-flight writes for a quick call, want 0", n)
	}

	done := make(chan reply, 1)
	req := postReq(t, c.urls["a"], `{"jsonrpc":"2.0","id":"long","method":"tools/call","params":{"name":"block"}}`, h)
	go func() { done <- do(t, req) }()
	waitStarted(t, c.hk, "block")
	n := post(t, c.urls["b"], `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"long","reason":"early"}}`, hdr(sid, v))
	if n.status != 202 {
		t.Fatalf("cancel: %d %s", n.status, n.body)
	}
	select {
	case cause := <-c.hk.finished:
		if !errors.Is(cause, errCancelled) {
			t.Fatalf("tool context cause %v", cause)
		}
	case <-time.After(testDeadline):
		t.Fatal("the call was not cancelled")
	}
	if r := <-done; r.rpc.Error == nil || r.rpc.Error.Code != CodeCancelled {
		t.Fatalf("JSON answer %s", r.body)
	}
	if c.store.inflightPuts.Load() != 1 {
		t.Fatalf("%d in-flight writes, want 1", c.store.inflightPuts.Load())
	}
	if _, err := c.store.GetState(context.Background(), sid, `inflight/"long"`); !errors.Is(err, ErrNotFound) {
		t.Fatalf("in-flight record left: %v", err)
	}
}

// waitInflight waits until the session has in-flight record key.
func waitInflight(t *testing.T, st *memStore, sid, key string) {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	for {
		_, err := st.GetState(context.Background(), sid, key)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no in-flight record %s: %v", key, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCancelOnSameWorker: a notifications/cancelled that lands on the
// worker running the request cancels it at once, before the request is
// recorded in flight (here never: the delay is long).
func TestCancelOnSameWorker(t *testing.T) {
	c := newCluster(t, []string{"a"}, func(cfg *Config) { cfg.InflightDelay = time.Hour })
	v := "2025-11-25"
	sid := initOn(t, c.urls["a"], v, `{}`)
	h := hdr(sid, v)
	h["Accept"] = "application/json"
	done := make(chan reply, 1)
	req := postReq(t, c.urls["a"], `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"block"}}`, h)
	go func() { done <- do(t, req) }()
	waitStarted(t, c.hk, "block")
	// 7.0 is the same JSON-RPC id as 7.
	if n := post(t, c.urls["a"], `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7.0}}`, hdr(sid, v)); n.status != 202 {
		t.Fatalf("cancel: %d %s", n.status, n.body)
	}
	select {
	case cause := <-c.hk.finished:
		if !errors.Is(cause, errCancelled) {
			t.Fatalf("tool context cause %v", cause)
		}
	case <-time.After(testDeadline):
		t.Fatal("the call was not cancelled")
	}
	if r := <-done; r.rpc.Error == nil || r.rpc.Error.Code != CodeCancelled {
		t.Fatalf("JSON answer %s", r.body)
	}
	if n := c.store.inflightPuts.Load(); n != 0 {
		t.Fatalf("%d in-flight writes, want 0", n)
	}
}
