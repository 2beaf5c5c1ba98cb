package front

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/testcluster"
)

// pausedWorker listens but never accepts: the kernel completes handshakes
// and buffers requests, and nothing ever answers, as with a SIGSTOPped
// worker process.
func pausedWorker(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

// postMethod sends a JSON-RPC request with method through the front.
func postMethod(ctx context.Context, url, method string) (*http.Response, string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/mcp",
		strings.NewReader(fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":%q}`, method)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b), nil
}

// A read-only request stuck on a paused worker is cancelled once the
// probes confirm the worker down (SuspectAfter, then ProbeFailAfter probe
// timeouts) and sent to the live worker: the client sees a 200. Without
// the detector it would hang until the client gave up.
func TestPausedWorkerIdempotentRequestMoved(t *testing.T) {
	e := startFront(t, func(c *Config) {
		c.SuspectAfter = 50 * time.Millisecond
		c.ProbeTimeout = 200 * time.Millisecond
		c.ProbeFailAfter = 2
		c.Cooldown = time.Minute
	})
	paused := pausedWorker(t)
	var nb atomic.Int64
	b := testWorker(t, "b", &nb, nil)
	e.register("worker-a", paused)
	e.register("worker-b", hostport(b))
	e.waitWorkers(2)

	// Round robin sends one of two concurrent requests to the paused worker.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res := make(chan string, 2)
	for range 2 {
		go func() {
			start := time.Now()
			resp, body, err := postMethod(ctx, e.url, "tools/list")
			switch {
			case err != nil:
				res <- fmt.Sprintf("failed after %s: %v", time.Since(start), err)
			default:
				res <- fmt.Sprintf("%d %s", resp.StatusCode, body)
			}
		}()
	}
	for range 2 {
		if got := <-res; !strings.HasPrefix(got, "200 ") || !strings.Contains(got, `"backend":"b"`) {
			t.Fatalf("tools/list: %s; want 200 from the live worker", got)
		}
	}
	if !e.front.pool.isDownAddr(paused) {
		t.Fatal("the paused worker is not out of rotation")
	}
	for i := range 4 {
		resp, body, err := postMethod(ctx, e.url, "tools/call")
		if err != nil || resp.StatusCode != 200 || !strings.Contains(body, `"backend":"b"`) {
			t.Fatalf("request %d after the worker was found down: %v %v %s", i, err, resp, body)
		}
	}
}

// A tools/call stuck on a paused worker is cancelled once the probes
// confirm the worker down, and answered 502, not resent: its outcome is
// unknown, as for a killed worker (the worker, resumed, will not start it:
// its connection is gone).
func TestPausedWorkerToolCallCancelled(t *testing.T) {
	e := startFront(t, func(c *Config) {
		c.SuspectAfter = 50 * time.Millisecond
		c.ProbeTimeout = 100 * time.Millisecond
		c.ProbeFailAfter = 2
		c.Cooldown = time.Minute
	})
	paused := pausedWorker(t)
	var nb atomic.Int64
	b := testWorker(t, "b", &nb, nil)
	e.register("worker-a", paused)
	e.register("worker-b", hostport(b))
	e.waitWorkers(2)
	res := make(chan int, 2)
	for range 2 {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			resp, _, err := postMethod(ctx, e.url, "tools/call")
			if err != nil {
				res <- -1
				return
			}
			res <- resp.StatusCode
		}()
	}
	got := []int{<-res, <-res}
	sort.Ints(got)
	if fmt.Sprint(got) != "[200 502]" {
		t.Fatalf("answers %v, want 200 from the live worker and 502 for the call stuck on the paused one", got)
	}
	if !e.front.pool.isDownAddr(paused) {
		t.Fatal("the call was cancelled but the worker is not marked down")
	}
	if n := nb.Load(); n != 1 {
		t.Fatalf("the live worker got %d calls, want 1: a tools/call of unknown outcome must not be resent", n)
	}
}

// A slow worker whose health probe answers is not aborted: suspicion only
// starts probes, and a probe that answers clears it.
func TestSlowWorkerNotAborted(t *testing.T) {
	e := startFront(t, func(c *Config) {
		c.SuspectAfter = 20 * time.Millisecond
		c.ProbeTimeout = 500 * time.Millisecond
		c.ProbeFailAfter = 1
	})
	var na atomic.Int64
	a := testWorker(t, "a", &na, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(600 * time.Millisecond) // a slow tool call, longer than a probe timeout
		fmt.Fprint(w, `{"backend":"a"}`)
	})
	var nb atomic.Int64
	b := testWorker(t, "b", &nb, nil)
	e.register("worker-a", hostport(a))
	e.register("worker-b", hostport(b))
	e.waitWorkers(2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 4 {
		resp, body, err := postMethod(ctx, e.url, "tools/call")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("request %d: %v %v %s", i, err, resp, body)
		}
	}
	if na.Load() != 2 || e.front.pool.isDownAddr(hostport(a)) {
		t.Fatalf("slow worker got %d requests (want 2), down %v", na.Load(), e.front.pool.isDownAddr(hostport(a)))
	}
}

// When no other worker answers either, a paused worker is taken out of
// rotation but its in-flight requests are left alone: there is nowhere
// better for them, and a starved machine looks the same from here.
func TestNoAbortWithoutALivePeer(t *testing.T) {
	e := startFront(t, func(c *Config) {
		c.SuspectAfter = 20 * time.Millisecond
		c.ProbeTimeout = 100 * time.Millisecond
		c.ProbeFailAfter = 2
		c.Cooldown = time.Minute
	})
	paused := pausedWorker(t)
	e.register("worker-a", paused)
	e.waitWorkers(1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := postMethod(ctx, e.url, "tools/call")
		done <- err
	}()
	testcluster.WaitFor(t, 20*time.Second, "the paused worker to be found down", func() error {
		if !e.front.pool.isDownAddr(paused) {
			return fmt.Errorf("not down yet")
		}
		return nil
	})
	// Wait for the confirmation to finish (it probes the peers last), then
	// check the request still waits.
	testcluster.WaitFor(t, 20*time.Second, "the confirmation to end", func() error {
		if e.front.det.confirms.Load() == 0 {
			return fmt.Errorf("still confirming")
		}
		return nil
	})
	select {
	case err := <-done:
		t.Fatalf("request ended (%v) though no other worker could take it", err)
	default:
	}
	cancel()
	<-done
}

