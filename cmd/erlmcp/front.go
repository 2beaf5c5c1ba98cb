package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/front"
	"github.com/erlmcp/erlmcp/internal/gcfloor"
	"github.com/erlmcp/erlmcp/internal/logging"
)

const frontSummary = `Run the etcd-aware HTTP front: it watches <etcd-prefix>members/worker/ and
spreads MCP traffic over the non-draining workers by health-aware round robin
(no stickiness), streams SSE unbuffered, and resends a request to another
worker only when the first provably did not process it (connection refused,
or reset before any byte of the answer) or it is read-only. A worker whose
requests stall is probed and, when it stops answering, taken out of
rotation. With no
worker available it answers 503 with Retry-After. It serves /healthz and
/readyz itself and registers under <etcd-prefix>members/front/<id>.`

// cmdFront runs the front until ctx ends.
func cmdFront(ctx context.Context, args []string, _, stderr io.Writer) int {
	cfg := front.DefaultConfig()
	cfg.Version = version
	fs := config.NewFlagSet("front", frontSummary, stderr)
	cfg.Common.Register(fs)
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "HTTP listen address host:port")
	fs.StringVar(&cfg.Advertise, "advertise", cfg.Advertise, "address registered in etcd (empty: the address listened on)")
	fs.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", cfg.MaxBodyBytes, "largest request body, buffered so a request can be retried; larger is refused with 413")
	fs.DurationVar(&cfg.DialTimeout, "dial-timeout", cfg.DialTimeout, "timeout for connecting to a worker")
	fs.DurationVar(&cfg.Cooldown, "cooldown", cfg.Cooldown, "how long a worker that refused a connection or failed a probe is skipped")
	fs.DurationVar(&cfg.ProbeInterval, "probe-interval", cfg.ProbeInterval, "period of GET /healthz probes of each worker (0 disables)")
	fs.DurationVar(&cfg.ProbeTimeout, "probe-timeout", cfg.ProbeTimeout, "a worker health probe not answered within this failed")
	fs.IntVar(&cfg.ProbeFailAfter, "probe-fail-after", cfg.ProbeFailAfter, "consecutive failed probes that take a worker out of rotation and cancel its in-flight requests")
	fs.DurationVar(&cfg.SuspectAfter, "suspect-after", cfg.SuspectAfter, "probe a worker when a request has waited this long for response headers (0 disables)")
	fs.BoolVar(&cfg.WorkerKeepAlive, "worker-keepalive", cfg.WorkerKeepAlive, "reuse connections to workers (false: one connection per request)")
	fs.IntVar(&cfg.MaxIdlePerWorker, "max-idle-per-worker", cfg.MaxIdlePerWorker, "idle keep-alive connections kept per worker")
	fs.DurationVar(&cfg.VanishedGrace, "vanished-grace", cfg.VanishedGrace, "keep routing to a worker whose membership key vanished without draining (lease lost under it) while it answers, this long (0: drop it at once)")
	fs.IntVar(&cfg.GCPercent, "gc-percent", cfg.GCPercent, "Go GC target of the front process (as GOGC; overrides it): higher spends less CPU on GC for more heap")
	fs.IntVar(&cfg.GCMinHeapMiB, "gc-min-heap-mib", cfg.GCMinHeapMiB, "floor of the GC's heap goal in MiB: while the live heap is small the front collects only once the heap reaches this, not several times a second under load; 0: no floor (GOMEMLIMIT still bounds the heap)")
	fs.BoolVar(&cfg.Pprof, "pprof", cfg.Pprof, "serve Go's profiler under /debug/pprof/ on the front's port (for performance work; keep it off in production)")
	if err := config.Parse(fs, args, nil); err != nil {
		if errors.Is(err, config.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "erlmcp front: %v\n", err)
		return exitUsage
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "erlmcp front: %v\n", err)
		return exitUsage
	}
	log, err := logging.New(stderr, cfg.Common.LogFormat, cfg.Common.LogLevel, "front", cfg.Common.ID, cfg.Common.Region)
	if err != nil {
		fmt.Fprintf(stderr, "erlmcp front: %v\n", err)
		return exitUsage
	}
	stopGC, err := gcfloor.StartMiB(cfg.GCPercent, cfg.GCMinHeapMiB)
	if err != nil {
		fmt.Fprintf(stderr, "erlmcp front: %v\n", err)
		return exitUsage
	}
	defer stopGC()
	if err := front.Run(ctx, cfg, log); err != nil {
		log.WithError(err).Error("front failed")
		fmt.Fprintf(stderr, "erlmcp front: %v\n", err)
		return exitFailure
	}
	return exitOK
}
