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
write fenced on its leadership. Every instance serves the admin API
(HTTP+JSON, bearer token): GET /v1/members, /v1/leader, /v1/cluster, and
without a token /healthz and /metrics. A token is required: --admin-token
or --admin-token-file.`

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
	fs.DurationVar(&cfg.PlacementSettle, "placement-settle", cfg.PlacementSettle, "how long initial placement waits for min(replication factor, 3) store nodes before placing on fewer")
	if err := config.Parse(fs, args, nil); err != nil {
		if errors.Is(err, config.ErrHelp) {
			return exitOK
		}
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
