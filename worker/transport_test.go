package worker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testWorker starts a handler over store on an httptest server.
func testWorker(t *testing.T, store SessionStore, id string, opts ...Option) *httptest.Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Common.ID = id
	cfg.MaxBodyBytes = 2048
	cfg.AllowedOrigins = []string{"https://app.example.com"}
	cfg.Toolset = ToolsetDemo
	// Session-era behaviour; the 2026-07-28 tests turn it on themselves.
	cfg.Sessionless = false
	h := NewHandler(store, append([]Option{WithConfig(cfg)}, opts...)...)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	t.Cleanup(h.Close) // runs first: ends GET streams
	return srv
}

// reply is a decoded /mcp answer.
type reply struct {
	status int
	header http.Header
	body   []byte
	rpc    struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Result  json.RawMessage `json:"result"`
		Error   *Error          `json:"error"`
	}
}

// post sends body to /mcp with the usual MCP headers plus extra (a value
// of "" deletes the header).
func post(t *testing.T, url, body string, extra map[string]string) reply {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/mcp", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range extra {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) reply {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := reply{status: resp.StatusCode, header: resp.Header, body: b}
	if len(b) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(b, &r.rpc); err != nil {
			t.Fatalf("answer is not JSON-RPC: %v: %s", err, b)
		}
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		// The last event that is a response.
		for _, ev := range parseSSE(string(b)) {
			if m, err := Decode([]byte(ev.data)); err == nil && m.Kind == KindResponse {
				if err := json.Unmarshal([]byte(ev.data), &r.rpc); err != nil {
					t.Fatalf("SSE answer is not JSON-RPC: %v: %s", err, b)
				}
			}
		}
	}
	return r
}

func del(t *testing.T, url, sid string) reply {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, url+"/mcp", nil)
	if sid != "" {
		req.Header.Set(HeaderSessionID, sid)
	}
	return do(t, req)
}

