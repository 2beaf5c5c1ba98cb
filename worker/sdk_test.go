package worker

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// workerCount counts which worker answered each /mcp request.
type workerCount struct {
	mu      sync.Mutex
	workers map[string]int
}

// alternating sends every request to the next of several workers, as a
// load balancer without stickiness would.
type alternating struct {
	mu    sync.Mutex
	next  int
	hosts []string
}

func (a *alternating) RoundTrip(r *http.Request) (*http.Response, error) {
	a.mu.Lock()
	host := a.hosts[a.next%len(a.hosts)]
	a.next++
	a.mu.Unlock()
	r = r.Clone(r.Context())
	r.URL.Host = host
	r.Host = host
	return http.DefaultTransport.RoundTrip(r)
}

// TestGoSDKClient: the official go-sdk client runs a whole session against
// two workers behind a non-sticky round robin.
func TestGoSDKClient(t *testing.T) {
	store := newMemStore()
	a := testWorker(t, store, "worker-a")
	b := testWorker(t, store, "worker-b")
	rr := &alternating{hosts: []string{a.Listener.Addr().String(), b.Listener.Addr().String()}}
	counted := &workerCount{workers: map[string]int{}}
	httpClient := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := rr.RoundTrip(r)
		if err == nil {
			counted.mu.Lock()
			counted.workers[resp.Header.Get(HeaderWorker)]++
			counted.mu.Unlock()
		}
		return resp, err
	})}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "worker-test", Version: "1"}, nil)
	s, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: a.URL + "/mcp", HTTPClient: httpClient, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if got := s.InitializeResult().ServerInfo.Name; got != ServerName {
		t.Errorf("serverInfo.name %q", got)
	}
	tools, err := s.ListTools(ctx, nil)
	if err != nil || len(tools.Tools) != 2 || tools.Tools[0].Name != "echo" {
		t.Fatalf("ListTools: %+v %v", tools, err)
	}
	for _, text := range []string{"one", "two", "three"} {
		res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": text}})
		if err != nil || res.IsError || len(res.Content) != 1 {
			t.Fatalf("CallTool: %+v %v", res, err)
		}
		if tc, ok := res.Content[0].(*mcp.TextContent); !ok || tc.Text != text {
			t.Fatalf("CallTool content %#v", res.Content[0])
		}
	}
	if err := s.Ping(ctx, nil); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	sid := s.ID()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, ok := store.record(sid); ok {
		t.Error("session still stored after the client closed it (DELETE)")
	}
	counted.mu.Lock()
	defer counted.mu.Unlock()
	if counted.workers["worker-a"] == 0 || counted.workers["worker-b"] == 0 {
		t.Fatalf("requests per worker %v: want both workers used", counted.workers)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestGoSDKClientSessionless: the official go-sdk client, against workers
// that serve 2026-07-28, stays on it (server/discover, no session) and
// calls tools, its requests alternating between two workers; a tool that
// elicits goes through MRTR rounds the client answers.
func TestGoSDKClientSessionless(t *testing.T) {
	store := newMemStore()
	key := []byte("shared-cluster-key-0123456789abc")
	a := modernWorker(t, store, "worker-a", WithMRTRKey(key))
	b := modernWorker(t, store, "worker-b", WithMRTRKey(key))
	rr := &alternating{hosts: []string{a.Listener.Addr().String(), b.Listener.Addr().String()}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "worker-test", Version: "1"}, &mcp.ClientOptions{
		ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"name": "Ada"}}, nil
		},
	})
	s, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: a.URL + "/mcp", HTTPClient: &http.Client{Transport: rr}, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer s.Close()
	if got := s.InitializeResult().ProtocolVersion; got != ModernProtocolVersion {
		t.Fatalf("negotiated %q, want %s", got, ModernProtocolVersion)
	}
	if s.ID() != "" {
		t.Errorf("session id %q on a sessionless connection", s.ID())
	}
	if _, err := s.ListTools(ctx, nil); err != nil {
		t.Fatalf("ListTools: %v", err)
	}
	for _, tc := range []struct {
		tool string
		args map[string]any
		want string
	}{
		{"echo", map[string]any{"text": "one"}, "one"},
		{"test_input_required_result_elicitation", map[string]any{}, "Hello, Ada!"},
	} {
		res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: tc.tool, Arguments: tc.args})
		if err != nil || res.IsError || len(res.Content) != 1 {
			t.Fatalf("CallTool %s: %+v %v", tc.tool, res, err)
		}
		if tc2, ok := res.Content[0].(*mcp.TextContent); !ok || tc2.Text != tc.want {
			t.Errorf("CallTool %s: %#v, want %q", tc.tool, res.Content[0], tc.want)
		}
	}
}
