package front

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/erlmcp/erlmcp/internal/peerconn"
	"github.com/sirupsen/logrus"
	"go.uber.org/zap"
)

// WorkerHeader names the worker that served a response. Workers may set it
// themselves; the front sets it (to the member id) when they do not.
const WorkerHeader = "X-Erlmcp-Worker"

// errNoWorker: no registered worker could be reached.
type noWorkerError struct {
	tried int
	last  error
}

func (e *noWorkerError) Error() string {
	if e.tried == 0 {
		return "no worker is registered"
	}
	return fmt.Sprintf("none of %d workers could take the request (last: %v); retry, and check the workers' health (/readyz) if it persists", e.tried, e.last)
}

func (e *noWorkerError) Unwrap() error { return e.last }

// neverReached reports whether err means the request was not delivered
// at all: the connection to the worker could not be made, so nothing was
// written and the request may go to another worker.
func neverReached(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// unprocessed reports whether err, seen before any byte of the answer,
// proves the worker never handled the request: the worker's kernel reset
// the connection. A socket closed with unread data, or one already closed
// when the request arrived, answers with a reset; a worker that read the
// request and then died closes with a FIN instead (EOF here), which proves
// nothing. This is what makes keep-alive to workers safe: a request
// written on a pooled connection to a just-killed worker meets a reset and
// goes to another worker.
func unprocessed(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// idemKey marks a request whose repetition changes nothing (see
// idempotent); its value is a bool.
type idemKey struct{}

// readOnlyMethods are the JSON-RPC methods that only read, so sending one
// twice is harmless. tools/call is not among them: the front cannot know
// what a tool does.
var readOnlyMethods = map[string]bool{
	"ping": true, "tools/list": true, "resources/list": true, "resources/templates/list": true,
	"resources/read": true, "prompts/list": true, "prompts/get": true, "server/discover": true,
}

// idempotent reports whether a request may be sent again after a failure
// whose outcome is unknown: a GET (a stream opened or resumed with
// Last-Event-ID) or a POST of one JSON-RPC message with a read-only method
// (msg is its body, scanned).
// DELETE is not: repeating a delete that was applied answers 404, which a
// client takes for a lost session.
func idempotent(method string, msg rpcInfo) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	case http.MethodPost:
		return msg.readOnly()
	}
	return false
}

// retryTransport sends a request to a worker picked from the pool and,
// when the request provably did not reach a worker's handler (the dial
// failed, the connection was reset before any byte of the answer) or may
// be repeated (idempotent), to the next one.
type retryTransport struct {
	pool *pool
	base *http.Transport
	det  *detector
	// suspectAfter is how long a request may wait for its response headers
	// before its worker is suspected (0: never).
	suspectAfter time.Duration
	log          *logrus.Entry
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	tried := map[string]bool{}
	idem, _ := req.Context().Value(idemKey{}).(bool)
	var last error
	for {
		b := t.pool.pick(tried)
		if b == nil {
			if req.Body != nil {
				req.Body.Close()
			}
			return nil, &noWorkerError{tried: len(tried), last: last}
		}
		tried[b.addr] = true
		resp, answered, err := t.send(req, b)
		if err == nil {
			return resp, nil
		}
		if req.Context().Err() != nil {
			return nil, fmt.Errorf("worker %s (%s): %w", b.id, b.addr, err)
		}
		switch {
		case neverReached(err):
			t.pool.markDown(b.st)
			t.det.suspect(b, "connection refused")
			t.log.WithError(err).WithFields(logrus.Fields{"worker": b.id, "addr": b.addr}).Warn("worker refused the connection; trying another")
		case !answered && (unprocessed(err) || idem):
			t.det.suspect(b, "request failed")
			t.log.WithError(err).WithFields(logrus.Fields{"worker": b.id, "addr": b.addr, "idempotent": idem}).
				Warn("worker failed a request it did not process (or one safe to repeat); trying another")
		default:
			t.det.suspect(b, "request failed")
			return nil, fmt.Errorf("worker %s (%s): %w", b.id, b.addr, err)
		}
		last = err
	}
}

