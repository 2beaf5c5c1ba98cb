// Package worker is the erlmcp MCP worker: an MCP server over Streamable
// HTTP that keeps every session record in the replicated session store, so
// that any worker serves any session.
//
// The code is layered so it can grow into the whole protocol:
//
//   - jsonrpc.go decodes one JSON-RPC 2.0 message and encodes answers;
//   - dispatch.go maps an MCP method to its handler (lifecycle.go,
//     tools.go);
//   - transport.go is Streamable HTTP on /mcp (headers, status codes,
//     JSON or SSE answers) and session loading;
//   - modern.go serves MCP 2026-07-28 (sessionless, Config.Sessionless)
//     on the same endpoint; mrtr.go is its multi round-trip requests
//     (input_required, HMAC-signed requestState); listen.go its
//     subscriptions/listen streams and the Broker between workers;
//   - handler.go assembles /mcp, /healthz, /readyz and /metrics;
//   - run.go runs a worker process against etcd and the store.
package worker

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/gcfloor"
)

// Config of a worker.
type Config struct {
	Common config.Common
	// Listen is the host:port /mcp, /healthz, /readyz and /metrics serve on.
	Listen string
	// MaxBodyBytes bounds a POST body; larger bodies get 413.
	MaxBodyBytes int64
	// SessionIdleTTL is how long the store keeps a session nobody uses.
	SessionIdleTTL time.Duration
	// AllowedOrigins are Origin values accepted besides http(s) on
	// localhost, 127.0.0.1 and [::1] (any port). "*" accepts every origin.
	AllowedOrigins []string
	// RequestTimeout bounds the store calls made for one HTTP request,
	// and each store call a tool, resource or prompt handler makes
	// (Request.GetState, PutState, notifications), however long the
	// handler itself may run (CallTimeout). It is below clients' usual
	// timeouts (5 s for erlmcp loadtest, more for most SDKs), so a request
	// the store cannot serve in time (a shard electing a leader, a stalled
	// store node) ends with a definite error (HTTP 503, or JSON-RPC -32003
	// in a stream) the client can retry, not with the client giving up
	// while the worker goes on with it. It is the store client's retry
	// budget, and its attempts are at most half of it (storeClientConfig).
	RequestTimeout time.Duration
	// Version is reported as serverInfo.version and in membership.
	Version string
	// Toolset chooses the built-in tools, resources and prompts: demo,
	// everything or all (see BuiltinServer).
	Toolset string
	// CallTimeout bounds a tools/call, resources/read or prompts/get,
	// including the time its handler waits for the client (sampling,
	// elicitation).
	CallTimeout time.Duration
	// ServerRequestTimeout bounds the wait for the client's answer to a
	// server→client request (sampling, elicitation, roots).
	ServerRequestTimeout time.Duration
	// SSEKeepAlive is the interval of ": keep-alive" comments on an idle
	// SSE stream.
	SSEKeepAlive time.Duration
	// SSEStreamLifetime bounds one GET SSE connection; the server then
	// closes it and the client reconnects after SSERetry (SSE polling).
	SSEStreamLifetime time.Duration
	// SSERetry is the reconnection delay sent in the SSE retry field.
	SSERetry time.Duration
	// PollWait bounds one long poll of a stream in the store.
	PollWait time.Duration
	// InflightDelay is how long a cancellable request (tools/call,
	// resources/read, prompts/get, tasks/result) runs before it is
	// recorded in flight in the store and, when the client accepts SSE,
	// its answer turns into a resumable SSE stream; a request that sends
	// the client a message gets both at that message. Quicker requests
	// are plain JSON with no store write. 0 records and streams at once.
	// A cancellation of a request that ended before then has nothing to
	// cancel; one that lands on another worker before then takes effect
	// at the recording (on this worker: at once). The default, 1 s, keeps
	// calls that are slow only because the store is (an overloaded store
	// answers writes in hundreds of ms) from adding the record's two
	// writes to its load (docs/benchmarks.md).
	InflightDelay time.Duration
	// Sessionless also serves MCP 2026-07-28 (sessionless: server/discover,
	// per-request _meta, MRTR, subscriptions/listen) on /mcp, chosen per
	// request by MCP-Protocol-Version (on by default). Clients that prefer
	// it (go-sdk >= 1.8) then use it instead of sessions; turning it off
	// makes them fall back to sessions.
	Sessionless bool
	// AuthTokensFile, when set, turns authentication on: a file of
	// "<sha256 hex of a token> <principal>" lines (auth.go). Clients send
	// Authorization: Bearer <token>.
	AuthTokensFile string
	// AuthPrincipalHeader, when set, turns authentication on: the name of
	// a header a trusted gateway sets to the authenticated principal.
	AuthPrincipalHeader string
	// SweepDelay is how long a worker must have been out of membership
	// before a live worker resolves its in-flight records and tasks
	// (sweep.go). It must exceed ShutdownTimeout: a draining worker leaves
	// membership before its last requests end.
	SweepDelay time.Duration
	// SessionCacheTTL is how long a session record read from the store
	// may be served again without reading it (sessioncache.go); a worker
	// that changes a record (logging/setLevel, DELETE) waits a little
	// longer than this before answering, so the client's next request
	// sees the change on any worker. Every worker sharing a store must
	// use the same value. 0 turns the cache off.
	SessionCacheTTL time.Duration
	// Pprof serves net/http/pprof under /debug/pprof/ on the worker's
	// port, to profile CPU per request under load. Off by default: a
	// profile exposes internals and costs CPU while it is taken.
	Pprof bool
	// GCPercent (as GOGC) and GCMinHeapMiB (the floor of the heap goal,
	// internal/gcfloor) are the worker process's GC target, applied by
	// the `erlmcp worker` command, not by Run (it is process-wide). A
	// worker's live heap is a few MiB while every request allocates tens
	// of KiB (JSON, gRPC to the store), so without a floor it collects
	// many times a second under load, and each collection delays the
	// requests in flight. A 64 MiB floor gave one worker 18-36% more
	// requests/s; 128 MiB did less, and with three workers and a front
	// on two cores made the HA path slower (more memory cycled through
	// the caches): docs/benchmarks.md. 0 turns the floor off; GOMEMLIMIT
	// still bounds the heap. The command's --gc-percent replaces GOGC.
	// Library users calling Run apply their own GC settings; Validate
	// still checks these so a bad value fails early.
	GCPercent    int
	GCMinHeapMiB int
}

