package front

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/gcfloor"
	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	clientv3 "go.etcd.io/etcd/client/v3"
)

type env struct {
	t     *testing.T
	etcd  *testcluster.Etcd
	cli   *clientv3.Client
	front *Front
	url   string
}

func startFront(t *testing.T, mutate func(*Config)) *env {
	t.Helper()
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	cfg := DefaultConfig()
	cfg.Common.ID = "front-test"
	cfg.Common.EtcdEndpoints = e.Endpoint
	cfg.Common.Prefix = e.Prefix
	cfg.Common.LeaseTTL = 2 * time.Second
	cfg.Listen = "127.0.0.1:0"
	cfg.ProbeInterval = 0
	if mutate != nil {
		mutate(&cfg)
	}
	f, err := Start(context.Background(), cfg, cli, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = f.Close(ctx)
	})
	return &env{t: t, etcd: e, cli: cli, front: f, url: "http://" + f.Addr()}
}

func (e *env) register(id, addr string) {
	e.t.Helper()
	m := membership.Member{Role: membership.RoleWorker, ID: id, Addr: addr, Region: "r", Zone: "z"}
	reg, err := membership.Register(context.Background(), e.cli, e.etcd.Prefix, m, 2*time.Second, logging.Discard())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = reg.Close(context.Background()) })
}

func (e *env) waitWorkers(n int) {
	e.t.Helper()
	testcluster.WaitFor(e.t, 10*time.Second, fmt.Sprintf("front to see %d workers", n), func() error {
		if got := e.front.Workers(); len(got) != n {
			return fmt.Errorf("workers %v", got)
		}
		return nil
	})
}

// testWorker is an httptest worker that counts requests and names itself.
// It answers the front's health probes (GET /healthz) itself, uncounted.
func testWorker(t *testing.T, name string, count *atomic.Int64, h http.HandlerFunc) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			return
		}
		count.Add(1)
		w.Header().Set("X-Backend", name)
		if h != nil {
			h(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Mcp-Session-Id", r.Header.Get("Mcp-Session-Id"))
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"backend":%q,"host":%q,"body":%q,"proto":%q}`, name, r.Host, body, r.Header.Get("MCP-Protocol-Version"))
	}))
	t.Cleanup(s.Close)
	return s
}

func hostport(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }

func post(t *testing.T, url, body string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+"/mcp", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Mcp-Session-Id", "sess-1")
	req.Header.Set("MCP-Protocol-Version", "2025-11-25")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestRoundRobinAlternates(t *testing.T) {
	e := startFront(t, nil)
	var na, nb atomic.Int64
	a := testWorker(t, "a", &na, nil)
	b := testWorker(t, "b", &nb, nil)
	e.register("worker-a", hostport(a))
	e.register("worker-b", hostport(b))
	e.waitWorkers(2)

	var seq []string
	for i := range 6 {
		resp, body := post(t, e.url, fmt.Sprintf(`{"n":%d}`, i))
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		var got struct{ Backend, Host, Body, Proto string }
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		if got.Body != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("backend got body %q", got.Body)
		}
		if got.Host != e.front.Addr() {
			t.Fatalf("backend saw Host %q, want the client's %q", got.Host, e.front.Addr())
		}
		if got.Proto != "2025-11-25" || resp.Header.Get("Mcp-Session-Id") != "sess-1" {
			t.Fatalf("headers not passed through: proto %q, session %q", got.Proto, resp.Header.Get("Mcp-Session-Id"))
		}
		if w := resp.Header.Get(WorkerHeader); w != "worker-"+got.Backend {
			t.Fatalf("%s = %q, backend %s", WorkerHeader, w, got.Backend)
		}
		seq = append(seq, got.Backend)
	}
	for i := 1; i < len(seq); i++ {
		if seq[i] == seq[i-1] {
			t.Fatalf("requests did not alternate: %v", seq)
		}
	}
	if na.Load() != 3 || nb.Load() != 3 {
		t.Fatalf("a got %d, b got %d", na.Load(), nb.Load())
	}
}

func TestRetryWhenWorkerRefusesConnection(t *testing.T) {
	e := startFront(t, nil)
	var nb atomic.Int64
	b := testWorker(t, "b", &nb, nil)
	dead := testcluster.FreeAddr(t) // nothing listens there
	e.register("worker-a", dead)
	e.register("worker-b", hostport(b))
	e.waitWorkers(2)
	for i := range 6 {
		resp, body := post(t, e.url, fmt.Sprintf(`{"n":%d}`, i))
		if resp.StatusCode != 200 || !strings.Contains(body, `"backend":"b"`) {
			t.Fatalf("request %d: status %d body %s", i, resp.StatusCode, body)
		}
		if !strings.Contains(body, fmt.Sprintf(`{\"n\":%d}`, i)) {
			t.Fatalf("request %d: body not resent intact: %s", i, body)
		}
	}
	if nb.Load() != 6 {
		t.Fatalf("b got %d requests, want 6", nb.Load())
	}
	if !e.front.pool.isDownAddr(dead) {
		t.Fatal("the dead worker was never tried (or not cooled down)")
	}
}

