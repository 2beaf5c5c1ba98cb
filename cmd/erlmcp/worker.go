package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/gcfloor"
	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/worker"
)

const workerSummary = `Run an MCP worker: an MCP server over Streamable HTTP on /mcp (protocol
versions 2025-03-26, 2025-06-18, 2025-11-25, and unless --sessionless=false
also the sessionless 2026-07-28) that keeps every session in the replicated session
store, so any worker serves any session. It also serves
/healthz, /readyz and /metrics, and registers itself under
<etcd-prefix>members/worker/<id>.`

// originsFlag is a comma-separated list of origins.
type originsFlag struct{ list *[]string }

func (f originsFlag) String() string {
	if f.list == nil {
		return ""
	}
	return strings.Join(*f.list, ",")
}

func (f originsFlag) Set(s string) error {
	*f.list = worker.ParseOrigins(s)
	return nil
}

var _ flag.Value = originsFlag{}

// cmdWorker runs an MCP worker until ctx ends.
func cmdWorker(ctx context.Context, args []string, _, stderr io.Writer) int {
	cfg := worker.DefaultConfig()
	cfg.Version = version
	fs := config.NewFlagSet("worker", workerSummary, stderr)
	cfg.Common.Register(fs)
	fs.StringVar(&cfg.Version, "version-label", cfg.Version, "version recorded in membership and serverInfo (default: the build's version); a deploy's traffic split selects workers by it")
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "HTTP listen address host:port for /mcp, /healthz, /readyz, /metrics (port 0 picks a free port; the bound address is registered)")
	fs.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", cfg.MaxBodyBytes, "largest POST body accepted on /mcp, in bytes (larger: 413)")
	fs.DurationVar(&cfg.SessionIdleTTL, "session-idle-ttl", cfg.SessionIdleTTL, "a session unused this long expires in the store")
	fs.Var(originsFlag{&cfg.AllowedOrigins}, "allowed-origins", "comma-separated Origin values accepted besides http(s)://localhost, 127.0.0.1 and [::1] (\"*\" accepts any)")
	fs.DurationVar(&cfg.RequestTimeout, "request-timeout", cfg.RequestTimeout, "bound on the session store calls made for one MCP request, and on each store call of a tool, resource or prompt; keep it below clients' timeouts so a request the store cannot serve ends in a definite error (503, JSON-RPC -32003) first")
	fs.StringVar(&cfg.Toolset, "toolset", cfg.Toolset, "built-in tools, resources and prompts: demo (echo, counter), everything (the MCP conformance fixture) or all")
	fs.DurationVar(&cfg.CallTimeout, "call-timeout", cfg.CallTimeout, "bound on one tools/call, resources/read or prompts/get, including waits for the client")
	fs.DurationVar(&cfg.ServerRequestTimeout, "server-request-timeout", cfg.ServerRequestTimeout, "how long a tool waits for the client's answer to sampling, elicitation or roots")
	fs.DurationVar(&cfg.SSEStreamLifetime, "sse-stream-lifetime", cfg.SSEStreamLifetime, "a GET SSE stream is closed after this long; the client reconnects (SSE polling)")
	fs.BoolVar(&cfg.Sessionless, "sessionless", cfg.Sessionless, "also serve MCP 2026-07-28 (sessionless: server/discover, per-request _meta, MRTR, subscriptions/listen) on /mcp; go-sdk >= 1.8 clients then prefer it to sessions; false makes them use sessions")
	fs.DurationVar(&cfg.SSEKeepAlive, "sse-keepalive", cfg.SSEKeepAlive, "interval of keep-alive comments on idle SSE streams")
	fs.DurationVar(&cfg.InflightDelay, "inflight-delay", cfg.InflightDelay, "a tools/call, resources/read, prompts/get or tasks/result still running after this long is recorded in flight in the store (cancellable from any worker) and, when the client accepts SSE, answered as a resumable SSE stream; quicker ones are plain JSON with no store write (0: at once)")
	fs.DurationVar(&cfg.SweepDelay, "sweep-delay", cfg.SweepDelay, "a worker out of membership this long has its in-flight requests answered with errors and its running tasks failed by a live worker (must exceed the 10s drain)")
	fs.StringVar(&cfg.AuthTokensFile, "auth-tokens", cfg.AuthTokensFile, "turns auth on: file of \"<sha256 hex of a token> <principal>\" lines; clients send Authorization: Bearer <token> (401 otherwise) and a session is served only to the principal that initialized it")
	fs.StringVar(&cfg.AuthPrincipalHeader, "auth-principal-header", cfg.AuthPrincipalHeader, "turns auth on: a header a trusted gateway sets to the authenticated principal (the gateway must strip it from client requests)")
	fs.DurationVar(&cfg.SessionCacheTTL, "session-cache-ttl", cfg.SessionCacheTTL, "a session record read from the store is served again for this long without reading it; logging/setLevel and DELETE then wait a little longer before answering so the next request sees them on any worker (every worker of a store must use the same value; 0: off, every request reads the store)")
	fs.BoolVar(&cfg.Pprof, "pprof", cfg.Pprof, "serve Go's profiler under /debug/pprof/ on the worker's port (for performance work; keep it off in production)")
	fs.IntVar(&cfg.GCPercent, "gc-percent", cfg.GCPercent, "Go GC target of the worker process (as GOGC; overrides it): higher spends less CPU on GC for more heap")
	fs.IntVar(&cfg.GCMinHeapMiB, "gc-min-heap-mib", cfg.GCMinHeapMiB, "floor of the GC's heap goal in MiB: while the live heap is small the worker collects only once the heap reaches this, not several times a second under load; 0: no floor (GOMEMLIMIT still bounds the heap)")
	if err := config.Parse(fs, args, nil); err != nil {
		if errors.Is(err, config.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "erlmcp worker: %v\n", err)
		return exitUsage
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "erlmcp worker: %v\n", err)
		return exitUsage
	}
	log, err := logging.New(stderr, cfg.Common.LogFormat, cfg.Common.LogLevel, "worker", cfg.Common.ID, cfg.Common.Region)
	if err != nil {
		fmt.Fprintf(stderr, "erlmcp worker: %v\n", err)
		return exitUsage
	}
	stopGC, err := gcfloor.StartMiB(cfg.GCPercent, cfg.GCMinHeapMiB)
	if err != nil {
		fmt.Fprintf(stderr, "erlmcp worker: %v\n", err)
		return exitUsage
	}
	defer stopGC()
	if err := worker.Run(ctx, cfg, log); err != nil {
		log.WithError(err).Error("worker failed")
		fmt.Fprintf(stderr, "erlmcp worker: %v\n", err)
		return exitFailure
	}
	return exitOK
}
