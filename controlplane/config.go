package controlplane

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/config"
)

// Config is one control-plane instance's settings.
type Config struct {
	Common config.Common
	// AdminListen is the host:port the admin API listens on (":0" picks a
	// free port; AdminAddr reports the one chosen).
	AdminListen string
	// AdminAdvertise is the host:port other processes use to reach the admin
	// API, written to membership and the election value. Empty means the
	// listen address, with an unspecified host (0.0.0.0, ::) replaced by
	// this machine's host name.
	AdminAdvertise string
	// AdminToken is the bearer token the admin API requires.
	AdminToken string
	// AdminTokenFile names a file holding the token (surrounding white
	// space ignored); used when AdminToken is empty.
	AdminTokenFile string
	// ShardCount is the number of shards of a new cluster. It is fixed when
	// the cluster is created; later values only cause a warning.
	ShardCount int
	// ReplicationFactor is the replicas per shard of a new cluster.
	ReplicationFactor int
	// ElectionTTL is the lease TTL of the election session: a leader that
	// dies is replaced within about this long. Whole seconds (rounded up);
	// etcd raises a TTL below its minimum (2 s with default etcd timing).
	ElectionTTL time.Duration
	// PlacementSettle is how long initial placement waits for
	// min(ReplicationFactor, 3) store nodes spanning min(ReplicationFactor,
	// regions) regions to register before it places shards on the stores
	// that did (at least one).
	PlacementSettle time.Duration

	// ReplicationMode is "single" (default: one replica per shard, as
	// today's single-replica store nodes need) or "raft" (RF replicas per
	// shard, moved by the planner and executor). Raft mode must not be used
	// before the store nodes are Raft-replicated: a single-replica store
	// serves every shard listed for it, so several replicas would accept
	// writes independently.
	ReplicationMode string
	// Planner tunes placement in raft mode (its ReplicationFactor comes
	// from the cluster config).
	Planner PlannerConfig
	// PlannerTick is how often placement re-plans without a change in etcd
	// (for grace periods and timeouts).
	PlannerTick time.Duration
	// ProbeInterval is how often the leader probes every member's health
	// for the region failure detector.
	ProbeInterval time.Duration
	// Detector is the region failure detector's hysteresis.
	Detector DetectorConfig
	// HistoryLimit is how many history entries are kept (newest).
	HistoryLimit int

	// Actuator is none, kubernetes or local:<socket> (see actuator.go).
	Actuator string
	// Kube configures the kubernetes actuator.
	Kube KubeConfig
	// Autoheal and Scale configure the autoheal loop (leader only; they act
	// only with an actuator).
	Autoheal AutohealConfig
	Scale    ScaleConfig
}

// Replication modes.
const (
	ReplicationSingle = "single"
	ReplicationRaft   = "raft"
)

// DefaultConfig returns the defaults; a token must still be given.
func DefaultConfig() Config {
	return Config{
		Common:            config.DefaultCommon(),
		AdminListen:       "127.0.0.1:7070",
		ShardCount:        clusterstate.DefaultShardCount,
		ReplicationFactor: clusterstate.DefaultReplicationFactor,
		ElectionTTL:       5 * time.Second,
		PlacementSettle:   10 * time.Second,
		ReplicationMode:   ReplicationSingle,
		Planner:           DefaultPlannerConfig(),
		PlannerTick:       time.Second,
		ProbeInterval:     2 * time.Second,
		Detector:          DefaultDetectorConfig(),
		HistoryLimit:      1000,
		Actuator:          ActuatorNone,
		Kube:              DefaultKubeConfig(),
		Autoheal:          DefaultAutohealConfig(),
		Scale:             DefaultScaleConfig(),
	}
}