// send makes one attempt on b. answered is true once any byte of b's
// answer arrived. The attempt is tracked until its body is closed, so the
// detector can cancel it when b is found down.
func (t *retryTransport) send(req *http.Request, b *backend) (resp *http.Response, answered bool, err error) {
	a := &attempt{pool: t.pool, st: b.st}
	actx, cancel := context.WithCancelCause(req.Context())
	a.cancel = cancel
	a.trace.GotFirstResponseByte = a.firstByte
	actx = httptrace.WithClientTrace(actx, &a.trace)
	// A shallow copy with its own URL: the ReverseProxy already cloned the
	// client's request (headers included) for this front's use, and neither
	// the transport nor a retry changes the headers, so cloning them again
	// per attempt would only make garbage.
	out := req.WithContext(actx)
	u := *req.URL
	u.Scheme, u.Host = b.url.Scheme, b.url.Host
	out.URL = &u
	if out.Body != nil && req.GetBody != nil {
		body, err := req.GetBody()
		if err != nil {
			cancel(nil)
			return nil, false, err
		}
		out.Body = body
	}
	// Every request in flight to b is cancelled when b is found down (its
	// connection closed): an idempotent one is then sent to another
	// worker, any other is answered 502 (its outcome unknown to the
	// client, as for a killed worker). A paused worker that resumes does
	// not start a request whose connection is gone (peerconn.Gone in the
	// worker), and one it had started before the pause is still refused
	// by the counter if a later call of the session overtook it: so the
	// cancelled request is not run after the client has moved on.
	t.pool.track(a, b.addr)
	if a.st != b.st {
		// b came from a snapshot older than the worker's departure (see
		// track): suspicions and successes below go to the state the
		// request is tracked on, which is the one the detector aborts.
		live := *b
		live.st = a.st
		b = &live
	}
	var timer *time.Timer
	if t.suspectAfter > 0 {
		timer = time.AfterFunc(t.suspectAfter, func() { t.det.suspect(b, "slow response headers") })
	}
	resp, err = t.base.RoundTrip(out)
	if timer != nil {
		timer.Stop()
	}
	if err != nil {
		if cause := context.Cause(actx); errors.Is(cause, errWorkerDown) && !errors.Is(err, errWorkerDown) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
		a.done()
		return nil, a.gotByte.Load(), err
	}
	t.pool.markUp(b.st)
	if resp.Header.Get(WorkerHeader) == "" {
		resp.Header.Set(WorkerHeader, b.id)
	}
	a.body = resp.Body
	resp.Body = a
	return resp, true, nil
}

// copyBuffers lends the ReverseProxy its response copy buffers. Put
// allocates a slice header to box (24 bytes, against the 32 KiB buffer a
// request cost without the pool).
type copyBuffers struct{ pool *sync.Pool }

// copyBufferSize is what the ReverseProxy would allocate per request.
const copyBufferSize = 32 << 10

func newCopyBuffers() copyBuffers {
	return copyBuffers{pool: &sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}}
}

func (c copyBuffers) Get() []byte { return *c.pool.Get().(*[]byte) }

func (c copyBuffers) Put(b []byte) {
	if cap(b) == copyBufferSize {
		b = b[:copyBufferSize]
		c.pool.Put(&b)
	}
}

// proxy buffers the request body (so a retry can resend it) and hands the
// request to a ReverseProxy that streams the answer back unbuffered.
type proxy struct {
	rp      *httputil.ReverseProxy
	maxBody int64
	log     *logrus.Entry
}

