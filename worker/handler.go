package worker

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/erlmcp/erlmcp/internal/debugpprof"
	"github.com/erlmcp/erlmcp/internal/logging"
)

// ServerName is reported as serverInfo.name.
const ServerName = "erlmcp"

// Handler serves /mcp, /healthz, /readyz and /metrics for one worker. It
// keeps no session state: every request reads the session from the store.
type Handler struct {
	store    SessionStore
	cfg      Config
	origins  map[string]bool
	anyOrig  bool
	log      *logrus.Entry
	ready    func(context.Context) error
	draining atomic.Bool
	metrics  *metrics
	disp     *dispatcher
	mux      *http.ServeMux
	server   *Server
	// alive reports whether a worker is still a member; nil: all are.
	alive func(workerID string) bool
	// mrtrKey signs MRTR requestState (2026-07-28); broker carries
	// listen events between workers.
	mrtrKey []byte
	broker  Broker
	// base ends the GET streams when the handler closes.
	base      context.Context
	closeBase context.CancelFunc
	// running maps runningKey(session, request id) to the *tracker of a
	// request this worker runs, so a notifications/cancelled that lands
	// here cancels it at once, recorded in flight or not yet.
	running sync.Map
	// auth finds a request's principal; nil when auth is off.
	auth *authenticator
	// nextGetStream spreads standalone messages over a session's GET
	// streams (standalone.go).
	nextGetStream atomic.Uint64
	// incarnation names this worker process; its in-flight records are
	// indexed under it for the death sweep (sweep.go).
	incarnation string
	// cache holds session records read from the store (sessioncache.go).
	cache sessionCache
	// tracing: the log is at debug level, so each request's timing is
	// traced and logged (reqtrace.go); decided once, when built.
	tracing bool
	// lastArrival is when the last /mcp request arrived while draining
	// (Unix nanoseconds; AwaitQuiet), set only then; active counts the
	// /mcp requests being served.
	lastArrival atomic.Int64
	active      atomic.Int64
}

// Option changes how NewHandler builds a Handler.
type Option func(*Handler)

// WithConfig sets the worker id (Common.ID, sent as X-Erlmcp-Worker),
// region and zone (metric labels), body limit, session idle TTL, request
// timeout, allowed origins and version. Unset (zero) limits keep their
// defaults. cfg should have passed Validate; an origin that does not parse
// is ignored.
func WithConfig(cfg Config) Option {
	return func(h *Handler) {
		def := DefaultConfig()
		if cfg.MaxBodyBytes <= 0 {
			cfg.MaxBodyBytes = def.MaxBodyBytes
		}
		if cfg.SessionIdleTTL <= 0 {
			cfg.SessionIdleTTL = def.SessionIdleTTL
		}
		if cfg.RequestTimeout <= 0 {
			cfg.RequestTimeout = def.RequestTimeout
		}
		if cfg.Version == "" {
			cfg.Version = def.Version
		}
		for _, d := range []struct {
			v   *time.Duration
			def time.Duration
		}{
			{&cfg.CallTimeout, def.CallTimeout}, {&cfg.ServerRequestTimeout, def.ServerRequestTimeout},
			{&cfg.SSEKeepAlive, def.SSEKeepAlive}, {&cfg.SSEStreamLifetime, def.SSEStreamLifetime},
			{&cfg.SSERetry, def.SSERetry}, {&cfg.PollWait, def.PollWait}, {&cfg.SweepDelay, def.SweepDelay},
		} {
			if *d.v <= 0 {
				*d.v = d.def
			}
		}
		h.cfg = cfg
	}
}

// WithLogger sets the logger (default: discard).
func WithLogger(log *logrus.Entry) Option { return func(h *Handler) { h.log = log } }

// WithReadiness sets the check behind /readyz: nil error means ready. Run
// checks etcd and the store; without it /readyz answers 200 unless draining.
func WithReadiness(check func(context.Context) error) Option {
	return func(h *Handler) { h.ready = check }
}

// WithServer sets the tools, resources and prompts served (default: the
// built-in set that Config.Toolset names).
func WithServer(s *Server) Option { return func(h *Handler) { h.server = s } }

// WithAlive sets how the handler tells whether a worker is still running
// (Run: membership in etcd). A worker that resumes the stream of a request
// whose worker is not alive answers the request with an error.
func WithAlive(alive func(workerID string) bool) Option {
	return func(h *Handler) { h.alive = alive }
}

