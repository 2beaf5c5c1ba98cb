// Package loadgen drives MCP-native load against a Streamable HTTP MCP
// endpoint and checks what an HA deployment promises: latency, errors by
// kind, and per-session continuity (a session counter that never goes back
// or skips, sessions that are never lost, how long a session went unserved).
//
// It speaks MCP with raw net/http, not an SDK, so each request is timed and
// classified on its own: HTTP/1.1 keep-alive over a bounded connection pool,
// JSON and text/event-stream responses, resumption with Last-Event-ID.
package loadgen

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Protocol versions the load generator speaks.
const (
	Protocol20250326 = "2025-03-26"
	Protocol20250618 = "2025-06-18"
	Protocol20251125 = "2025-11-25"
	// Protocol20260728 is sessionless: no initialize, per-request _meta and
	// routing headers.
	Protocol20260728 = "2026-07-28"
)

// Protocols lists the accepted --protocol values.
var Protocols = []string{Protocol20250326, Protocol20250618, Protocol20251125, Protocol20260728}

// Sessionless reports whether protocol v has no sessions.
func Sessionless(v string) bool { return v >= Protocol20260728 }

// Op is one kind of operation in the mix.
type Op string

// Operations of the mix.
const (
	OpList    Op = "list"    // tools/list
	OpEcho    Op = "echo"    // tools/call echo {text}
	OpCounter Op = "counter" // tools/call counter {by}
	OpSSE     Op = "sse"     // tools/call of --sse-tool with a progress token, answered as a stream
	OpResume  Op = "resume"  // like sse, but drop the stream after its first event id and resume with GET + Last-Event-ID
	OpDelete  Op = "delete"  // DELETE the session; the slot's next operation initializes a new one
	// OpInit is not in the mix: a slot without a session spends its turn on
	// initialize + notifications/initialized.
	OpInit Op = "initialize"
)

// MixOps lists the operations a --mix may weigh, in report order.
var MixOps = []Op{OpList, OpEcho, OpCounter, OpSSE, OpResume, OpDelete}

// Mix weighs the operations.
type Mix map[Op]int

// ParseMix reads "list=1,echo=6,counter=3"; operations not named weigh 0.
func ParseMix(s string) (Mix, error) {
	m := Mix{}
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("--mix is empty: give weights like list=1,echo=6,counter=3")
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("--mix %q: %q is not name=weight", s, part)
		}
		op := Op(strings.TrimSpace(k))
		known := false
		for _, o := range MixOps {
			known = known || o == op
		}
		if !known {
			return nil, fmt.Errorf("--mix %q: unknown operation %q (want list, echo, counter, sse, resume, delete)", s, op)
		}
		if _, dup := m[op]; dup {
			return nil, fmt.Errorf("--mix %q: %s given twice", s, op)
		}
		w, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || w < 0 || w > 1_000_000 {
			return nil, fmt.Errorf("--mix %q: weight of %s must be a whole number from 0 to 1000000", s, op)
		}
		m[op] = w
	}
	if m.Total() == 0 {
		return nil, fmt.Errorf("--mix %q: every weight is 0", s)
	}
	return m, nil
}

// Total is the sum of the weights.
func (m Mix) Total() int {
	t := 0
	for _, w := range m {
		t += w
	}
	return t
}

// String writes the mix back in the --mix syntax, every operation named.
func (m Mix) String() string {
	parts := make([]string, 0, len(MixOps))
	for _, op := range MixOps {
		parts = append(parts, fmt.Sprintf("%s=%d", op, m[op]))
	}
	return strings.Join(parts, ",")
}

// pick maps r in [0, Total) to an operation.
func (m Mix) pick(r int) Op {
	for _, op := range MixOps {
		if r < m[op] {
			return op
		}
		r -= m[op]
	}
	return OpEcho
}

