package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

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

Faults (--fault, repeatable) are injected while the load runs into the
erlmcp up cluster of --data-dir, each ACTION:TARGET@AT[?hold=D&max=D&errors=N]:
  actions  kill (SIGKILL), term (SIGTERM), stop (SIGSTOP, SIGCONT after
           hold, default 3s), partition (cut one store node off from every
           process for hold, default 3s; needs up --store-fault-proxies),
           rolling-restart@AT (every worker, then every store node, one at
           a time, each waited for)
  targets  worker, front, store, store-leader (leads the most shards),
           store-follower (leads the fewest), controlplane-leader,
           controlplane-standby, etcd (up --etcd-members 3),
           region=<name> or region=active (every process of it), id=<member id>
  max      failover-time budget (default: worker and front 1s, store and
           store-leader 2s, store-follower, controlplane and etcd 0,
           region 10s; a rolling restart has none: its budget is 0 errors)
  errors   failed client requests the fault may cause (default
           --concurrency times the processes hit: one in flight per client
           on each; rolling restart 0)
Each fault's failover time (the longest window a session went unserved that
overlaps it) and errors are reported beside its budget; --max-errors-pct
then bounds only the errors no fault explains. With --data-dir and no --url
the load goes to the cluster's fronts.

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
		faults     faultFlag
		dataDir    string
		settle     time.Duration
		refReport  string
	)
	fs := config.NewFlagSet("loadtest", loadtestSummary, stderr)
	fs.StringVar(&cfg.URL, "url", cfg.URL, "MCP endpoint (Streamable HTTP); a comma-separated list names endpoints of the same cluster (several fronts) to fail over between, first one first")
	fs.Var(&faults, "fault", "fault to inject while the load runs, ACTION:TARGET@AT[?hold=D&max=D&errors=N]; repeatable (see above; needs --data-dir)")
	fs.StringVar(&dataDir, "data-dir", "", "data dir of the erlmcp up cluster faults are injected into (its fronts are the default --url)")
	fs.DurationVar(&cfg.FaultTail, "fault-tail", 0, "with --fault: keep the load running until the last fault is over and this long after, beyond --duration if need be (0: stop at --duration)")
	fs.DurationVar(&settle, "settle", 0, "with --data-dir: first wait up to this long for the cluster to be steady (a control-plane leader, every member healthy, every shard led and caught up); 0: do not wait")
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
	fs.BoolVar(&cfg.StampSentAt, "stamp-sent-at", false, "send X-Erlmcp-Sent-At (when each request was sent): workers logging at debug level then log how long a request took to reach them (queued)")
	fs.StringVar(&cfg.SSETool, "sse-tool", "", "tool called by the sse and resume operations: one that answers slowly with progress notifications")
	fs.StringVar(&sseArgs, "sse-args", sseArgs, "arguments of --sse-tool, a JSON object")
	fs.Float64Var(&cfg.Budgets.MaxErrorsPct, "max-errors-pct", cfg.Budgets.MaxErrorsPct, "budget: largest share of failed operations, in percent")
	fs.Int64Var(&cfg.Budgets.MaxSessionsLost, "max-sessions-lost", cfg.Budgets.MaxSessionsLost, "budget: sessions lost (answered 404, or counter restarted from 0)")
	fs.Int64Var(&cfg.Budgets.MaxWritesLost, "max-writes-lost", cfg.Budgets.MaxWritesLost, "budget: acknowledged counter increments lost (the counter went back)")
	fs.Int64Var(&cfg.Budgets.MaxSkipped, "max-skipped", cfg.Budgets.MaxSkipped, "budget: counter increments skipped (the counter jumped ahead of what was sent)")
	fs.DurationVar(&cfg.Budgets.MaxFailover, "max-failover", cfg.Budgets.MaxFailover, "budget: longest window a session went unserved (0: no budget)")
	fs.DurationVar(&cfg.Budgets.MaxP95, "max-p95", cfg.Budgets.MaxP95, "budget: 95th percentile latency (0: no budget)")
	fs.DurationVar(&cfg.Budgets.StallResolution, "stall-resolution", cfg.Budgets.StallResolution, "a fault's slowest answer counts as a window without service only when it exceeds the slowest answer outside faults by more than this and every answer while no fault was active (less is latency spread)")
	fs.DurationVar(&cfg.Budgets.StallReference, "stall-reference", cfg.Budgets.StallReference, "the slowest answer of a fault-free run against the same cluster (e.g. its baseline scenario): a fault's slowest answer counts as a stall only above it too (0: none)")
	fs.StringVar(&refReport, "stall-reference-from", "", "a fault-free run's report (its --report-file) against the same cluster: its slowest answer other than initialize is the stall reference, if above --stall-reference")
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
	urlSet := false
	fs.Visit(func(f *flag.Flag) { urlSet = urlSet || f.Name == "url" })
	if _, ok := lookup(config.EnvName("url")); ok {
		urlSet = true
	}
	if dataDir != "" {
		up, err := loadgen.OpenUpCluster(dataDir)
		if err != nil {
			fmt.Fprintf(stderr, "erlmcp loadtest: %v\n", err)
			return exitUsage
		}
		cfg.Injector = up
		if !urlSet {
			fronts, err := loadgen.FrontURLs(dataDir)
			if err != nil {
				fmt.Fprintf(stderr, "erlmcp loadtest: %v\n", err)
				return exitUsage
			}
			cfg.URL = strings.Join(fronts, ",")
		}
	}
	if urls := strings.Split(cfg.URL, ","); len(urls) > 1 {
		cfg.URL = strings.TrimSpace(urls[0])
		for _, u := range urls[1:] {
			cfg.Fallbacks = append(cfg.Fallbacks, strings.TrimSpace(u))
		}
	}
	cfg.Faults = faults.f
	if refReport != "" {
		ref, err := loadgen.ReadReport(refReport)
		if err != nil {
			fmt.Fprintf(stderr, "erlmcp loadtest: --stall-reference-from: %v\n", err)
			return exitUsage
		}
		cfg.Budgets.StallReference = max(cfg.Budgets.StallReference, ref.SteadyMax())
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "erlmcp loadtest: %v\n", err)
		return exitUsage
	}

	if up, ok := cfg.Injector.(*loadgen.UpCluster); ok && settle > 0 {
		if err := up.WaitHealthy(ctx, settle); err != nil {
			fmt.Fprintf(stderr, "erlmcp loadtest: --settle: %v\n", err)
			return exitFailure
		}
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

// faultFlag collects repeated --fault flags; from the environment
// (ERLMCP_FAULT) it takes one fault per line.
type faultFlag struct{ f []loadgen.Fault }

func (f *faultFlag) String() string {
	if f == nil {
		return ""
	}
	var parts []string
	for _, x := range f.f {
		parts = append(parts, x.Spec)
	}
	return strings.Join(parts, " ")
}

func (f *faultFlag) Set(s string) error {
	for _, line := range strings.Split(s, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		x, err := loadgen.ParseFault(line)
		if err != nil {
			return err
		}
		f.f = append(f.f, x)
	}
	return nil
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