// rstWorker answers its first request on a connection, then resets the
// connection when the next request arrives, without reading it: a worker
// killed while that request sat unread in its socket (the kernel answers
// such a close with RST). It counts requests it answered and resets.
func rstWorker(t *testing.T, answered, resets *atomic.Int64) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				if req.URL.Path == "/healthz" {
					fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
					return
				}
				answered.Add(1)
				fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"backend\":\"a\"}")
				if _, err := br.Peek(1); err != nil {
					return
				}
				resets.Add(1)
				_ = c.(*net.TCPConn).SetLinger(0)
			}(c)
		}
	}()
	return l.Addr().String()
}

// With keep-alive, a POST written on a pooled connection that the worker
// resets before any byte of an answer provably was not processed, so it
// goes to another worker and the client sees no error.
func TestKeepAliveResetBeforeAnswerRetried(t *testing.T) {
	e := startFront(t, nil)
	var na, nb, resets atomic.Int64
	a := rstWorker(t, &na, &resets)
	b := testWorker(t, "b", &nb, nil)
	e.register("worker-a", a)
	e.register("worker-b", hostport(b))
	e.waitWorkers(2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 4 {
		resp, body, err := postMethod(ctx, e.url, "tools/call")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("request %d: %v %v %s", i, err, resp, body)
		}
	}
	if resets.Load() == 0 || na.Load()+nb.Load() != 4 {
		t.Fatalf("a reset %d requests and answered %d, b answered %d: want a reset and 4 answers", resets.Load(), na.Load(), nb.Load())
	}
}

// A read-only request whose worker closed the connection after reading it
// is sent again to another worker; a tools/call in the same spot is not
// (TestNoRetryAfterRequestReachedWorker).
func TestIdempotentRequestRetriedAfterWorkerDied(t *testing.T) {
	e := startFront(t, nil)
	var na, nb atomic.Int64
	a := testWorker(t, "a", &na, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
	})
	b := testWorker(t, "b", &nb, nil)
	e.register("worker-a", hostport(a))
	e.register("worker-b", hostport(b))
	e.waitWorkers(2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 4 {
		resp, body, err := postMethod(ctx, e.url, "tools/list")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("tools/list %d: %v %v %s", i, err, resp, body)
		}
	}
	if na.Load() == 0 {
		t.Fatal("no request reached the failing worker")
	}
}

func TestIdempotent(t *testing.T) {
	for _, c := range []struct {
		method, body string
		want         bool
	}{
		{http.MethodGet, "", true},
		{http.MethodDelete, "", false},
		{http.MethodPost, `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, true},
		{http.MethodPost, `{"jsonrpc":"2.0","id":1,"method":"ping"}`, true},
		{http.MethodPost, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}`, false},
		{http.MethodPost, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, false},
		{http.MethodPost, `[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]`, false},
		{http.MethodPost, `not json`, false},
	} {
		if got := idempotent(c.method, scanRPC([]byte(c.body))); got != c.want {
			t.Errorf("idempotent(%s, %s) = %v, want %v", c.method, c.body, got, c.want)
		}
	}
}

// A worker whose health probes time out (a starved process) but which
// keeps answering other requests is slow, not paused: its in-flight
// requests are left alone and it stays in rotation.
func TestStarvedWorkerAnsweringRequestsNotAborted(t *testing.T) {
	e := startFront(t, func(c *Config) {
		c.SuspectAfter = 50 * time.Millisecond
		c.ProbeTimeout = 100 * time.Millisecond
		c.ProbeFailAfter = 2
	})
	a := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch {
		case r.URL.Path == "/healthz":
			time.Sleep(time.Second) // every probe times out
		case strings.Contains(string(body), "slow"):
			time.Sleep(1500 * time.Millisecond)
		}
		fmt.Fprint(w, `{"backend":"a"}`)
	}))
	t.Cleanup(a.Close)
	var nb atomic.Int64
	b := testWorker(t, "b", &nb, nil)
	e.register("worker-a", hostport(a))
	e.register("worker-b", hostport(b))
	e.waitWorkers(2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Fast requests keep flowing to both workers while the slow ones wait.
	stop := make(chan struct{})
	fast := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				fast <- nil
				return
			default:
			}
			resp, body, err := postMethod(ctx, e.url, "tools/call")
			if err != nil || resp.StatusCode != 200 {
				fast <- fmt.Errorf("fast request: %v %v %s", err, resp, body)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	slow := make(chan string, 2)
	for range 2 {
		go func() {
			resp, body, err := postMethod(ctx, e.url, "slow")
			if err != nil {
				slow <- err.Error()
				return
			}
			slow <- fmt.Sprintf("%d %s", resp.StatusCode, body)
		}()
	}
	for range 2 {
		if got := <-slow; !strings.HasPrefix(got, "200 ") {
			t.Errorf("slow request: %s", got)
		}
	}
	close(stop)
	if err := <-fast; err != nil {
		t.Fatal(err)
	}
	if e.front.pool.isDownAddr(hostport(a)) {
		t.Fatal("a worker that kept answering was taken out of rotation")
	}
}