const initBody = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"roots":{}},"clientInfo":{"name":"test","version":"1"}}}`

// initSession initializes a session on url and returns its id.
func initSession(t *testing.T, url string) string {
	t.Helper()
	r := post(t, url, initBody, nil)
	if r.status != http.StatusOK || r.rpc.Error != nil {
		t.Fatalf("initialize: %d %s", r.status, r.body)
	}
	sid := r.header.Get(HeaderSessionID)
	if sid == "" {
		t.Fatal("initialize: no Mcp-Session-Id")
	}
	return sid
}

func sessionHeaders(sid string) map[string]string {
	return map[string]string{HeaderSessionID: sid, HeaderProtocolVersion: "2025-06-18"}
}

func TestBadInput(t *testing.T) {
	store := newMemStore()
	srv := testWorker(t, store, "w1")
	sid := initSession(t, srv.URL)
	ping := `{"jsonrpc":"2.0","id":7,"method":"ping"}`
	big := `{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"` + strings.Repeat("a", 4096) + `"}}`

	type badCase struct {
		name    string
		method  string
		body    string
		headers map[string]string
		status  int
		code    int    // JSON-RPC error code; 0 when no error body is expected
		id      string // expected JSON id in the error, "" to skip
	}
	tests := []badCase{
		{"parse error", "POST", `{"jsonrpc":`, sessionHeaders(sid), 400, CodeParseError, "null"},
		{"trailing garbage", "POST", ping + "x", sessionHeaders(sid), 400, CodeParseError, "null"},
		{"batch", "POST", "[" + ping + "]", sessionHeaders(sid), 400, CodeInvalidRequest, "null"},
		{"not an object", "POST", `"ping"`, sessionHeaders(sid), 400, CodeInvalidRequest, "null"},
		{"wrong jsonrpc", "POST", `{"jsonrpc":"1.0","id":3,"method":"ping"}`, sessionHeaders(sid), 400, CodeInvalidRequest, "3"},
		{"method not string", "POST", `{"jsonrpc":"2.0","id":3,"method":5}`, sessionHeaders(sid), 400, CodeInvalidRequest, "3"},
		{"null request id", "POST", `{"jsonrpc":"2.0","id":null,"method":"ping"}`, sessionHeaders(sid), 400, CodeInvalidRequest, "null"},
		{"object id", "POST", `{"jsonrpc":"2.0","id":{},"method":"ping"}`, sessionHeaders(sid), 400, CodeInvalidRequest, "null"},
		{"result and error", "POST", `{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}`, sessionHeaders(sid), 400, CodeInvalidRequest, "1"},
		{"neither method nor result", "POST", `{"jsonrpc":"2.0","id":1}`, sessionHeaders(sid), 400, CodeInvalidRequest, "1"},
		{"missing session", "POST", ping, nil, 400, CodeInvalidRequest, "7"},
		{"session id not visible ascii", "POST", ping, map[string]string{HeaderSessionID: "a b"}, 400, CodeInvalidRequest, "7"},
		{"unsupported protocol version", "POST", ping, map[string]string{HeaderSessionID: sid, HeaderProtocolVersion: "2024-11-05"}, 400, CodeUnsupportedProtocolVersion, "7"},
		{"initialize with session", "POST", initBody, sessionHeaders(sid), 400, CodeInvalidRequest, "1"},
		{"unknown session", "POST", ping, map[string]string{HeaderSessionID: "0123456789abcdef0123456789abcdef"}, 404, CodeSessionNotFound, "7"},
		{"bad origin", "POST", ping, map[string]string{HeaderSessionID: sid, "Origin": "https://evil.example.com"}, 403, CodeTransport, "null"},
		{"null origin", "POST", ping, map[string]string{HeaderSessionID: sid, "Origin": "null"}, 403, CodeTransport, "null"},
		{"GET without event-stream", "GET", "", map[string]string{HeaderSessionID: sid, "Accept": "application/json"}, 406, CodeTransport, "null"},
		{"GET without session", "GET", "", map[string]string{"Accept": "text/event-stream"}, 400, CodeInvalidRequest, "null"},
		{"GET bad Last-Event-ID", "GET", "", map[string]string{HeaderSessionID: sid, "Accept": "text/event-stream", "Last-Event-ID": "x/1"}, 400, CodeInvalidRequest, "null"},
		{"GET unknown session", "GET", "", map[string]string{HeaderSessionID: "nope", "Accept": "text/event-stream"}, 404, CodeSessionNotFound, "null"},
		{"PUT not served", "PUT", ping, sessionHeaders(sid), 405, CodeTransport, "null"},
		{"accepts neither", "POST", ping, map[string]string{HeaderSessionID: sid, "Accept": "text/html"}, 406, CodeTransport, "null"},
		{"json refused by q=0", "POST", ping, map[string]string{HeaderSessionID: sid, "Accept": "application/json;q=0"}, 406, CodeTransport, "null"},
		{"too large", "POST", big, sessionHeaders(sid), 413, CodeTransport, "null"},
		{"wrong content type", "POST", ping, map[string]string{HeaderSessionID: sid, "Content-Type": "text/plain"}, 415, CodeTransport, "null"},
		{"no content type", "POST", ping, map[string]string{HeaderSessionID: sid, "Content-Type": ""}, 415, CodeTransport, "null"},
		{"DELETE without session", "DELETE", "", nil, 400, CodeInvalidRequest, "null"},
		{"DELETE unknown session", "DELETE", "", map[string]string{HeaderSessionID: "feedfacefeedfacefeedfacefeedface"}, 404, CodeSessionNotFound, "null"},
		// Not errors, for contrast.
		{"ping ok", "POST", ping, sessionHeaders(sid), 200, 0, ""},
		{"json content type with charset", "POST", ping, map[string]string{HeaderSessionID: sid, "Content-Type": "application/json; charset=utf-8"}, 200, 0, ""},
		{"no Accept", "POST", ping, map[string]string{HeaderSessionID: sid, "Accept": ""}, 200, 0, ""},
		{"localhost origin", "POST", ping, map[string]string{HeaderSessionID: sid, "Origin": "http://localhost:6274"}, 200, 0, ""},
		{"loopback v6 origin", "POST", ping, map[string]string{HeaderSessionID: sid, "Origin": "https://[::1]"}, 200, 0, ""},
		{"configured origin", "POST", ping, map[string]string{HeaderSessionID: sid, "Origin": "https://APP.example.com"}, 200, 0, ""},
		{"unknown notification", "POST", `{"jsonrpc":"2.0","method":"notifications/whatever"}`, sessionHeaders(sid), 202, 0, ""},
		{"client response", "POST", `{"jsonrpc":"2.0","id":"s1","result":{}}`, sessionHeaders(sid), 202, 0, ""},
		{"client error response", "POST", `{"jsonrpc":"2.0","id":"s1","error":{"code":-1,"message":"no"}}`, sessionHeaders(sid), 202, 0, ""},
		{"header name case", "POST", ping, map[string]string{"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}, 200, 0, ""},
	}
	// With auth on (auth.go): alice's session, reached with alice's and
	// bob's credentials, bearer tokens and the trusted gateway header.
	authSrv := testWorker(t, store, "w1", withTestAuth(t))
	aliceSid := initSessionWith(t, authSrv.URL, map[string]string{"Authorization": "Bearer " + tokAlice})
	alice := func(extra map[string]string) map[string]string {
		h := map[string]string{HeaderSessionID: aliceSid, HeaderProtocolVersion: "2025-06-18", "Authorization": "Bearer " + tokAlice}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	authTests := []badCase{
		{"auth: no credentials", "POST", ping, alice(map[string]string{"Authorization": ""}), 401, CodeTransport, "null"},
		{"auth: unknown token", "POST", ping, alice(map[string]string{"Authorization": "Bearer nope"}), 401, CodeTransport, "null"},
		{"auth: empty bearer", "POST", ping, alice(map[string]string{"Authorization": "Bearer "}), 401, CodeTransport, "null"},
		{"auth: basic scheme", "POST", ping, alice(map[string]string{"Authorization": "Basic YWxpY2U6eA=="}), 401, CodeTransport, "null"},
		{"auth: hash sent as token", "POST", ping, alice(map[string]string{"Authorization": "Bearer " + sha256Hex(tokAlice)}), 401, CodeTransport, "null"},
		{"auth: bad token beside trusted header", "POST", ping, alice(map[string]string{"Authorization": "Bearer nope", testPrincipalHeader: "alice"}), 401, CodeTransport, "null"},
		{"auth: initialize without credentials", "POST", initBody, map[string]string{}, 401, CodeTransport, "null"},
		{"auth: GET without credentials", "GET", "", alice(map[string]string{"Authorization": "", "Accept": "text/event-stream"}), 401, CodeTransport, "null"},
		{"auth: DELETE without credentials", "DELETE", "", alice(map[string]string{"Authorization": ""}), 401, CodeTransport, "null"},
		{"auth: other principal's token", "POST", ping, alice(map[string]string{"Authorization": "Bearer " + tokBob}), 404, CodeSessionNotFound, "7"},
		{"auth: other principal by header", "POST", ping, alice(map[string]string{"Authorization": "", testPrincipalHeader: "bob"}), 404, CodeSessionNotFound, "7"},
		{"auth: other principal's notification", "POST", `{"jsonrpc":"2.0","method":"notifications/initialized"}`, alice(map[string]string{"Authorization": "Bearer " + tokBob}), 404, CodeSessionNotFound, "null"},
		{"auth: other principal's GET", "GET", "", alice(map[string]string{"Authorization": "Bearer " + tokBob, "Accept": "text/event-stream"}), 404, CodeSessionNotFound, "null"},
		{"auth: other principal's DELETE", "DELETE", "", alice(map[string]string{"Authorization": "Bearer " + tokBob}), 404, CodeSessionNotFound, "null"},
		{"auth: session of no principal", "POST", ping, map[string]string{HeaderSessionID: sid, "Authorization": "Bearer " + tokAlice}, 404, CodeSessionNotFound, "7"},
		{"auth: principal header not visible ascii", "POST", ping, alice(map[string]string{"Authorization": "", testPrincipalHeader: "al ice"}), 401, CodeTransport, "null"},
		// Not errors, for contrast.
		{"auth: own token", "POST", ping, alice(nil), 200, 0, ""},
		{"auth: bearer scheme case", "POST", ping, alice(map[string]string{"Authorization": "bearer " + tokAlice}), 200, 0, ""},
		{"auth: own principal by header", "POST", ping, alice(map[string]string{"Authorization": "", testPrincipalHeader: "alice"}), 200, 0, ""},
	}
	// Without auth, alice's session is not served either: the binding
	// is in the record, not in the worker that checks it.
	tests = append(tests, badCase{"principal-bound session without auth", "POST", ping, sessionHeaders(aliceSid), 404, CodeSessionNotFound, "7"})
	for _, tc := range append(tests, authTests...) {
		srv := srv
		if strings.HasPrefix(tc.name, "auth: ") {
			srv = authSrv
		}
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, srv.URL+"/mcp", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			for k, v := range tc.headers {
				if v == "" {
					req.Header.Del(k)
				} else {
					req.Header.Set(k, v)
				}
			}
			r := do(t, req)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d; body %s", r.status, tc.status, r.body)
			}
			if got := r.header.Get(HeaderWorker); got != "w1" {
				t.Errorf("%s = %q, want w1", HeaderWorker, got)
			}
			if ch := r.header.Get("WWW-Authenticate"); (tc.status == 401) != strings.HasPrefix(ch, `Bearer realm="erlmcp"`) {
				t.Errorf("WWW-Authenticate = %q with status %d", ch, tc.status)
			}
			if tc.status == 405 && r.header.Get("Allow") != "GET, POST, DELETE" {
				t.Errorf("Allow = %q", r.header.Get("Allow"))
			}
			if tc.code == 0 {
				if r.rpc.Error != nil {
					t.Fatalf("unexpected error %+v", r.rpc.Error)
				}
				if tc.status == 202 && len(r.body) != 0 {
					t.Errorf("202 with body %s", r.body)
				}
				return
			}
			if r.rpc.Error == nil || r.rpc.Error.Code != tc.code {
				t.Fatalf("JSON-RPC error %+v, want code %d; body %s", r.rpc.Error, tc.code, r.body)
			}
			if r.rpc.JSONRPC != "2.0" {
				t.Errorf("jsonrpc = %q", r.rpc.JSONRPC)
			}
			if tc.id != "" && string(r.rpc.ID) != tc.id {
				t.Errorf("id = %s, want %s", r.rpc.ID, tc.id)
			}
		})
	}
}

func TestLifecycle(t *testing.T) {
	store := newMemStore()
	srv := testWorker(t, store, "w1")

	r := post(t, srv.URL, initBody, nil)
	if r.status != 200 || r.rpc.Error != nil {
		t.Fatalf("initialize: %d %s", r.status, r.body)
	}
	sid := r.header.Get(HeaderSessionID)
	if len(sid) != 32 || !validSessionID(sid) {
		t.Fatalf("session id %q: want 32 hex characters", sid)
	}
	var init struct {
		ProtocolVersion string `json:"protocolVersion"`
		Capabilities    struct {
			Tools *struct {
				ListChanged bool `json:"listChanged"`
			} `json:"tools"`
		} `json:"capabilities"`
		ServerInfo struct{ Name, Version string } `json:"serverInfo"`
	}
	mustUnmarshal(t, r.rpc.Result, &init)
	if init.ProtocolVersion != "2025-06-18" || init.Capabilities.Tools == nil || init.ServerInfo.Name != "erlmcp" || init.ServerInfo.Version != "dev" {
		t.Fatalf("initialize result %s", r.rpc.Result)
	}
	if string(r.rpc.ID) != "1" {
		t.Errorf("id %s", r.rpc.ID)
	}
	rec, ok := store.record(sid)
	if !ok || rec.ProtocolVersion != "2025-06-18" || rec.Initialized || string(rec.ClientInfo) != `{"name":"test","version":"1"}` ||
		string(rec.ClientCapabilities) != `{"roots":{}}` || rec.CreatedBy != "w1" || rec.V != 1 {
		t.Fatalf("stored record %+v", rec)
	}

	h := sessionHeaders(sid)
	r = post(t, srv.URL, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, h)
	if r.status != http.StatusAccepted || len(r.body) != 0 {
		t.Fatalf("initialized: %d %s", r.status, r.body)
	}
	if rec, _ := store.record(sid); !rec.Initialized {
		t.Fatal("initialized flag not stored")
	}

	r = post(t, srv.URL, `{"jsonrpc":"2.0","id":"p","method":"ping"}`, h)
	if r.status != 200 || string(r.rpc.Result) != "{}" || string(r.rpc.ID) != `"p"` {
		t.Fatalf("ping: %d %s", r.status, r.body)
	}

	r = post(t, srv.URL, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`, h)
	var list struct {
		Tools []struct {
			Name        string `json:"name"`
			InputSchema struct {
				Type       string                     `json:"type"`
				Properties map[string]json.RawMessage `json:"properties"`
				Required   []string                   `json:"required"`
			} `json:"inputSchema"`
		} `json:"tools"`
	}
	mustUnmarshal(t, r.rpc.Result, &list)
	if len(list.Tools) != 2 || list.Tools[0].Name != "echo" || list.Tools[0].InputSchema.Type != "object" ||
		list.Tools[0].InputSchema.Properties["text"] == nil || len(list.Tools[0].InputSchema.Required) != 1 {
		t.Fatalf("tools/list: %s", r.body)
	}

	r = post(t, srv.URL, `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"héllo\nworld"}}}`, h)
	var res ToolResult
	mustUnmarshal(t, r.rpc.Result, &res)
	if len(res.Content) != 1 || res.Content[0].Type != "text" || res.Content[0].Text != "héllo\nworld" || res.IsError {
		t.Fatalf("tools/call: %s", r.body)
	}

	for _, tc := range []struct{ body string }{
		{`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"nope","arguments":{}}}`},
		{`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","arguments":{"text":5}}}`},
		{`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo"}}`},
		{`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","arguments":[1]}}`},
		{`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{}}`},
		{`{"jsonrpc":"2.0","id":4,"method":"tools/call"}`},
		{`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":[1]}`},
	} {
		r = post(t, srv.URL, tc.body, h)
		if r.status != 200 || r.rpc.Error == nil || r.rpc.Error.Code != CodeInvalidParams || r.rpc.Error.Message == "" {
			t.Errorf("%s: %d %s, want -32602", tc.body, r.status, r.body)
		}
	}
	r = post(t, srv.URL, `{"jsonrpc":"2.0","id":5,"method":"resources/frobnicate"}`, h)
	if r.status != 200 || r.rpc.Error == nil || r.rpc.Error.Code != CodeMethodNotFound || string(r.rpc.ID) != "5" {
		t.Fatalf("unknown method: %d %s", r.status, r.body)
	}

	if r = del(t, srv.URL, sid); r.status != http.StatusNoContent || r.header.Get(HeaderWorker) != "w1" {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	if _, ok := store.record(sid); ok {
		t.Fatal("session still stored after DELETE")
	}
	r = post(t, srv.URL, `{"jsonrpc":"2.0","id":6,"method":"ping"}`, h)
	if r.status != http.StatusNotFound || r.rpc.Error == nil || r.rpc.Error.Code != CodeSessionNotFound {
		t.Fatalf("after DELETE: %d %s", r.status, r.body)
	}
	if r = del(t, srv.URL, sid); r.status != http.StatusNotFound {
		t.Fatalf("second DELETE: %d", r.status)
	}
}

