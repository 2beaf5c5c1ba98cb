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
	"net/http/httputil"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/sirupsen/logrus"
	"go.uber.org/zap"
)

// WorkerHeader names the worker that served a response. Workers may set it
// themselves; the front sets it (to the member id) when they do not.
const WorkerHeader = "X-Erlmcp-Worker"

// backend is one worker requests may go to.
type backend struct {
	id   string
	addr string   // membership Addr, the health key
	url  *url.URL // scheme and host to dial
	// health is the URL of its /healthz (on HTTPAddr when it has one).
	health string
	// version is its membership version, which a traffic split selects on.
	version string
}

// pool holds the routable workers and their recent connect failures.
type pool struct {
	cooldown time.Duration
	now      func() time.Time

	mu        sync.Mutex
	backends  []*backend // sorted by id
	downUntil map[string]time.Time
	next      uint64
	// traffic is the deploy split (traffic.go); splitAcc its accumulator.
	traffic  Traffic
	splitAcc int
}

func newPool(cooldown time.Duration) *pool {
	return &pool{cooldown: cooldown, now: time.Now, downUntil: map[string]time.Time{}}
}

// set replaces the pool with the non-draining workers among ms.
func (p *pool) set(ms []membership.Member) {
	var bs []*backend
	for _, m := range ms {
		if m.Role != membership.RoleWorker || m.Draining || m.Addr == "" {
			continue
		}
		u, err := url.Parse(workerURL(m.Addr))
		if err != nil || u.Host == "" {
			continue
		}
		health := u.String() + "/healthz"
		if m.HTTPAddr != "" {
			health = workerURL(m.HTTPAddr) + "/healthz"
		}
		bs = append(bs, &backend{id: m.ID, addr: m.Addr, url: u, health: health, version: m.Version})
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].id < bs[j].id })
	p.mu.Lock()
	defer p.mu.Unlock()
	p.backends = bs
	keep := map[string]time.Time{}
	for _, b := range bs {
		if t, ok := p.downUntil[b.addr]; ok {
			keep[b.addr] = t
		}
	}
	p.downUntil = keep
}

func (p *pool) list() []*backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*backend(nil), p.backends...)
}

// pick returns the next worker in round-robin order that is not in tried,
// preferring workers not cooling down after a failure; nil when every
// worker was tried. The rotation runs over the preferred workers only, so
// a cooling-down worker's share spreads evenly over the others.
func (p *pool) pick(tried map[string]bool) *backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	var healthy, cooling []*backend
	for _, b := range p.backends {
		switch {
		case tried[b.addr]:
		case now.Before(p.downUntil[b.addr]):
			cooling = append(cooling, b)
		default:
			healthy = append(healthy, b)
		}
	}
	cands := healthy
	if len(cands) == 0 {
		// Every untried worker is cooling down: try one anyway rather than
		// refuse the client.
		cands = cooling
	}
	cands = p.splitByTraffic(cands)
	if len(cands) == 0 {
		return nil
	}
	b := cands[p.next%uint64(len(cands))]
	p.next++
	return b
}

func (p *pool) markDown(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.downUntil[addr] = p.now().Add(p.cooldown)
}

func (p *pool) markUp(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.downUntil, addr)
}

func (p *pool) isDown(addr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.now().Before(p.downUntil[addr])
}

// errNoWorker: no registered worker could be reached.
type noWorkerError struct {
	tried int
	last  error
}

func (e *noWorkerError) Error() string {
	if e.tried == 0 {
		return "no worker is registered"
	}
	return fmt.Sprintf("none of %d workers accepted a connection (last: %v)", e.tried, e.last)
}

func (e *noWorkerError) Unwrap() error { return e.last }