// WithIncarnation names the worker process (Run: from its membership
// value) for the index its in-flight records are swept by when it dies.
// Default: the worker id and a random suffix.
func WithIncarnation(inc string) Option { return func(h *Handler) { h.incarnation = inc } }

// NewHandler returns a worker's HTTP handler over store.
func NewHandler(store SessionStore, opts ...Option) *Handler {
	if store == nil {
		panic(errNoStore)
	}
	h := &Handler{store: store, log: logging.Discard()}
	h.base, h.closeBase = context.WithCancel(context.Background())
	WithConfig(DefaultConfig())(h)
	for _, o := range opts {
		o(h)
	}
	h.origins = map[string]bool{}
	for _, o := range h.cfg.AllowedOrigins {
		if o == "*" {
			h.anyOrig = true
			continue
		}
		if n, err := normalizeOrigin(o); err == nil {
			h.origins[n] = true
		}
	}
	if h.incarnation == "" {
		h.incarnation = h.cfg.Common.ID + ".0." + randomHex(8)
	}
	auth, err := newAuthenticator(h.cfg)
	if err != nil {
		panic(err) // Validate reports it first
	}
	h.auth = auth
	if h.broker == nil {
		h.broker = NewLocalBroker()
	}
	if len(h.mrtrKey) == 0 {
		h.mrtrKey = newMRTRKey()
	}
	if h.server == nil {
		srv, err := BuiltinServer(h.cfg.toolset())
		if err != nil {
			panic(err) // Validate reports it first
		}
		h.server = srv
	}
	h.cache.ttl = h.cfg.SessionCacheTTL
	if h.log.Logger.IsLevelEnabled(logrus.DebugLevel) {
		h.tracing = true
		h.store = tracedStore{h.store}
	}
	h.metrics = newMetrics(h.cfg.Common.ID, h.cfg.Common.Region, h.cfg.Common.Zone)
	h.disp = newDispatcher(h)
	h.mux = http.NewServeMux()
	h.mux.HandleFunc("/mcp", h.serveMCP)
	h.mux.HandleFunc("/healthz", h.serveHealthz)
	h.mux.HandleFunc("/readyz", h.serveReadyz)
	h.mux.Handle("/metrics", h.metrics.handler())
	if h.cfg.Pprof {
		debugpprof.Register(h.mux)
	}
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// WorkerID is the id sent in X-Erlmcp-Worker.
func (h *Handler) WorkerID() string { return h.cfg.Common.ID }

// Close ends the SSE streams the handler is serving from the store (GET
// /mcp); their clients reconnect, to another worker, with Last-Event-ID.
// Requests in progress finish. Call it before shutting the HTTP server
// down.
func (h *Handler) Close() { h.closeBase() }

// SetDraining makes /readyz answer 503 so load balancers stop sending new
// work; /mcp keeps serving what still arrives.
func (h *Handler) SetDraining(d bool) {
	if d {
		h.lastArrival.Store(time.Now().UnixNano())
	}
	h.draining.Store(d)
}

// AwaitQuiet waits, once draining, until no /mcp request has arrived for
// quiet and none is running, and reports whether that happened before ctx
// ended. Run calls it after leaving membership and before shutting the
// HTTP server down, which closes the listener at once:
//   - fronts learn that the worker left through a watch, and until they
//     do they keep sending requests, on connections the shutdown would
//     close under them (a request written to a connection the server is
//     closing fails, and a POST is not retried); each is served instead;
//   - a front that probes a worker whose listener is closed takes it for
//     dead and fails the requests it has in flight there (502), although
//     the shutdown would have let them finish; with none running, there
//     are none to fail.
func (h *Handler) AwaitQuiet(ctx context.Context, quiet time.Duration) bool {
	tick := time.NewTicker(max(quiet/4, time.Millisecond))
	defer tick.Stop()
	for {
		if h.active.Load() == 0 && time.Since(time.Unix(0, h.lastArrival.Load())) >= quiet {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

func (h *Handler) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// readyTimeout bounds the /readyz check.
const readyTimeout = 2 * time.Second

func (h *Handler) serveReadyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if h.draining.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("draining\n"))
		return
	}
	if h.ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		if err := h.ready(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + strings.ReplaceAll(err.Error(), "\n", " ") + "\n"))
			return
		}
	}
	_, _ = w.Write([]byte("ok\n"))
}