func TestVersionNegotiation(t *testing.T) {
	srv := testWorker(t, newMemStore(), "w1")
	for _, tc := range []struct{ asked, want string }{
		{"2025-03-26", "2025-03-26"},
		{"2025-06-18", "2025-06-18"},
		{"2025-11-25", "2025-11-25"},
		{"2024-11-05", "2025-11-25"},
		{"2099-01-01", "2025-11-25"},
	} {
		r := post(t, srv.URL, `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"`+tc.asked+`","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}`, nil)
		var res struct {
			ProtocolVersion string `json:"protocolVersion"`
		}
		mustUnmarshal(t, r.rpc.Result, &res)
		if res.ProtocolVersion != tc.want {
			t.Errorf("asked %s: got %s, want %s", tc.asked, res.ProtocolVersion, tc.want)
		}
	}
	// initialize without protocolVersion is invalid params, and creates no session.
	r := post(t, srv.URL, `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`, nil)
	if r.rpc.Error == nil || r.rpc.Error.Code != CodeInvalidParams || r.header.Get(HeaderSessionID) != "" {
		t.Fatalf("initialize without version: %d %s", r.status, r.body)
	}
}

// TestTwoWorkersShareSession: a session initialized on one worker is served
// by another that shares only the store.
func TestTwoWorkersShareSession(t *testing.T) {
	store := newMemStore()
	a := testWorker(t, store, "worker-a")
	b := testWorker(t, store, "worker-b")
	sid := initSession(t, a.URL)
	h := sessionHeaders(sid)
	r := post(t, b.URL, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, h)
	if r.status != 202 || r.header.Get(HeaderWorker) != "worker-b" {
		t.Fatalf("initialized on b: %d %s", r.status, r.body)
	}
	r = post(t, b.URL, `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"text":"from b"}}}`, h)
	var res ToolResult
	mustUnmarshal(t, r.rpc.Result, &res)
	if r.header.Get(HeaderWorker) != "worker-b" || len(res.Content) != 1 || res.Content[0].Text != "from b" {
		t.Fatalf("call on b: %d %s", r.status, r.body)
	}
	if r := del(t, b.URL, sid); r.status != 204 {
		t.Fatalf("DELETE on b: %d", r.status)
	}
	if r := post(t, a.URL, `{"jsonrpc":"2.0","id":10,"method":"ping"}`, h); r.status != 404 || r.header.Get(HeaderWorker) != "worker-a" {
		t.Fatalf("ping on a after DELETE on b: %d %s", r.status, r.body)
	}
}

