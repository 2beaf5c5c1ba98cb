package front

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/peerconn"
)

// BenchmarkProxyToolCall measures one tools/call through the front's
// proxy (no etcd: the pool is set by hand) to a worker that answers at
// once, over loopback keep-alive connections on both sides. Client and
// worker run in the same process, so ns/op and allocs/op include theirs;
// compare runs of it against each other, not against a bare server.
func BenchmarkProxyToolCall(b *testing.B) {
	worker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello"}]}}`)
	}))
	defer worker.Close()

	cfg := DefaultConfig()
	cfg.ProbeInterval = 0
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := newPool(cfg.Cooldown)
	p.set([]membership.Member{{Role: membership.RoleWorker, ID: "w1", Addr: strings.TrimPrefix(worker.URL, "http://")}})
	det := newDetector(ctx, p, cfg, logging.Discard())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: newProxy(p, det, cfg, logging.Discard()), ConnContext: peerconn.ConnContext}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
	url := "http://" + ln.Addr().String() + "/mcp"
	const body = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}`
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Mcp-Session-Id", "sess-1")
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Error(fmt.Errorf("status %s", resp.Status))
				return
			}
		}
	})
}

// Every request picks a worker: with no traffic split, picking must not
// allocate (every request does it).
func TestPickDoesNotAllocate(t *testing.T) {
	p := newPool(time.Second)
	p.set([]membership.Member{
		{Role: membership.RoleWorker, ID: "w1", Addr: "127.0.0.1:1"},
		{Role: membership.RoleWorker, ID: "w2", Addr: "127.0.0.1:2"},
		{Role: membership.RoleWorker, ID: "w3", Addr: "127.0.0.1:3"},
	})
	p.markDownAddr("127.0.0.1:2")
	tried := map[string]bool{"127.0.0.1:3": true}
	n := testing.AllocsPerRun(100, func() {
		if b := p.pick(tried); b == nil || b.id != "w1" {
			t.Fatalf("picked %v, want w1", b)
		}
	})
	if n != 0 {
		t.Fatalf("pick allocated %v times per call", n)
	}
}