func newProxy(p *pool, det *detector, cfg Config, log *logrus.Entry) *proxy {
	// Keep-alive to workers saves a TCP handshake (and a worker-side
	// accept and goroutine) per request. Its hazard is a request written on
	// a pooled connection whose worker was just killed. guardedConn does not
	// write on a connection the worker already closed (the transport then
	// retries on a new one); retryTransport resends a request the worker
	// provably did not process (reset before any answer byte) or an
	// idempotent one; otherwise the client gets a 502, as it would for any
	// request in flight on a killed process.
	// WorkerKeepAlive=false restores a connection per request (as HAProxy's
	// option httpclose).
	base := &http.Transport{
		DialContext:         guardedDialer(&net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}),
		DisableKeepAlives:   !cfg.WorkerKeepAlive,
		MaxIdleConnsPerHost: cfg.MaxIdlePerWorker,
		// Below the worker's 2 min idle timeout, so it is the front that
		// closes an idle connection, never a worker while the front writes.
		IdleConnTimeout:    30 * time.Second,
		DisableCompression: true,
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// The transport fills in the worker; keep the Host the client
			// sent, since workers check Host and Origin.
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", "worker.invalid"
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport: &retryTransport{pool: p, base: base, det: det, suspectAfter: cfg.SuspectAfter, log: log},
		// 0: ReverseProxy itself flushes every write of an SSE answer or
		// of one of unknown length, and sends a JSON answer (its length
		// known) in one write with its Content-Length. -1 flushed the
		// headers alone first and then each write, chunked: three
		// syscalls per answer, 15 % of the front's CPU.
		FlushInterval: 0,
		// Without a pool the proxy allocates a 32 KiB copy buffer per
		// request: 70 % of the front's garbage.
		BufferPool: newCopyBuffers(),
		ErrorLog:   stdlog.New(logWriter{log}, "", 0),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				return // the client left
			}
			var nw *noWorkerError
			if errors.As(err, &nw) {
				log.WithError(err).Warn("no worker available")
				w.Header().Set("Retry-After", "1")
				writeRPCError(w, http.StatusServiceUnavailable, -32000, "no worker is available: "+nw.Error()+"; retry shortly")
				return
			}
			log.WithError(err).Warn("worker failed the request")
			writeRPCError(w, http.StatusBadGateway, -32000, "the worker failed while handling the request: "+err.Error())
		},
	}
	return &proxy{rp: rp, maxBody: cfg.MaxBodyBytes, log: log}
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body []byte
	if r.Body != nil && r.Body != http.NoBody {
		var err error
		body, err = readBody(r, p.maxBody)
		if errors.Is(err, errBodyTooLarge) {
			writeRPCError(w, http.StatusRequestEntityTooLarge, -32600, fmt.Sprintf("request body larger than %d bytes", p.maxBody))
			return
		}
		if err != nil {
			writeRPCError(w, http.StatusBadRequest, -32700, "could not read the request body: "+err.Error())
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		r.TransferEncoding = nil
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	var msg rpcInfo
	if r.Method == http.MethodPost {
		msg = scanRPC(body)
	}
	if msg.isRequest() && peerconn.Gone(r) {
		// The client gave up before this request was forwarded (this front
		// was frozen or starved with it): forwarded now it would run after
		// whatever the client sent since, elsewhere. Nobody waits for it.
		p.log.WithField("client", r.RemoteAddr).Warn("client gone before its request was forwarded; dropped")
		return
	}
	if idempotent(r.Method, msg) {
		r = r.WithContext(context.WithValue(r.Context(), idemKey{}, true))
	}
	p.rp.ServeHTTP(w, r)
}

// errBodyTooLarge: a request body over the front's limit.
var errBodyTooLarge = errors.New("request body too large")

// exactBodyBytes bounds the buffer readBody sizes from a declared
// Content-Length before any of the body arrived: a client that declares
// megabytes and sends nothing must not make the front hold them.
const exactBodyBytes = 64 << 10

// readBody reads r's whole body, refusing one of more than max bytes. A
// small body of declared length is read into one buffer of exactly that
// size (the server's body reader stops at the declared length); a larger
// or chunked one grows as io.ReadAll grows it, with the bytes that came.
func readBody(r *http.Request, max int64) ([]byte, error) {
	if r.ContentLength > max {
		return nil, errBodyTooLarge
	}
	if n := r.ContentLength; n >= 0 && n <= exactBodyBytes {
		body := make([]byte, n)
		if _, err := io.ReadFull(r.Body, body); err != nil {
			return nil, err
		}
		return body, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > max {
		return nil, errBodyTooLarge
	}
	return body, nil
}

// writeRPCError answers with a JSON-RPC error object, as an MCP client
// expects from the endpoint.
func writeRPCError(w http.ResponseWriter, status, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"jsonrpc": "2.0",
		"id":      nil,
		"error":   map[string]any{"code": code, "message": msg},
	})
}

type logWriter struct{ e *logrus.Entry }

func (l logWriter) Write(p []byte) (int, error) {
	l.e.Warn(strings.TrimSpace(string(p)))
	return len(p), nil
}

func quietZap() *zap.Logger { return zap.NewNop() }
