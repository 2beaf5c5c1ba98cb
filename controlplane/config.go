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
	// min(ReplicationFactor, 3) store nodes to register before it places
	// shards on the fewer stores that did (at least one).
	PlacementSettle time.Duration
}

// DefaultConfig returns the defaults; a token must still be given.
func DefaultConfig() Config {
	return Config{
		Common:            config.DefaultCommon(),
		AdminListen:       "127.0.0.1:7070",
		ShardCount:        clusterstate.DefaultShardCount,
		ReplicationFactor: clusterstate.DefaultReplicationFactor,
		ElectionTTL:       5 * time.Second,
		PlacementSettle:   10 * time.Second,
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