// DefaultMix is the mix used when --mix is not given: with sessions
// list=1,echo=6,counter=3; sessionless list=1,echo=9 (the counter is
// session-scoped).
func DefaultMix(protocol string) Mix {
	if Sessionless(protocol) {
		return Mix{OpList: 1, OpEcho: 9}
	}
	return Mix{OpList: 1, OpEcho: 6, OpCounter: 3}
}

// ParseHeader reads one --header value "Name: value".
func ParseHeader(s string) (name, value string, err error) {
	k, v, ok := strings.Cut(s, ":")
	k = strings.TrimSpace(k)
	if !ok || k == "" {
		return "", "", fmt.Errorf("--header %q: want \"Name: value\"", s)
	}
	for _, r := range k {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune("\"(),/:;<=>?@[\\]{}", r) {
			return "", "", fmt.Errorf("--header %q: %q is not a valid header name", s, k)
		}
	}
	switch http.CanonicalHeaderKey(k) {
	case "Host", "Content-Type", "Content-Length", "Accept", "Mcp-Session-Id", "Mcp-Protocol-Version", "Last-Event-Id", "Mcp-Method", "Mcp-Name", "Connection", "Transfer-Encoding":
		return "", "", fmt.Errorf("--header %q: %s is set by the load generator itself", s, http.CanonicalHeaderKey(k))
	}
	return k, strings.TrimSpace(v), nil
}

// Budgets are the limits a run must stay within for exit code 0.
type Budgets struct {
	// MaxErrorsPct is the largest share of failed operations, in percent.
	// With faults it bounds only the errors no fault explains (those
	// outside every fault's window); each fault bounds its own.
	MaxErrorsPct float64 `json:"max_errors_pct"`
	// MaxSessionsLost is the most sessions that may be lost (404, counter reset).
	MaxSessionsLost int64 `json:"max_sessions_lost"`
	// MaxWritesLost is the most acknowledged counter increments that may vanish.
	MaxWritesLost int64 `json:"max_writes_lost"`
	// MaxSkipped is the most counter increments that may appear unsent.
	MaxSkipped int64 `json:"max_skipped"`
	// MaxFailover bounds the longest window a session went unserved; 0: none.
	MaxFailover time.Duration `json:"-"`
	// MaxP95 bounds the 95th percentile latency; 0: none.
	MaxP95 time.Duration `json:"-"`
	// StallResolution is the least a fault's slowest answer must exceed
	// the slowest answer outside faults by to count as a window without
	// service: a smaller excess is the spread of latency under load (a
	// request that was merely slow), not a stall; so is a slowest answer
	// no slower than every answer while no fault was active. It matters
	// for the faults whose budget is 0 (a store follower, the control-plane
	// leader), which any positive excess would otherwise miss.
	StallResolution time.Duration `json:"-"`
	// StallReference is the slowest answer of a fault-free run against the
	// same cluster just before (the baseline scenario): a fault's slowest
	// answer counts as a stall only above it too. The fault-free seconds
	// inside a short faulted run are too few to show how slow an answer
	// gets without any fault (one 3 s lead-in held 269 ms where the 9 s
	// fault-free run before it held 1.39 s on the same loaded machine),
	// so without it a restarting store follower's CPU on a shared 2-core
	// machine reads as a stall. It only decides whether there was a stall;
	// the stall's length is still measured from the run's own answers
	// outside faults. 0: none.
	StallReference time.Duration `json:"-"`
}

