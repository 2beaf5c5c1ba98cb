package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/erlmcp/erlmcp/internal/capacity"
	"github.com/erlmcp/erlmcp/internal/config"
)

const capacitySummary = `Plan workers and store nodes per region for an observed load: enough to
carry it at --target-utilization and to keep carrying it when the largest
region is lost, projected --quarters ahead at --growth per quarter.

The load comes from exactly one of:
  --metrics FILE     an observed-load JSON document (write one with
                     --sample --output FILE and look at its "observed" field)
  --prometheus URL   a Prometheus that scrapes the cluster (rates over --window)
  --sample           a built-in three-region example
Per-node capacities default to what make bench measured on a 2-vCPU machine
(docs/benchmarks.md); pass your own measurements for other hardware.

A readable summary goes to stdout (JSON with --json); --output writes the JSON
report and --chart an SVG of nodes needed per quarter.

Exit codes: 0 the plan was made; 1 the load could not be read (Prometheus
unreachable or without erlmcp series, unreadable file) or an output could not
be written; 2 bad usage.`

func cmdCapacity(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runCapacity(ctx, args, stdout, stderr, os.LookupEnv)
}

func runCapacity(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	p := capacity.DefaultParams()
	var (
		metricsFile, promURL, output, chart string
		sample, asJSON                      bool
		window                              = 5 * time.Minute
	)
	fs := config.NewFlagSet("capacity", capacitySummary, stderr)
	fs.StringVar(&metricsFile, "metrics", "", "observed-load JSON file to plan from")
	fs.StringVar(&promURL, "prometheus", "", "Prometheus base URL to read the load from, e.g. http://localhost:9090")
	fs.BoolVar(&sample, "sample", false, "plan for the built-in sample load")
	fs.DurationVar(&window, "window", window, "rate window of the Prometheus queries")
	fs.StringVar(&output, "output", "", "write the JSON report to this file")
	fs.StringVar(&chart, "chart", "", "write an SVG chart to this file (default with --output: the same name with .svg)")
	fs.BoolVar(&asJSON, "json", false, "print the JSON report on stdout instead of the summary")
	fs.Float64Var(&p.WorkerRPS, "worker-rps", p.WorkerRPS, "one worker's tools/call capacity (req/s) within the latency budget")
	fs.Float64Var(&p.StoreWritesPerSec, "store-writes", p.StoreWritesPerSec, "one store node's replicated write capacity (writes/s)")
	fs.Float64Var(&p.WritesPerRequest, "writes-per-request", p.WritesPerRequest, "store writes per MCP request, used when the store's write rate is not observed")
	fs.Int64Var(&p.SessionBytes, "session-bytes", p.SessionBytes, "RAM per session per store replica, record included")
	fs.Int64Var(&p.StoreMemoryBytes, "store-memory-bytes", p.StoreMemoryBytes, "RAM a store node may use for sessions")
	fs.Float64Var(&p.TargetUtilization, "target-utilization", p.TargetUtilization, "plan nodes to run at this fraction of their capacity (0-1]")
	fs.IntVar(&p.ReplicationFactor, "replication-factor", p.ReplicationFactor, "store replicas per shard")
	fs.IntVar(&p.MinWorkersPerRegion, "min-workers-per-region", p.MinWorkersPerRegion, "fewest workers in a serving region")
	fs.IntVar(&p.MinStores, "min-stores", p.MinStores, "fewest store nodes in the cluster")
	fs.Float64Var(&p.GrowthPerQuarter, "growth", p.GrowthPerQuarter, "load growth per quarter (0.25 = +25 %)")
	fs.IntVar(&p.Quarters, "quarters", p.Quarters, "quarters to project")
	fs.Float64Var(&p.P95Budget, "p95-budget", p.P95Budget, "latency budget in seconds; regions over it get a recommendation")
	if err := config.Parse(fs, args, lookup); err != nil {
		if errors.Is(err, config.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "erlmcp capacity: %v\n", err)
		return exitUsage
	}
	sources := 0
	for _, set := range []bool{metricsFile != "", promURL != "", sample} {
		if set {
			sources++
		}
	}
	if sources != 1 {
		fmt.Fprintln(stderr, "erlmcp capacity: give exactly one of --metrics FILE, --prometheus URL or --sample (see --help)")
		return exitUsage
	}
	if err := p.Validate(); err != nil {
		fmt.Fprintf(stderr, "erlmcp capacity: %v\n", err)
		return exitUsage
	}

	var (
		obs capacity.Observed
		err error
	)
	switch {
	case sample:
		obs = capacity.Sample(time.Now())
	case metricsFile != "":
		obs, err = capacity.ReadFile(metricsFile)
	default:
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		obs, err = capacity.Prometheus{URL: promURL, Window: window}.Observe(qctx)
		cancel()
	}
	if err != nil {
		fmt.Fprintf(stderr, "erlmcp capacity: %v\n", err)
		return exitFailure
	}
	plan, err := capacity.Make(obs, p)
	if err != nil {
		fmt.Fprintf(stderr, "erlmcp capacity: %v\n", err)
		return exitFailure
	}
	if output != "" {
		if err := writeFileWith(output, plan.WriteJSON); err != nil {
			fmt.Fprintf(stderr, "erlmcp capacity: --output: %v\n", err)
			return exitFailure
		}
		if chart == "" {
			chart = strings.TrimSuffix(output, filepath.Ext(output)) + ".svg"
		}
	}
	if chart != "" {
		if err := writeFileWith(chart, plan.WriteSVG); err != nil {
			fmt.Fprintf(stderr, "erlmcp capacity: --chart: %v\n", err)
			return exitFailure
		}
	}
	if asJSON {
		err = plan.WriteJSON(stdout)
	} else {
		err = plan.WriteSummary(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "erlmcp capacity: writing the plan: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// writeFileWith creates path and fills it with write; a failed write leaves
// no half-written file behind.
func writeFileWith(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}
