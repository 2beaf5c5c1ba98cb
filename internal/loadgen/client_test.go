package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
)

func TestCounterValue(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		kind string
	}{
		{`{"content":[{"type":"text","text":"7"}],"structuredContent":{"value":7}}`, 7, ""},
		{`{"content":[{"type":"text","text":" 12 "}]}`, 12, ""},
		{`{"content":[],"structuredContent":{"value":"x"}}`, 0, "bad_result"},
		{`{"content":[{"type":"text","text":"seven"}]}`, 0, "bad_result"},
		{`{"content":[{"type":"text","text":"boom"}],"isError":true}`, 0, "tool_error"},
		{`[]`, 0, "decode"},
	} {
		v, err := CounterValue(json.RawMessage(tc.in))
		if KindOf(err) != tc.kind && !(err == nil && tc.kind == "") || v != tc.want {
			t.Errorf("CounterValue(%s) = %d, %v; want %d kind %q", tc.in, v, err, tc.want, tc.kind)
		}
	}
}

func TestClassify(t *testing.T) {
	bg := context.Background()
	expired, cancel := context.WithTimeout(bg, 0)
	defer cancel()
	cancelled, cancel2 := context.WithCancel(bg)
	cancel2()
	for _, tc := range []struct {
		ctx  context.Context
		err  error
		kind string
	}{
		{expired, errors.New("whatever"), "timeout"},
		{cancelled, errors.New("whatever"), "cancelled"},
		{bg, &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, "conn_refused"},
		{bg, fmt.Errorf("read: %w", syscall.ECONNRESET), "conn_reset"},
		{bg, io.ErrUnexpectedEOF, "conn_closed"},
		{bg, &Failure{Kind: "http_503"}, "http_503"},
		{bg, errors.New("odd"), "conn_error"},
	} {
		if got := classify(tc.ctx, tc.err).Kind; got != tc.kind {
			t.Errorf("classify(%v) = %s, want %s", tc.err, got, tc.kind)
		}
	}
}

// TestClientConnectionRefused checks a dead target is classified, not hung on.
func TestClientConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := &Client{URL: "http://" + addr + "/mcp", HTTP: NewHTTPClient(1, 0), Protocol: Protocol20251125}
	_, err = c.Initialize(context.Background())
	if KindOf(err) != "conn_refused" {
		t.Fatalf("err = %v (kind %s), want conn_refused", err, KindOf(err))
	}
}

// TestClientHeadersAndStatus checks what the client sends and how it reads
// statuses, without a real server.
func TestClientHeadersAndStatus(t *testing.T) {
	var got []http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Header.Clone())
		var m map[string]any
		_ = json.NewDecoder(r.Body).Decode(&m)
		switch m["method"] {
		case "initialize":
			w.Header().Set("MCP-Session-ID", "abc") // any spelling
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%v,"result":{"protocolVersion":"2025-06-18"}}`, m["id"])
		case "notifications/initialized":
			w.WriteHeader(http.StatusAccepted)
		case "tools/list":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%v,"error":{"code":-32000,"message":"no worker"}}`, m["id"])
		default:
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%v,"error":{"code":-32602,"message":"Unknown tool"}}`, m["id"])
		}
	}))
	defer srv.Close()
	c := &Client{URL: srv.URL, HTTP: NewHTTPClient(2, 0), Protocol: Protocol20251125, Headers: http.Header{"Authorization": {"Bearer t"}}}
	s, err := c.Initialize(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.ID != "abc" || s.Version != "2025-06-18" {
		t.Fatalf("session %q version %q", s.ID, s.Version)
	}
	_, err = s.Call(context.Background(), "tools/list", nil)
	var f *Failure
	if !errors.As(err, &f) || f.Kind != "http_503" || f.Status != 503 || f.Msg != "503 Service Unavailable: no worker" {
		t.Fatalf("503: %#v", err)
	}
	_, err = s.Call(context.Background(), "tools/call", map[string]any{"name": "nope"})
	if KindOf(err) != "jsonrpc_-32602" {
		t.Fatalf("rpc error: %v", err)
	}
	if got[0].Get("Mcp-Protocol-Version") != "" || got[0].Get("Mcp-Session-Id") != "" {
		t.Errorf("initialize sent session headers: %v", got[0])
	}
	for _, h := range got[1:] {
		if h.Get("Mcp-Session-Id") != "abc" || h.Get("Mcp-Protocol-Version") != "2025-06-18" || h.Get("Authorization") != "Bearer t" ||
			h.Get("Accept") != "application/json, text/event-stream" || h.Get("Content-Type") != "application/json" {
			t.Errorf("headers %v", h)
		}
	}
}

func TestSessionlessRequest(t *testing.T) {
	c := &Client{Protocol: Protocol20260728}
	s := c.NewSessionless()
	b, name := s.body("tools/call", 3, map[string]any{"name": "echo", "arguments": map[string]any{"text": "x"}}, callOpts{progressToken: "p"})
	var m struct {
		Params struct {
			Name string         `json:"name"`
			Meta map[string]any `json:"_meta"`
		} `json:"params"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if name != "echo" || m.Params.Meta["io.modelcontextprotocol/protocolVersion"] != Protocol20260728 ||
		m.Params.Meta["io.modelcontextprotocol/clientInfo"] == nil || m.Params.Meta["io.modelcontextprotocol/clientCapabilities"] == nil ||
		m.Params.Meta["progressToken"] != "p" {
		t.Fatalf("body %s name %q", b, name)
	}
	h := http.Header{}
	s.headers(h, "tools/call", "echo")
	if h.Get("Mcp-Method") != "tools/call" || h.Get("Mcp-Name") != "echo" || h.Get("Mcp-Protocol-Version") != Protocol20260728 || h.Get("Mcp-Session-Id") != "" {
		t.Fatalf("headers %v", h)
	}
}