// Config is one load run.
type Config struct {
	// URL is the MCP endpoint (http or https); only this URL is requested.
	URL string
	// Sessions is the number of logical clients (session slots). Each
	// carries at most one request at a time, so its counter's order is known.
	Sessions int
	// Concurrency is the number of requests in flight at most, and the size
	// of the connection pool.
	Concurrency int
	// Rate is the target of operations per second over all slots; 0 runs a
	// closed loop as fast as the server answers.
	Rate float64
	// Duration is how long operations are started; requests in flight at
	// the end finish (each within Timeout).
	Duration time.Duration
	// Ramp raises the rate (or, in a closed loop, the number of active
	// workers) linearly from 0 over this long.
	Ramp time.Duration
	// MaxRequests stops the run after this many operations; 0: no limit.
	MaxRequests int64
	// Mix weighs the operations.
	Mix Mix
	// Timeout bounds each operation (for resume: both of its requests).
	Timeout time.Duration
	// Protocol is the MCP protocol version.
	Protocol string
	// Headers are sent with every request.
	Headers http.Header
	// StampSentAt: each request carries when it was sent (Client.StampSentAt).
	StampSentAt bool
	// Seed makes the choice of operations repeatable.
	Seed uint64
	// SSETool names a tool that answers slowly with progress notifications,
	// used by the sse and resume operations; SSEArgs are its arguments.
	SSETool string
	SSEArgs json.RawMessage
	// CounterBy is the increment sent to the counter tool.
	CounterBy int64
	Budgets   Budgets
	// Fallbacks are further endpoints serving the same cluster (a second
	// front): a session whose request there is refused, reset or timed out
	// moves to the next one, as a client behind DNS or a VIP would, and
	// every session leaves an endpoint marked down (Client.Fallbacks).
	Fallbacks []string
	// Faults are injected by Injector while the load runs.
	Faults   []Fault
	Injector Injector
	// FaultTail, when positive, keeps the load running until the last
	// fault is over and this long after, beyond Duration if need be.
	FaultTail time.Duration
}

// DefaultStallResolution is Budgets.StallResolution by default: the
// issue's p95 budget under steady load, the latency a served request may
// have.
const DefaultStallResolution = 100 * time.Millisecond

// DefaultConfig returns the defaults of `erlmcp loadtest`.
func DefaultConfig() Config {
	return Config{
		URL:         "http://127.0.0.1:8080/mcp",
		Sessions:    16,
		Concurrency: 16,
		Duration:    10 * time.Second,
		Timeout:     5 * time.Second,
		Protocol:    Protocol20251125,
		Seed:        1,
		SSEArgs:     json.RawMessage(`{}`),
		CounterBy:   1,
		Budgets:     Budgets{MaxErrorsPct: 1, StallResolution: DefaultStallResolution},
	}
}

// Limits on a run, so a typo cannot start an unbounded one.
const (
	maxSessions    = 1_000_000
	maxConcurrency = 10_000
	maxDuration    = 24 * time.Hour
	maxTimeout     = 10 * time.Minute
)