func TestNoRetryAfterRequestReachedWorker(t *testing.T) {
	e := startFront(t, nil)
	var na, nb atomic.Int64
	a := testWorker(t, "a", &na, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close() // the request arrived; the worker dies before answering
		}
	})
	b := testWorker(t, "b", &nb, nil)
	e.register("worker-a", hostport(a))
	e.register("worker-b", hostport(b))
	e.waitWorkers(2)

	var ok int64
	for i := 0; ; i++ {
		if i > 4 {
			t.Fatal("no request reached the failing worker")
		}
		resp, body := post(t, e.url, `{"x":1}`)
		if resp.StatusCode == 200 {
			ok++
			continue
		}
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, `"jsonrpc":"2.0"`) {
			t.Fatalf("status %d body %s, want 502 with a JSON-RPC error", resp.StatusCode, body)
		}
		break
	}
	if na.Load() != 1 {
		t.Fatalf("failing worker got %d requests, want 1", na.Load())
	}
	if nb.Load() != ok {
		t.Fatalf("healthy worker got %d requests, want %d (the failed one must not be retried)", nb.Load(), ok)
	}
}

func TestSSEStreamsUnbuffered(t *testing.T) {
	e := startFront(t, nil)
	release := make(chan struct{})
	var n atomic.Int64
	a := testWorker(t, "a", &n, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		fmt.Fprint(w, "id: 1\ndata: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "id: 2\ndata: second\n\n")
	})
	e.register("worker-a", hostport(a))
	e.waitWorkers(1)

	req, _ := http.NewRequest(http.MethodGet, e.url+"/mcp", nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", "0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				got <- d
			}
		}
		close(got)
	}()
	select {
	case d := <-got:
		if d != "first" {
			t.Fatalf("first event %q", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("first event not delivered while the worker holds the stream open")
	}
	close(release)
	if d := <-got; d != "second" {
		t.Fatalf("second event %q", d)
	}
}

func TestNoWorkers503(t *testing.T) {
	e := startFront(t, nil)
	resp, body := post(t, e.url, `{}`)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	var rpc struct {
		JSONRPC string `json:"jsonrpc"`
		Error   struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &rpc); err != nil || rpc.JSONRPC != "2.0" || !strings.Contains(rpc.Error.Message, "no worker is available") {
		t.Fatalf("body %s (%v)", body, err)
	}
	r, err := http.Get(e.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d with no workers", r.StatusCode)
	}
}

func TestAllWorkersRefuse503(t *testing.T) {
	e := startFront(t, nil)
	e.register("worker-a", testcluster.FreeAddr(t))
	e.register("worker-b", testcluster.FreeAddr(t))
	e.waitWorkers(2)
	resp, body := post(t, e.url, `{}`)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "no worker is available") {
		t.Fatalf("status %d body %s", resp.StatusCode, body)
	}
}

func TestBodyTooLarge413(t *testing.T) {
	e := startFront(t, func(c *Config) { c.MaxBodyBytes = 16 })
	var n atomic.Int64
	a := testWorker(t, "a", &n, nil)
	e.register("worker-a", hostport(a))
	e.waitWorkers(1)
	resp, _ := post(t, e.url, strings.Repeat("x", 17))
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want 413", resp.StatusCode)
	}
	if resp, _ := post(t, e.url, strings.Repeat("x", 16)); resp.StatusCode != 200 {
		t.Fatalf("status %d for a body at the limit", resp.StatusCode)
	}
	if n.Load() != 1 {
		t.Fatalf("worker got %d requests, want 1", n.Load())
	}
}