// Validate reports the first setting that cannot work, saying what to
// change. It reads AdminTokenFile when that is the token's source.
func (c Config) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if c.AdminListen == "" {
		return errors.New("--admin-listen is empty: give host:port for the admin API (e.g. 127.0.0.1:7070)")
	}
	if _, _, err := net.SplitHostPort(c.AdminListen); err != nil {
		return fmt.Errorf("--admin-listen %q: want host:port (e.g. 127.0.0.1:7070): %v", c.AdminListen, err)
	}
	if c.AdminAdvertise != "" {
		if h, p, err := net.SplitHostPort(c.AdminAdvertise); err != nil || h == "" || p == "" || p == "0" {
			return fmt.Errorf("--admin-advertise %q: want host:port that other processes can dial", c.AdminAdvertise)
		}
	}
	if c.AdminToken != "" && c.AdminTokenFile != "" {
		return errors.New("both --admin-token and --admin-token-file are set: give only one")
	}
	if _, err := c.token(); err != nil {
		return err
	}
	cc := clusterstate.ClusterConfig{ShardCount: c.ShardCount, ReplicationFactor: c.ReplicationFactor}
	if c.ShardCount < 1 || c.ShardCount > clusterstate.MaxShardCount {
		return fmt.Errorf("--shard-count %d: want 1..%d", c.ShardCount, clusterstate.MaxShardCount)
	}
	if err := cc.Validate(); err != nil {
		return fmt.Errorf("--replication-factor: %w", err)
	}
	if c.ElectionTTL < time.Second {
		return fmt.Errorf("--election-ttl %s: must be at least 1s (etcd leases are whole seconds)", c.ElectionTTL)
	}
	if c.PlacementSettle < 0 {
		return fmt.Errorf("--placement-settle %s: must not be negative", c.PlacementSettle)
	}
	if c.ReplicationMode != ReplicationSingle && c.ReplicationMode != ReplicationRaft {
		return fmt.Errorf("--replication-mode %q: want %s or %s", c.ReplicationMode, ReplicationSingle, ReplicationRaft)
	}
	p := c.Planner
	switch {
	case p.DownGrace <= 0:
		return fmt.Errorf("--store-down-grace %s: must be positive", p.DownGrace)
	case p.MaxOpsPerStore < 1 || p.MaxOpsTotal < 1:
		return fmt.Errorf("--max-ops-per-store %d / --max-ops-total %d: must be at least 1", p.MaxOpsPerStore, p.MaxOpsTotal)
	case p.MassExpiryFraction <= 0 || p.MassExpiryFraction >= 1:
		return fmt.Errorf("--mass-expiry-fraction %g: want a fraction between 0 and 1", p.MassExpiryFraction)
	case p.MassExpiryWindow <= 0:
		return fmt.Errorf("--mass-expiry-window %s: must be positive", p.MassExpiryWindow)
	case p.RebalanceThreshold < 1:
		return fmt.Errorf("--rebalance-threshold %d: must be at least 1", p.RebalanceThreshold)
	case c.PlannerTick <= 0 || c.ProbeInterval <= 0:
		return fmt.Errorf("--planner-tick %s / --probe-interval %s: must be positive", c.PlannerTick, c.ProbeInterval)
	case c.HistoryLimit < 1:
		return fmt.Errorf("--history-limit %d: must be at least 1", c.HistoryLimit)
	}
	if err := c.Detector.Validate(); err != nil {
		return fmt.Errorf("--region-fail-after/--region-probe-window/--region-recover-after: %w", err)
	}
	if _, _, err := parseActuator(c.Actuator); err != nil {
		return err
	}
	if err := c.Autoheal.Validate(); err != nil {
		return err
	}
	if err := c.Scale.Validate(); err != nil {
		return err
	}
	return nil
}

// token returns the admin token from AdminToken or AdminTokenFile.
func (c Config) token() (string, error) {
	if c.AdminToken != "" {
		return c.AdminToken, nil
	}
	if c.AdminTokenFile == "" {
		return "", errors.New("no admin token: give --admin-token or --admin-token-file (env ERLMCP_ADMIN_TOKEN or ERLMCP_ADMIN_TOKEN_FILE); the admin API is never served without one")
	}
	b, err := os.ReadFile(c.AdminTokenFile)
	if err != nil {
		return "", fmt.Errorf("--admin-token-file: cannot read the admin token: %v", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("--admin-token-file %s is empty: put the admin token in it", c.AdminTokenFile)
	}
	return t, nil
}

// electionTTLSeconds is ElectionTTL rounded up to whole seconds.
func (c Config) electionTTLSeconds() int {
	return int((c.ElectionTTL + time.Second - 1) / time.Second)
}
