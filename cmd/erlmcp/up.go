package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/localcluster"
	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/worker"
)

const upSummary = `Run a whole erlmcp cluster on this machine with one command: etcd embedded
in this process, and control planes, session store nodes, workers and the
front as supervised child processes of this binary (restarted with backoff if
they exit), all on 127.0.0.1. Everything lives under --data-dir: the etcd
data, each store's data, logs/<child>.log, admin.token and cluster.json (the
endpoints and admin token, read by erlmcp ctl). Running up again on the same
data dir restarts the same cluster. Ctrl-C (SIGINT) or SIGTERM stops it all.`

// cmdUp runs the local cluster until ctx ends.
func cmdUp(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg := localcluster.DefaultConfig()
	fs := config.NewFlagSet("up", upSummary, stderr)
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for all cluster state (created if missing; locked while up runs)")
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "the front's listen address: the MCP endpoint is http://<listen>/mcp")
	fs.IntVar(&cfg.AdminPortBase, "admin-port-base", cfg.AdminPortBase, "control plane i serves its admin API on 127.0.0.1:<base+i>")
	fs.IntVar(&cfg.WorkerPortBase, "worker-port-base", cfg.WorkerPortBase, "worker i listens on 127.0.0.1:<base+i>")
	fs.IntVar(&cfg.StorePortBase, "store-port-base", cfg.StorePortBase, "store node i serves gRPC on 127.0.0.1:<base+i>")
	fs.IntVar(&cfg.StoreHTTPPortBase, "store-http-port-base", cfg.StoreHTTPPortBase, "store node i serves /metrics, /healthz, /readyz on 127.0.0.1:<base+i> (0: right after the store gRPC ports)")
	fs.IntVar(&cfg.EtcdClientPort, "etcd-client-port", cfg.EtcdClientPort, "embedded etcd client port on 127.0.0.1")
	fs.IntVar(&cfg.EtcdPeerPort, "etcd-peer-port", cfg.EtcdPeerPort, "embedded etcd peer port on 127.0.0.1")
	fs.IntVar(&cfg.Workers, "workers", cfg.Workers, "number of MCP workers")
	fs.IntVar(&cfg.Stores, "stores", cfg.Stores, "number of session store nodes")
	fs.IntVar(&cfg.ControlPlanes, "controlplanes", cfg.ControlPlanes, "number of control-plane instances (one leads)")
	fs.IntVar(&cfg.Fronts, "fronts", cfg.Fronts, "number of fronts; front i >= 2 listens on 127.0.0.1:<front-port-base+i-2> (cluster.json lists every front's URL)")
	fs.IntVar(&cfg.FrontPortBase, "front-port-base", cfg.FrontPortBase, "with --fronts > 1: front 2 listens on 127.0.0.1:<base>, front 3 on <base+1>, ...")
	fs.BoolVar(&cfg.StoreFaultProxies, "store-fault-proxies", cfg.StoreFaultProxies, "put a TCP proxy in front of every store node, which it advertises, so writing a store id into <data-dir>/faults/partition cuts that node off from every other process (erlmcp loadtest --fault partition:...)")
	fs.IntVar(&cfg.StoreProxyPortBase, "store-proxy-port-base", cfg.StoreProxyPortBase, "with --store-fault-proxies: store i's proxy listens on 127.0.0.1:<base+i> (0: store-port-base + 2*stores)")
	fs.IntVar(&cfg.EtcdMembers, "etcd-members", cfg.EtcdMembers, "1: etcd runs inside up; 3 or 5: etcd members run as supervised erlmcp etcd processes, member i (from 0) on --etcd-client-port+2i and --etcd-peer-port+2i, data in <data-dir>/etcd-<i+1> (so keep the same choice for a data dir)")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "log level of up and every child: debug, info, warn, error")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", cfg.LeaseTTL, "membership lease TTL of every child: a dead process leaves membership within about TTL + 0.5s")
	fs.DurationVar(&cfg.ReadyTimeout, "ready-timeout", cfg.ReadyTimeout, "how long to wait for the front and a worker to be up before giving up")
	fs.DurationVar(&cfg.StopTimeout, "stop-timeout", cfg.StopTimeout, "on shutdown, how long children get after SIGTERM before SIGKILL")
	fs.StringVar(&cfg.WorkerAuthTokens, "worker-auth-tokens", cfg.WorkerAuthTokens, "every worker's --auth-tokens: file of \"<sha256 hex of a token> <principal>\" lines; turns auth on for /mcp")
	fs.StringVar(&cfg.WorkerAuthPrincipalHeader, "worker-auth-principal-header", cfg.WorkerAuthPrincipalHeader, "every worker's --auth-principal-header: the header a trusted gateway sets to the authenticated principal; turns auth on for /mcp")
	if err := config.Parse(fs, args, nil); err != nil {
		if errors.Is(err, config.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "erlmcp up: %v\n", err)
		return exitUsage
	}
	if cfg.WorkerAuthTokens != "" {
		// The workers run in the data dir's context, not this one's.
		abs, err := filepath.Abs(cfg.WorkerAuthTokens)
		if err == nil {
			_, err = worker.LoadAuthTokens(abs)
		}
		if err != nil {
			fmt.Fprintf(stderr, "erlmcp up: --worker-auth-tokens: %v\n", err)
			return exitUsage
		}
		cfg.WorkerAuthTokens = abs
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "erlmcp up: %v\n", err)
		return exitUsage
	}
	log, err := logging.New(stderr, "auto", cfg.LogLevel, "up", "up", "local")
	if err != nil {
		fmt.Fprintf(stderr, "erlmcp up: %v\n", err)
		return exitUsage
	}
	if err := localcluster.Run(ctx, cfg, stdout, log); err != nil {
		fmt.Fprintf(stderr, "erlmcp up: %v\n", err)
		return exitFailure
	}
	return exitOK
}