// A chunked body (no declared length) is held to the same limit.
func TestChunkedBodyLimit(t *testing.T) {
	e := startFront(t, func(c *Config) { c.MaxBodyBytes = 16 })
	var n atomic.Int64
	a := testWorker(t, "a", &n, nil)
	e.register("worker-a", hostport(a))
	e.waitWorkers(1)
	send := func(body string) (int, string) {
		// A reader of unknown length makes the client send it chunked.
		req, _ := http.NewRequest(http.MethodPost, e.url+"/mcp", io.MultiReader(strings.NewReader(body)))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := send(strings.Repeat("x", 17)); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d for a chunked body over the limit, want 413", code)
	}
	code, body := send(strings.Repeat("y", 16))
	if code != 200 || !strings.Contains(body, strings.Repeat("y", 16)) {
		t.Fatalf("status %d body %s for a chunked body at the limit", code, body)
	}
	if n.Load() != 1 {
		t.Fatalf("worker got %d requests, want 1", n.Load())
	}
}

// A body above the size readBody preallocates from Content-Length (64 KiB)
// reaches the worker whole.
func TestLargeBodyForwarded(t *testing.T) {
	e := startFront(t, nil)
	var n atomic.Int64
	var got atomic.Int64
	a := testWorker(t, "a", &n, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.Store(int64(len(b)))
	})
	e.register("worker-a", hostport(a))
	e.waitWorkers(1)
	const size = 200 << 10
	if resp, _ := post(t, e.url, strings.Repeat("z", size)); resp.StatusCode != 200 {
		t.Fatalf("status %d for a %d-byte body", resp.StatusCode, size)
	}
	if got.Load() != size {
		t.Fatalf("worker read %d bytes, want %d", got.Load(), size)
	}
}

func TestDrainingWorkerSkippedAndFrontRegistered(t *testing.T) {
	e := startFront(t, nil)
	var na, nb atomic.Int64
	a := testWorker(t, "a", &na, nil)
	b := testWorker(t, "b", &nb, nil)
	e.register("worker-a", hostport(a))
	m := membership.Member{Role: membership.RoleWorker, ID: "worker-b", Addr: hostport(b)}
	reg, err := membership.Register(context.Background(), e.cli, e.etcd.Prefix, m, 2*time.Second, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close(context.Background())
	e.waitWorkers(2)
	if err := reg.Update(context.Background(), func(m *membership.Member) { m.Draining = true }); err != nil {
		t.Fatal(err)
	}
	e.waitWorkers(1)
	for range 4 {
		post(t, e.url, `{}`)
	}
	if nb.Load() != 0 || na.Load() != 4 {
		t.Fatalf("a %d b %d: draining worker must get nothing", na.Load(), nb.Load())
	}
	fronts, err := membership.List(context.Background(), e.cli, e.etcd.Prefix, membership.RoleFront)
	if err != nil || len(fronts) != 1 || fronts[0].Addr != e.front.Addr() || fronts[0].ID != "front-test" {
		t.Fatalf("front membership %+v (%v)", fronts, err)
	}
	r, err := http.Get(e.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != 200 {
		t.Fatalf("/healthz %d", r.StatusCode)
	}
}

func TestProbeCoolsDownDeadWorker(t *testing.T) {
	e := startFront(t, func(c *Config) { c.ProbeInterval = 50 * time.Millisecond; c.Cooldown = time.Minute })
	dead := testcluster.FreeAddr(t)
	e.register("worker-a", dead)
	e.waitWorkers(1)
	testcluster.WaitFor(t, 10*time.Second, "probe to mark the dead worker down", func() error {
		if !e.front.pool.isDownAddr(dead) {
			return fmt.Errorf("not down yet")
		}
		return nil
	})
	// A worker now listening there is marked up again by the next probe.
	l, err := net.Listen("tcp", dead)
	if err != nil {
		t.Skipf("port reused meanwhile: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {})}
	go srv.Serve(l)
	defer srv.Close()
	testcluster.WaitFor(t, 10*time.Second, "probe to mark the worker up", func() error {
		if e.front.pool.isDownAddr(dead) {
			return fmt.Errorf("still down")
		}
		return nil
	})
}

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig()
	c.Common.ID = "f"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.Listen = "nonsense"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--listen") {
		t.Fatalf("Validate = %v", err)
	}
	c = DefaultConfig()
	c.Common.ID = "f"
	c.GCPercent = 0
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--gc-percent") {
		t.Fatalf("Validate with GCPercent 0 = %v", err)
	}
	c.GCPercent, c.GCMinHeapMiB = 400, -1
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--gc-min-heap-mib -1") {
		t.Fatalf("Validate with GCMinHeapMiB -1 = %v", err)
	}
	c.GCMinHeapMiB = 64
	if gc, err := gcfloor.FromMiB(c.GCPercent, c.GCMinHeapMiB); gc != (gcfloor.Config{Percent: 400, MinHeap: 64 << 20}) || err != nil || c.Validate() != nil {
		t.Fatalf("GC target of GCPercent 400, GCMinHeapMiB 64 = %+v, %v (Validate: %v)", gc, err, c.Validate())
	}
}