func TestStoreUnavailable(t *testing.T) {
	store := newMemStore()
	srv := testWorker(t, store, "w1")
	sid := initSession(t, srv.URL)
	store.down.Store(true)
	for _, tc := range []struct {
		name, body string
		headers    map[string]string
		id         string
	}{
		{"request", `{"jsonrpc":"2.0","id":1,"method":"ping"}`, sessionHeaders(sid), "1"},
		{"notification", `{"jsonrpc":"2.0","method":"notifications/initialized"}`, sessionHeaders(sid), "null"},
		{"initialize", initBody, nil, "1"},
	} {
		r := post(t, srv.URL, tc.body, tc.headers)
		if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") != "1" ||
			r.rpc.Error == nil || r.rpc.Error.Code != CodeStoreUnavailable || !strings.Contains(r.rpc.Error.Message, "session store is unreachable") ||
			string(r.rpc.ID) != tc.id {
			t.Errorf("%s: %d %v %s", tc.name, r.status, r.header, r.body)
		}
		if tc.name == "initialize" && r.header.Get(HeaderSessionID) != "" {
			t.Error("initialize answered a session id the store never took")
		}
	}
	if r := del(t, srv.URL, sid); r.status != http.StatusServiceUnavailable {
		t.Errorf("DELETE: %d", r.status)
	}
	store.down.Store(false)
	if r := post(t, srv.URL, `{"jsonrpc":"2.0","id":1,"method":"ping"}`, sessionHeaders(sid)); r.status != 200 {
		t.Fatalf("after recovery: %d %s", r.status, r.body)
	}
}