// Defaults.
const (
	DefaultListen         = "127.0.0.1:8081"
	DefaultMaxBodyBytes   = 4 << 20
	DefaultSessionIdleTTL = 30 * time.Minute
	DefaultRequestTimeout = 4 * time.Second

	DefaultToolset              = "all"
	DefaultCallTimeout          = 10 * time.Minute
	DefaultServerRequestTimeout = 5 * time.Minute
	DefaultSSEKeepAlive         = 15 * time.Second
	DefaultSSEStreamLifetime    = 2 * time.Minute
	DefaultSSERetry             = time.Second
	DefaultPollWait             = 2 * time.Second
	DefaultInflightDelay        = time.Second
	DefaultSessionCacheTTL      = 200 * time.Millisecond
	DefaultGCPercent            = 100
	DefaultGCMinHeapMiB         = 64
)

// maxSessionCacheTTL bounds SessionCacheTTL: changes to a session record
// wait about that long before they are acknowledged.
const maxSessionCacheTTL = 5 * time.Second

// DefaultConfig returns a worker config with every default set.
func DefaultConfig() Config {
	return Config{
		Common:         config.DefaultCommon(),
		Listen:         DefaultListen,
		MaxBodyBytes:   DefaultMaxBodyBytes,
		SessionIdleTTL: DefaultSessionIdleTTL,
		RequestTimeout: DefaultRequestTimeout,
		Version:        "dev",

		Toolset:              DefaultToolset,
		CallTimeout:          DefaultCallTimeout,
		ServerRequestTimeout: DefaultServerRequestTimeout,
		SSEKeepAlive:         DefaultSSEKeepAlive,
		SSEStreamLifetime:    DefaultSSEStreamLifetime,
		SSERetry:             DefaultSSERetry,
		PollWait:             DefaultPollWait,
		InflightDelay:        DefaultInflightDelay,
		SessionCacheTTL:      DefaultSessionCacheTTL,
		GCPercent:            DefaultGCPercent,
		GCMinHeapMiB:         DefaultGCMinHeapMiB,
		Sessionless:          true,
		SweepDelay:           DefaultSweepDelay,
	}
}

