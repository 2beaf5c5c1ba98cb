package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/erlmcp/erlmcp/controlplane"
	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/logging"
)

const controlPlaneSummary = `Runs one control-plane instance. Instances elect one leader through etcd
(key <prefix>election/controlplane); the leader creates the cluster
(<prefix>config/cluster, shard count and replication factor fixed at
creation) and places shards on store nodes (<prefix>shards/<nnn>), every
write fenced on its leadership. With --replication-mode raft it places
replication-factor replicas per shard and repairs, drains and rebalances
them through operators (<prefix>ops/<id>), reading replica progress from
<prefix>status/shards/<nnn>/<store>. In both modes it keeps
<prefix>regions/<name>, fails the active region over when its members stop
answering health probes, and records failovers in <prefix>history/. Every
instance serves the admin API (HTTP+JSON, bearer token): GET /v1/members,
/v1/leader, /v1/cluster, /v1/shards, /v1/regions, /v1/history, /v1/ops,
POST /v1/regions/<name>/failover|failback, GET /v1/autoheal, POST
/v1/autoheal/pause|resume, and without a token /healthz and /metrics. With
an --actuator the leader restarts unhealthy members (autoheal) and, with
--autoscale, sizes the worker pool on load (<prefix>desired/<pool>). A
token is required: --admin-token or --admin-token-file.`

// cmdControlPlane runs a control-plane instance until ctx ends.
func cmdControlPlane(ctx context.Context, args []string, _, stderr io.Writer) int {
	cfg := controlplane.DefaultConfig()
	fs := config.NewFlagSet("controlplane", controlPlaneSummary, stderr)
	cfg.Common.Register(fs)
	fs.StringVar(&cfg.AdminListen, "admin-listen", cfg.AdminListen, "host:port the admin API listens on")
	fs.StringVar(&cfg.AdminAdvertise, "admin-advertise", cfg.AdminAdvertise, "host:port others use to reach the admin API (default: the listen address; an unspecified host becomes this machine's host name)")
	fs.StringVar(&cfg.AdminToken, "admin-token", cfg.AdminToken, "bearer token the admin API requires (or use --admin-token-file)")
	fs.StringVar(&cfg.AdminTokenFile, "admin-token-file", cfg.AdminTokenFile, "file holding the admin bearer token")
	fs.IntVar(&cfg.ShardCount, "shard-count", cfg.ShardCount, "shards of a new cluster (fixed once the cluster is created)")
	fs.IntVar(&cfg.ReplicationFactor, "replication-factor", cfg.ReplicationFactor, "replicas per shard of a new cluster")
	fs.DurationVar(&cfg.ElectionTTL, "election-ttl", cfg.ElectionTTL, "election lease TTL: a dead leader is replaced within about this long (whole seconds)")
	fs.DurationVar(&cfg.PlacementSettle, "placement-settle", cfg.PlacementSettle, "how long initial placement waits for min(replication factor, 3) store nodes spanning min(replication factor, regions) regions before placing on what registered")
	fs.StringVar(&cfg.ReplicationMode, "replication-mode", cfg.ReplicationMode, "single: one replica per shard (today's single-replica store nodes); raft: replication-factor replicas per shard, repaired and balanced by the placement planner (only with Raft-replicated store nodes)")
	fs.DurationVar(&cfg.Planner.DownGrace, "store-down-grace", cfg.Planner.DownGrace, "raft mode: how long a store must be gone before its replicas are replaced")
	fs.IntVar(&cfg.Planner.MaxOpsPerStore, "max-ops-per-store", cfg.Planner.MaxOpsPerStore, "raft mode: most placement operators in flight adding to or removing from one store")
	fs.IntVar(&cfg.Planner.MaxOpsTotal, "max-ops-total", cfg.Planner.MaxOpsTotal, "raft mode: most placement operators in flight in all")
	fs.IntVar(&cfg.Planner.RebalanceThreshold, "rebalance-threshold", cfg.Planner.RebalanceThreshold, "raft mode: rebalance while replica counts of stores differ by more than this")
	fs.Int64Var(&cfg.Planner.MaxPromoteLag, "max-promote-lag", cfg.Planner.MaxPromoteLag, "raft mode: most log entries a learner may lag and still be promoted")
	fs.Float64Var(&cfg.Planner.MassExpiryFraction, "mass-expiry-fraction", cfg.Planner.MassExpiryFraction, "pause placement when more than this fraction of stores vanished within --mass-expiry-window")
	fs.DurationVar(&cfg.Planner.MassExpiryWindow, "mass-expiry-window", cfg.Planner.MassExpiryWindow, "window of the mass lease expiry guard")
	fs.DurationVar(&cfg.Planner.OperatorTimeout, "operator-timeout", cfg.Planner.OperatorTimeout, "raft mode: cancel a placement operator that made no progress this long")
	fs.DurationVar(&cfg.ProbeInterval, "probe-interval", cfg.ProbeInterval, "how often the leader probes members for the region failure detector")
	fs.IntVar(&cfg.Detector.FailAfter, "region-fail-after", cfg.Detector.FailAfter, "a region fails after this many failed probe rounds among the last --region-probe-window")
	fs.IntVar(&cfg.Detector.Window, "region-probe-window", cfg.Detector.Window, "probe rounds the region failure detector looks at")
	fs.IntVar(&cfg.Detector.RecoverAfter, "region-recover-after", cfg.Detector.RecoverAfter, "good probe rounds in a row after which a failed region is standby again (failback stays manual)")
	fs.IntVar(&cfg.HistoryLimit, "history-limit", cfg.HistoryLimit, "history entries kept (newest)")
	kubeDeps, autohealRoles := registerAutohealFlags(fs, &cfg)
	if err := config.Parse(fs, args, nil); err != nil {
		if errors.Is(err, config.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "erlmcp controlplane: %v\n", err)
		return exitUsage
	}
	if err := applyAutohealFlags(&cfg, *kubeDeps, *autohealRoles); err != nil {
		fmt.Fprintf(stderr, "erlmcp controlplane: %v\n", err)
		return exitUsage
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "erlmcp controlplane: %v\n", err)
		return exitUsage
	}
	log, err := logging.New(stderr, cfg.Common.LogFormat, cfg.Common.LogLevel, "controlplane", cfg.Common.ID, cfg.Common.Region)
	if err != nil {
		fmt.Fprintf(stderr, "erlmcp controlplane: %v\n", err)
		return exitUsage
	}
	controlplane.Version = version
	if err := controlplane.Run(ctx, cfg, log); err != nil {
		if ctx.Err() != nil {
			return exitOK
		}
		log.WithError(err).Error("control plane failed")
		fmt.Fprintf(stderr, "erlmcp controlplane: %v\n", err)
		return exitFailure
	}
	return exitOK
}