// neverReached reports whether err means the request was not delivered
// at all: the connection to the worker could not be made, so nothing was
// written and the request may go to another worker.
func neverReached(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// retryTransport sends a request to a worker picked from the pool and, when
// the connection cannot be made, to the next one.
type retryTransport struct {
	pool *pool
	base *http.Transport
	log  *logrus.Entry
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	tried := map[string]bool{}
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
		out := req.Clone(req.Context())
		out.URL.Scheme, out.URL.Host = b.url.Scheme, b.url.Host
		if out.Body != nil && req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			out.Body = body
		}
		resp, err := t.base.RoundTrip(out)
		if err == nil {
			t.pool.markUp(b.addr)
			if resp.Header.Get(WorkerHeader) == "" {
				resp.Header.Set(WorkerHeader, b.id)
			}
			return resp, nil
		}
		if req.Context().Err() != nil || !neverReached(err) {
			return nil, fmt.Errorf("worker %s (%s): %w", b.id, b.addr, err)
		}
		t.pool.markDown(b.addr)
		t.log.WithError(err).WithFields(logrus.Fields{"worker": b.id, "addr": b.addr}).Warn("worker refused the connection; trying another")
		last = err
	}
}

// proxy buffers the request body (so a retry can resend it) and hands the
// request to a ReverseProxy that streams the answer back unbuffered.
type proxy struct {
	rp      *httputil.ReverseProxy
	maxBody int64
	log     *logrus.Entry
}

func newProxy(p *pool, cfg Config, log *logrus.Entry) *proxy {
	// No keep-alive to workers (HAProxy's config does the same with
	// option httpclose): a request written on a pooled connection whose
	// worker was just killed fails with a reset, and a POST may not be
	// retried once written (a worker may have started it). With a fresh
	// connection per request, a dead worker refuses the dial and the
	// request goes to another one; only requests really in flight on the
	// killed worker fail. A loopback connect costs tens of microseconds.
	base := &http.Transport{
		DialContext:        (&net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		DisableKeepAlives:  true,
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
		Transport:     &retryTransport{pool: p, base: base, log: log},
		FlushInterval: -1,
		ErrorLog:      stdlog.New(logWriter{log}, "", 0),
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
	if r.Body != nil && r.Body != http.NoBody {
		body, err := io.ReadAll(io.LimitReader(r.Body, p.maxBody+1))
		if err != nil {
			writeRPCError(w, http.StatusBadRequest, -32700, "could not read the request body: "+err.Error())
			return
		}
		if int64(len(body)) > p.maxBody {
			writeRPCError(w, http.StatusRequestEntityTooLarge, -32600, fmt.Sprintf("request body larger than %d bytes", p.maxBody))
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		r.TransferEncoding = nil
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	p.rp.ServeHTTP(w, r)
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

// probeLoop GETs /healthz of every worker each ProbeInterval and cools
// down the ones that do not answer (or answer 5xx).
func (f *Front) probeLoop(ctx context.Context) {
	cl := &http.Client{
		Timeout:   min(f.cfg.ProbeInterval, 2*time.Second),
		Transport: &http.Transport{DialContext: (&net.Dialer{Timeout: f.cfg.DialTimeout}).DialContext, DisableKeepAlives: true},
	}
	t := time.NewTicker(f.cfg.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var wg sync.WaitGroup
		for _, b := range f.pool.list() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, b.health, nil)
				resp, err := cl.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
					resp.Body.Close()
					if resp.StatusCode >= 500 {
						err = fmt.Errorf("status %s", resp.Status)
					}
				}
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					if !f.pool.isDown(b.addr) {
						f.log.WithError(err).WithField("worker", b.id).Warn("worker health probe failed")
					}
					f.pool.markDown(b.addr)
					return
				}
				f.pool.markUp(b.addr)
			}()
		}
		wg.Wait()
	}
}

type logWriter struct{ e *logrus.Entry }

func (l logWriter) Write(p []byte) (int, error) {
	l.e.Warn(strings.TrimSpace(string(p)))
	return len(p), nil
}

func quietZap() *zap.Logger { return zap.NewNop() }
