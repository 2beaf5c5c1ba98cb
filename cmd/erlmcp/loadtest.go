package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/loadgen"
)

const loadtestSummary = `Drive MCP load against a Streamable HTTP MCP endpoint and check what HA
promises. Each session slot initializes a session (protocol 2025-11-25 by
default), then spends each turn on one operation drawn from --mix:
  list     tools/list
  echo     tools/call echo {text}, answer checked
  counter  tools/call counter {by:1}: a session-scoped counter whose every
           value must be the last plus 1 (continuity)
  sse      tools/call of --sse-tool with a progress token (a long stream)
  resume   the same, dropping the stream after its first event id and
           resuming with GET + Last-Event-ID
  delete   DELETE the session; the slot's next turn initializes a new one
With --protocol 2026-07-28 no session is made: each request carries _meta
and the Mcp-Method / Mcp-Name headers (only list, echo and sse apply).
Only the URL given is requested (redirects are not followed); the run stops
by itself after --duration (or --max-requests); requests in flight then
finish within --timeout. A progress line goes to stderr every second; the
report goes to stdout as a table, or as JSON with --json, and as JSON to
--report-file.

Exit codes: 0 the run completed and met every budget; 1 a budget was missed,
the run was interrupted, or the server could not be reached at the start;
2 bad usage.`

// headerFlag collects repeated --header "Name: value" flags. From the
// environment (ERLMCP_HEADER) it takes one header per line.
type headerFlag struct{ h http.Header }

func (f *headerFlag) String() string {
	if f == nil || len(f.h) == 0 {
		return ""
	}
	var parts []string
	for k, vs := range f.h {
		for _, v := range vs {
			parts = append(parts, k+": "+v)
		}
	}
	return strings.Join(parts, "; ")
}

func (f *headerFlag) Set(s string) error {
	for _, line := range strings.Split(s, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		k, v, err := loadgen.ParseHeader(line)
		if err != nil {
			return err
		}
		f.h.Add(k, v)
	}
	return nil
}

// cmdLoadtest runs a load test against an MCP URL.
func cmdLoadtest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runLoadtest(ctx, args, stdout, stderr, os.LookupEnv)
}

func runLoadtest(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	cfg := loadgen.DefaultConfig()
	var (
		mixSpec    string
		sseArgs    = string(cfg.SSEArgs)
		asJSON     bool
		reportFile string
		headers    = &headerFlag{h: http.Header{}}
	)
	fs := config.NewFlagSet("loadtest", loadtestSummary, stderr)
	fs.StringVar(&cfg.URL, "url", cfg.URL, "MCP endpoint (Streamable HTTP); the only URL requested")
	fs.IntVar(&cfg.Sessions, "sessions", cfg.Sessions, "session slots (logical clients); each carries one request at a time")
	fs.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "requests in flight at most, and connections in the keep-alive pool (at most --sessions)")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "operations per second over all sessions; 0 runs a closed loop as fast as the server answers")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long operations are started")
	fs.DurationVar(&cfg.Ramp, "ramp", cfg.Ramp, "raise the rate (closed loop: the number of active workers) linearly from 0 over this long")
	fs.Int64Var(&cfg.MaxRequests, "max-requests", cfg.MaxRequests, "stop after this many operations (0: only --duration bounds the run)")
	fs.StringVar(&mixSpec, "mix", "", "operation weights, e.g. list=1,echo=6,counter=3,sse=0,resume=0,delete=0 (default: that one; with --protocol 2026-07-28 list=1,echo=9)")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "per operation (for resume: both of its requests)")
	fs.BoolVar(&asJSON, "json", false, "print the final report as JSON on stdout instead of a table")
	fs.StringVar(&reportFile, "report-file", "", "also write the final report as JSON to this file")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the operation choice")
	fs.StringVar(&cfg.Protocol, "protocol", cfg.Protocol, "MCP protocol version: "+strings.Join(loadgen.Protocols, ", ")+" (sessionless)")
	fs.Var(headers, "header", `extra request header "Name: value"; repeatable (in the environment, one per line)`)
	fs.StringVar(&cfg.SSETool, "sse-tool", "", "tool called by the sse and resume operations: one that answers slowly with progress notifications")
	fs.StringVar(&sseArgs, "sse-args", sseArgs, "arguments of --sse-tool, a JSON object")
	fs.Float64Var(&cfg.Budgets.MaxErrorsPct, "max-errors-pct", cfg.Budgets.MaxErrorsPct, "budget: largest share of failed operations, in percent")
	fs.Int64Var(&cfg.Budgets.MaxSessionsLost, "max-sessions-lost", cfg.Budgets.MaxSessionsLost, "budget: sessions lost (answered 404, or counter restarted from 0)")
	fs.Int64Var(&cfg.Budgets.MaxWritesLost, "max-writes-lost", cfg.Budgets.MaxWritesLost, "budget: acknowledged counter increments lost (the counter went back)")
	fs.Int64Var(&cfg.Budgets.MaxSkipped, "max-skipped", cfg.Budgets.MaxSkipped, "budget: counter increments skipped (the counter jumped ahead of what was sent)")
	fs.DurationVar(&cfg.Budgets.MaxFailover, "max-failover", cfg.Budgets.MaxFailover, "budget: longest window a session went unserved (0: no budget)")
	fs.DurationVar(&cfg.Budgets.MaxP95, "max-p95", cfg.Budgets.MaxP95, "budget: 95th percentile latency (0: no budget)")
	if err := config.Parse(fs, args, lookup); err != nil {
		if errors.Is(err, config.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "erlmcp loadtest: %v\n", err)
		return exitUsage
	}
	if mixSpec == "" {
		cfg.Mix = loadgen.DefaultMix(cfg.Protocol)
	} else {
		m, err := loadgen.ParseMix(mixSpec)
		if err != nil {
			fmt.Fprintf(stderr, "erlmcp loadtest: %v\n", err)
			return exitUsage
		}
		cfg.Mix = m
	}
	if !json.Valid([]byte(sseArgs)) {
		fmt.Fprintf(stderr, "erlmcp loadtest: --sse-args %s: not JSON\n", sseArgs)
		return exitUsage
	}
	cfg.SSEArgs = json.RawMessage(sseArgs)
	if len(headers.h) > 0 {
		cfg.Headers = headers.h
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "erlmcp loadtest: %v\n", err)
		return exitUsage
	}

	rep, err := loadgen.Run(ctx, cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "erlmcp loadtest: %v\n", err)
		return exitFailure
	}
	code := exitOK
	if !rep.Passed {
		code = exitFailure
	}
	if reportFile != "" {
		if err := writeReportFile(reportFile, rep); err != nil {
			fmt.Fprintf(stderr, "erlmcp loadtest: --report-file: %v\n", err)
			code = exitFailure
		}
	}
	if asJSON {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteTable(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "erlmcp loadtest: writing the report: %v\n", err)
		return exitFailure
	}
	return code
}

func writeReportFile(path string, rep loadgen.Report) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := rep.WriteJSON(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
