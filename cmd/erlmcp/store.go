package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/gcfloor"
	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/sessionstore"
)

const storeSummary = `Run a session store node: it serves erlmcp.sessionstore.v1.SessionStoreService
(and StoreAdminService, and the Raft transport between store nodes) over gRPC
for the shards the shard map in etcd assigns to it, and registers itself under
<etcd-prefix>members/store/<id>. Each shard replica is a member of the shard's
Raft group: a write is acknowledged once a quorum of the shard's replicas has
it durably. The replicas' Raft logs are in <data-dir>/wal/ and their state in
<data-dir>/raft.db. The node
creates, reconfigures (add learner, promote, remove) and destroys its replicas
to follow the shard map, and writes each led shard's replication status under
<etcd-prefix>status/shards/<nnn>/<store>.`

// cmdStore runs a session store node until ctx ends.
func cmdStore(ctx context.Context, args []string, _, stderr io.Writer) int {
	cfg := sessionstore.DefaultConfig()
	fs := config.NewFlagSet("store", storeSummary, stderr)
	cfg.Common.Register(fs)
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "gRPC listen address host:port (port 0 picks a free port)")
	fs.StringVar(&cfg.Advertise, "advertise", "", "gRPC address host:port registered in etcd for workers and other nodes to dial (empty: the bound listen address, with 0.0.0.0 or :: replaced by the hostname)")
	fs.StringVar(&cfg.HTTPListen, "http-listen", "", "HTTP listen address host:port serving /metrics, /healthz (process up) and /readyz (etcd reachable, lease held, shards hosted with a leader), registered as http_addr (empty: no HTTP listener; port 0 picks a free port)")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "directory for the store's data file (empty: ./.erlmcp/store-<id>)")
	fs.IntVar(&cfg.MaxValueBytes, "max-value-bytes", cfg.MaxValueBytes, "largest session data, state value, task result+data, or one append's event data accepted, in bytes")
	fs.IntVar(&cfg.EventRetention, "event-retention", cfg.EventRetention, "events kept per session stream (the newest; older ones are dropped)")
	fs.IntVar(&cfg.MaxStreamsPerSession, "max-streams-per-session", cfg.MaxStreamsPerSession, "event streams kept per session (appending to a new one beyond it drops the least recently appended stream)")
	fs.DurationVar(&cfg.RaftTickInterval, "raft-tick", cfg.RaftTickInterval, "Raft logical clock period: the leader heartbeats every 2 ticks, followers elect a new leader after 10-20 ticks without one; give every store the same (stores use leader leases for reads only while all advertise the same tick)")
	fs.BoolVar(&cfg.ReadIndexOnly, "read-index-only", cfg.ReadIndexOnly, "confirm leadership for every linearizable read with a heartbeat round to a quorum (ReadIndex) instead of the shard leader's lease (a lease halves a read's CPU; it assumes the machines' clocks run at rates within 10% of each other and keep running while the host is suspended: set this on hosts that may be suspended, and while changing --raft-tick)")
	fs.IntVar(&cfg.GCPercent, "gc-percent", cfg.GCPercent, "Go GC target of the store process (as GOGC; overrides it): higher spends less CPU on GC for more heap (bound the heap with GOMEMLIMIT)")
	fs.IntVar(&cfg.GCMinHeapMiB, "gc-min-heap-mib", cfg.GCMinHeapMiB, "floor of the GC's heap goal in MiB: while the live heap is small the store collects only once the heap reaches this, not several times a second (each collection stalls calls for milliseconds); 0: no floor (GOMEMLIMIT still bounds the heap)")
	if err := config.Parse(fs, args, nil); err != nil {
		if errors.Is(err, config.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "erlmcp store: %v\n", err)
		return exitUsage
	}
	if cfg.DataDir == "" && cfg.Common.ID != "" {
		cfg.DataDir = filepath.Join(".erlmcp", "store-"+cfg.Common.ID)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "erlmcp store: %v\n", err)
		return exitUsage
	}
	log, err := logging.New(stderr, cfg.Common.LogFormat, cfg.Common.LogLevel, "store", cfg.Common.ID, cfg.Common.Region)
	if err != nil {
		fmt.Fprintf(stderr, "erlmcp store: %v\n", err)
		return exitUsage
	}
	stopGC, err := gcfloor.StartMiB(cfg.GCPercent, cfg.GCMinHeapMiB)
	if err != nil {
		fmt.Fprintf(stderr, "erlmcp store: %v\n", err)
		return exitUsage
	}
	defer stopGC()
	if err := sessionstore.Run(ctx, cfg, log); err != nil {
		log.WithError(err).Error("store node failed")
		fmt.Fprintf(stderr, "erlmcp store: %v\n", err)
		return exitFailure
	}
	return exitOK
}