func TestPickSpreadsAroundCoolingWorker(t *testing.T) {
	p := newPool(time.Minute)
	p.set([]membership.Member{
		{Role: membership.RoleWorker, ID: "w1", Addr: "127.0.0.1:1"},
		{Role: membership.RoleWorker, ID: "w2", Addr: "127.0.0.1:2"},
		{Role: membership.RoleWorker, ID: "w3", Addr: "127.0.0.1:3"},
		{Role: membership.RoleWorker, ID: "w4", Addr: "127.0.0.1:4", Draining: true},
	})
	p.markDownAddr("127.0.0.1:1")
	counts := map[string]int{}
	for range 10 {
		counts[p.pick(nil).id]++
	}
	if counts["w1"] != 0 || counts["w4"] != 0 || counts["w2"] != 5 || counts["w3"] != 5 {
		t.Fatalf("picks %v, want w2 and w3 five times each", counts)
	}
	// Only cooling workers left untried: one is still tried.
	if b := p.pick(map[string]bool{"127.0.0.1:2": true, "127.0.0.1:3": true}); b == nil || b.id != "w1" {
		t.Fatalf("fallback pick %v", b)
	}
	if b := p.pick(map[string]bool{"127.0.0.1:1": true, "127.0.0.1:2": true, "127.0.0.1:3": true}); b != nil {
		t.Fatalf("pick with all tried = %v", b.id)
	}
}

// A worker whose membership key vanishes without it draining (etcd revoked
// its lease under it) keeps getting requests for --vanished-grace, then
// leaves the pool if it has not registered again.
func TestVanishedWorkerKeptForGrace(t *testing.T) {
	const grace = 1500 * time.Millisecond
	e := startFront(t, func(c *Config) { c.VanishedGrace = grace })
	var n atomic.Int64
	w := testWorker(t, "a", &n, nil)
	ctx := context.Background()
	g, err := e.cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	val, _ := json.Marshal(membership.Member{Role: membership.RoleWorker, ID: "worker-a", Addr: hostport(w)})
	if _, err := e.cli.Put(ctx, membership.Key(e.etcd.Prefix, membership.RoleWorker, "worker-a"), string(val), clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	e.waitWorkers(1)
	// Taken before the revoke: the front may see the key gone, and start
	// the grace, before the revoke's answer reaches the test.
	revoked := time.Now()
	if _, err := e.cli.Revoke(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 10*time.Second, "the front to see the key gone", func() error {
		e.front.membersMu.Lock()
		defer e.front.membersMu.Unlock()
		if len(e.front.members) != 0 {
			return fmt.Errorf("members %d", len(e.front.members))
		}
		return nil
	})
	if resp, body := post(t, e.url, `{}`); resp.StatusCode != http.StatusOK && time.Since(revoked) < grace {
		t.Fatalf("within the grace: status %d %s, want the worker to answer", resp.StatusCode, body)
	}
	testcluster.WaitFor(t, grace+5*time.Second, "the vanished worker to leave after its grace", func() error {
		if got := e.front.Workers(); len(got) != 0 {
			return fmt.Errorf("workers %v", got)
		}
		return nil
	})
	if left := time.Since(revoked); left < grace {
		t.Fatalf("left the pool %s after the revoke, before the grace of %s", left, grace)
	}
	if resp, _ := post(t, e.url, `{}`); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("after the grace: status %d, want 503", resp.StatusCode)
	}
}