// TestInitializedRetriesOnConflict: notifications/initialized re-reads and
// retries when another writer changed the record in between.
func TestInitializedRetriesOnConflict(t *testing.T) {
	store := newMemStore()
	srv := testWorker(t, store, "w1")
	sid := initSession(t, srv.URL)
	store.conflicts.Store(3)
	r := post(t, srv.URL, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, sessionHeaders(sid))
	if r.status != 202 {
		t.Fatalf("initialized: %d %s", r.status, r.body)
	}
	if rec, _ := store.record(sid); !rec.Initialized {
		t.Fatal("initialized flag not stored after conflicts")
	}
	// Endless conflicts: the worker gives up with a 503.
	sid2 := initSession(t, srv.URL)
	store.conflicts.Store(1000)
	if r := post(t, srv.URL, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, sessionHeaders(sid2)); r.status != 503 {
		t.Fatalf("endless conflicts: %d %s", r.status, r.body)
	}
}

// TestSSEAnswer: a client that accepts only SSE gets a quick call's
// answer as one SSE event (data escaped onto one line); the call sent
// nothing else, so it is not stored and has no event id.
func TestSSEAnswer(t *testing.T) {
	st := newMemStore()
	srv := testWorker(t, st, "w1")
	sid := initSession(t, srv.URL)
	r := post(t, srv.URL, `{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a\nb"}}}`,
		map[string]string{HeaderSessionID: sid, "Accept": "text/event-stream"})
	if r.status != 200 || r.header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("SSE: %d %v %s", r.status, r.header, r.body)
	}
	sc := bufio.NewScanner(strings.NewReader(string(r.body)))
	fields := map[string]string{}
	for sc.Scan() {
		if line := sc.Text(); line != "" {
			k, v, _ := strings.Cut(line, ": ")
			if _, dup := fields[k]; dup {
				t.Fatalf("field %s twice in %q", k, r.body)
			}
			fields[k] = v
		}
	}
	if _, ok := fields["id"]; ok || fields["data"] == "" {
		t.Fatalf("SSE event %q, want data and no id", r.body)
	}
	if evs := st.events(sid, requestStream(json.RawMessage("11"))); len(evs) != 0 {
		t.Fatalf("%d events stored for a quick call", len(evs))
	}
	var msg struct {
		ID     int        `json:"id"`
		Result ToolResult `json:"result"`
	}
	mustUnmarshal(t, []byte(fields["data"]), &msg)
	if msg.ID != 11 || msg.Result.Content[0].Text != "a\nb" {
		t.Fatalf("SSE data %s", fields["data"])
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	var notReady atomic.Pointer[error]
	h := NewHandler(newMemStore(), WithConfig(func() Config { c := DefaultConfig(); c.Common.ID = "w9"; return c }()),
		WithReadiness(func(context.Context) error {
			if e := notReady.Load(); e != nil {
				return *e
			}
			return nil
		}))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if c, _ := get("/healthz"); c != 200 {
		t.Errorf("/healthz %d", c)
	}
	if c, _ := get("/readyz"); c != 200 {
		t.Errorf("/readyz %d", c)
	}
	down := errors.New("store down")
	notReady.Store(&down)
	if c, b := get("/readyz"); c != 503 || !strings.Contains(b, "store down") {
		t.Errorf("/readyz not ready: %d %s", c, b)
	}
	notReady.Store(nil)
	h.SetDraining(true)
	if c, _ := get("/readyz"); c != 503 {
		t.Errorf("/readyz draining: %d", c)
	}
	sid := initSession(t, srv.URL)
	post(t, srv.URL, `{"jsonrpc":"2.0","id":1,"method":"no/such/method"}`, sessionHeaders(sid))
	c, b := get("/metrics")
	if c != 200 {
		t.Fatalf("/metrics %d", c)
	}
	for _, want := range []string{
		`erlmcp_worker_requests_total{code="200",method="initialize",node="w9",region="local",role="worker",zone="local-a"} 1`,
		`erlmcp_worker_requests_total{code="200",method="other",`,
		`erlmcp_worker_request_duration_seconds_bucket{method="initialize",`,
		`erlmcp_worker_sessions_created_total{`,
	} {
		if !strings.Contains(b, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(b, sid) {
		t.Error("/metrics contains a session id")
	}
}

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
}

// TestConcurrentInitialized: notifications/initialized racing on two
// workers all succeed, and the record is written exactly once.
func TestConcurrentInitialized(t *testing.T) {
	store := newMemStore()
	a := testWorker(t, store, "worker-a")
	b := testWorker(t, store, "worker-b")
	sid := initSession(t, a.URL)
	const n = 20
	statuses := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		url := a.URL
		if i%2 == 1 {
			url = b.URL
		}
		wg.Go(func() {
			// Not post: t.Fatal must not run outside the test goroutine.
			req, _ := http.NewRequest(http.MethodPost, url+"/mcp", strings.NewReader(`{"jsonrpc":"2.0","method":"notifications/initialized"}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set(HeaderSessionID, sid)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				statuses <- 0
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		})
	}
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != http.StatusAccepted {
			t.Errorf("status %d, want 202", s)
		}
	}
	store.mu.Lock()
	s := store.sessions[sid]
	store.mu.Unlock()
	if rec, _ := decodeRecord(s.Data); !rec.Initialized || s.Version != 2 {
		t.Fatalf("record v%d %s: want initialized at version 2", s.Version, s.Data)
	}
}

// sseEvent is one parsed SSE event.
type sseEvent struct {
	id, data string
	retry    string
}

// parseSSE splits an SSE body into events (comments dropped).
func parseSSE(body string) []sseEvent {
	var out []sseEvent
	for _, block := range strings.Split(body, "\n\n") {
		var ev sseEvent
		seen := false
		for _, line := range strings.Split(block, "\n") {
			k, v, _ := strings.Cut(line, ":")
			v = strings.TrimPrefix(v, " ")
			switch k {
			case "id":
				ev.id, seen = v, true
			case "data":
				ev.data, seen = v, true
			case "retry":
				ev.retry, seen = v, true
			}
		}
		if seen {
			out = append(out, ev)
		}
	}
	return out
}

// TestTouchOnlyWhenStale: a request reads the session without touching it
// while updated_at is fresh, and touches it once updated_at is older than
// touchInterval(idle TTL).
func TestTouchOnlyWhenStale(t *testing.T) {
	st := newMemStore()
	srv := testWorker(t, st, "w1")
	sid := initSession(t, srv.URL)
	ping := `{"jsonrpc":"2.0","id":7,"method":"ping"}`
	st.touches.Store(0)
	for range 3 {
		if r := post(t, srv.URL, ping, sessionHeaders(sid)); r.status != http.StatusOK || r.rpc.Error != nil {
			t.Fatalf("ping: %d %s", r.status, r.body)
		}
	}
	if n := st.touches.Load(); n != 0 {
		t.Fatalf("%d touches of a fresh session, want 0", n)
	}
	st.age(sid, touchInterval(DefaultSessionIdleTTL))
	if r := post(t, srv.URL, ping, sessionHeaders(sid)); r.status != http.StatusOK {
		t.Fatalf("ping: %d %s", r.status, r.body)
	}
	if n := st.touches.Load(); n != 1 {
		t.Fatalf("%d touches of a stale session, want 1", n)
	}
	if r := post(t, srv.URL, ping, sessionHeaders(sid)); r.status != http.StatusOK {
		t.Fatalf("ping: %d %s", r.status, r.body)
	}
	if n := st.touches.Load(); n != 1 {
		t.Fatalf("%d touches after the refresh, want still 1", n)
	}
	if got := touchInterval(30 * time.Minute); got != 60*time.Second {
		t.Fatalf("touchInterval(30m) = %s, want 60s", got)
	}
	if got := touchInterval(time.Minute); got != 6*time.Second {
		t.Fatalf("touchInterval(1m) = %s, want 6s", got)
	}
}