// Validate reports the first setting that cannot work, saying what to change.
func (c Config) Validate() error {
	u, err := url.Parse(c.URL)
	switch {
	case c.URL == "":
		return errors.New("--url is empty: give the MCP endpoint, e.g. http://127.0.0.1:8080/mcp")
	case err != nil:
		return fmt.Errorf("--url %q: %v", c.URL, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("--url %q: scheme must be http or https", c.URL)
	case u.Host == "":
		return fmt.Errorf("--url %q: no host", c.URL)
	case c.Sessions < 1 || c.Sessions > maxSessions:
		return fmt.Errorf("--sessions %d: want 1 to %d", c.Sessions, maxSessions)
	case c.Concurrency < 1 || c.Concurrency > maxConcurrency:
		return fmt.Errorf("--concurrency %d: want 1 to %d", c.Concurrency, maxConcurrency)
	case c.Concurrency > c.Sessions:
		return fmt.Errorf("--concurrency %d is above --sessions %d: a session carries one request at a time (so its counter order is known); raise --sessions or lower --concurrency", c.Concurrency, c.Sessions)
	case c.Rate < 0 || c.Rate != c.Rate || c.Rate > 10_000_000:
		return fmt.Errorf("--rate %v: want 0 (closed loop) or a positive number of operations per second", c.Rate)
	case c.Duration <= 0 || c.Duration > maxDuration:
		return fmt.Errorf("--duration %s: want more than 0 and at most %s", c.Duration, maxDuration)
	case c.Ramp < 0 || c.Ramp > c.Duration:
		return fmt.Errorf("--ramp %s: want 0 to --duration (%s)", c.Ramp, c.Duration)
	case c.MaxRequests < 0:
		return fmt.Errorf("--max-requests %d: want 0 (no limit) or more", c.MaxRequests)
	case c.Timeout <= 0 || c.Timeout > maxTimeout:
		return fmt.Errorf("--timeout %s: want more than 0 and at most %s", c.Timeout, maxTimeout)
	case c.CounterBy < 1:
		return fmt.Errorf("counter increment %d: want 1 or more", c.CounterBy)
	}
	if c.Mix.Total() <= 0 {
		return errors.New("--mix: every weight is 0")
	}
	for op, w := range c.Mix {
		if w < 0 {
			return fmt.Errorf("--mix: weight of %s is negative", op)
		}
	}
	for _, f := range c.Fallbacks {
		if u, err := url.Parse(f); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--url %q: want another http(s)://host:port/path endpoint", f)
		}
	}
	if len(c.Faults) > 0 && c.Injector == nil {
		return errors.New("--fault needs a cluster to inject into: give --data-dir of an erlmcp up cluster")
	}
	for _, f := range c.Faults {
		if f.At >= c.Duration {
			return fmt.Errorf("--fault %s: at %s is not before the end of --duration %s", f.Spec, f.At, c.Duration)
		}
	}
	known := false
	for _, p := range Protocols {
		known = known || p == c.Protocol
	}
	if !known {
		return fmt.Errorf("--protocol %q: want one of %s", c.Protocol, strings.Join(Protocols, ", "))
	}
	if Sessionless(c.Protocol) {
		for _, op := range []Op{OpCounter, OpResume, OpDelete} {
			if c.Mix[op] > 0 {
				return fmt.Errorf("--mix %s: %s needs sessions, which --protocol %s does not have; set %s=0", c.Mix, op, c.Protocol, op)
			}
		}
	}
	if (c.Mix[OpSSE] > 0 || c.Mix[OpResume] > 0) && c.SSETool == "" {
		return fmt.Errorf("--mix %s: sse and resume call a slow tool with progress; name it with --sse-tool", c.Mix)
	}
	var args map[string]any
	if len(c.SSEArgs) > 0 && (json.Unmarshal(c.SSEArgs, &args) != nil || args == nil) {
		return fmt.Errorf("--sse-args %s: want a JSON object", c.SSEArgs)
	}
	b := c.Budgets
	switch {
	case b.MaxErrorsPct < 0 || b.MaxErrorsPct > 100:
		return fmt.Errorf("--max-errors-pct %v: want 0 to 100", b.MaxErrorsPct)
	case b.MaxSessionsLost < 0:
		return fmt.Errorf("--max-sessions-lost %d: want 0 or more", b.MaxSessionsLost)
	case b.MaxWritesLost < 0:
		return fmt.Errorf("--max-writes-lost %d: want 0 or more", b.MaxWritesLost)
	case b.MaxSkipped < 0:
		return fmt.Errorf("--max-skipped %d: want 0 or more", b.MaxSkipped)
	case b.MaxFailover < 0:
		return fmt.Errorf("--max-failover %s: want 0 (no budget) or more", b.MaxFailover)
	case b.MaxP95 < 0:
		return fmt.Errorf("--max-p95 %s: want 0 (no budget) or more", b.MaxP95)
	case b.StallResolution < 0:
		return fmt.Errorf("--stall-resolution %s: want 0 or more", b.StallResolution)
	case b.StallReference < 0:
		return fmt.Errorf("--stall-reference %s: want 0 or more (the slowest answer of a fault-free run)", b.StallReference)
	}
	return nil
}