// Validate reports the first setting that cannot work, saying what to change.
func (c Config) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if _, err := gcfloor.FromMiB(c.GCPercent, c.GCMinHeapMiB); err != nil {
		return err
	}
	if _, port, err := net.SplitHostPort(c.Listen); err != nil || port == "" {
		return fmt.Errorf("--listen %q: want host:port (e.g. %s, or :0 for any free port)", c.Listen, DefaultListen)
	}
	if c.MaxBodyBytes < 1024 {
		return fmt.Errorf("--max-body-bytes %d: must be at least 1024", c.MaxBodyBytes)
	}
	if c.SessionIdleTTL < time.Second {
		return fmt.Errorf("--session-idle-ttl %s: must be at least 1s", c.SessionIdleTTL)
	}
	if c.InflightDelay < 0 {
		return fmt.Errorf("--inflight-delay %s: must not be negative (0 records requests in flight at once)", c.InflightDelay)
	}
	if c.SessionCacheTTL < 0 || c.SessionCacheTTL > maxSessionCacheTTL {
		return fmt.Errorf("--session-cache-ttl %s: must be between 0 (off) and %s (logging/setLevel and DELETE wait about this long)", c.SessionCacheTTL, maxSessionCacheTTL)
	}
	if c.SweepDelay <= ShutdownTimeout {
		return fmt.Errorf("--sweep-delay %s: must exceed the drain's %s, or requests of a draining worker would be failed", c.SweepDelay, ShutdownTimeout)
	}
	if c.RequestTimeout <= 0 {
		return fmt.Errorf("request timeout %s: must be positive", c.RequestTimeout)
	}
	if _, err := newAuthenticator(c); err != nil {
		return err
	}
	if hd := c.AuthPrincipalHeader; hd != "" && !validHeaderName(hd) {
		return fmt.Errorf("--auth-principal-header %q: not an HTTP header name", hd)
	}
	if _, err := BuiltinServer(c.toolset()); err != nil {
		return fmt.Errorf("--toolset: %v", err)
	}
	for _, o := range c.AllowedOrigins {
		if o == "*" {
			continue
		}
		if _, err := normalizeOrigin(o); err != nil {
			return fmt.Errorf("--allowed-origins: %v", err)
		}
	}
	return nil
}

// validHeaderName reports whether s is an HTTP header name (RFC 9110
// token characters).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0 {
			return false
		}
	}
	return true
}

// normalizeOrigin returns scheme://host[:port] in lower case, or an error
// when o is not such an origin.
func normalizeOrigin(o string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(o))
	if err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("origin %q: want scheme://host[:port], e.g. https://app.example.com", o)
	}
	return strings.ToLower(u.Scheme + "://" + u.Host), nil
}

// ParseOrigins splits a comma-separated origin list, dropping blanks.
func ParseOrigins(s string) []string {
	var out []string
	for _, o := range strings.Split(s, ",") {
		if o = strings.TrimSpace(o); o != "" {
			out = append(out, o)
		}
	}
	return out
}

// errNoStore is returned when a handler is built without a store.
var errNoStore = errors.New("worker: a session store is required")

func (c Config) toolset() string {
	if c.Toolset == "" {
		return DefaultToolset
	}
	return c.Toolset
}
