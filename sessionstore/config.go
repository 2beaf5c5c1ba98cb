// Package sessionstore is the session store node: it keeps MCP session
// records for the shards the shard map assigns to it and serves them over
// gRPC (erlmcp.sessionstore.v1.SessionStoreService).
//
// This first version keeps one replica per shard in a local bbolt file
// behind the storage interface; the multi-Raft version replaces the storage.
package sessionstore

import (
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/erlmcp/erlmcp/internal/config"
)

// Defaults.
const (
	DefaultListen        = "127.0.0.1:9090"
	DefaultMaxValueBytes = 1 << 20
	// MaxMaxValueBytes caps --max-value-bytes: records travel whole in one
	// gRPC message and one bbolt write.
	MaxMaxValueBytes = 64 << 20
)

// Config configures a store node.
type Config struct {
	Common config.Common
	// Listen is the gRPC listen address; port 0 picks a free port, and the
	// address actually bound is registered in membership.
	Listen string
	// DataDir holds store.db.
	DataDir string
	// MaxValueBytes limits a session's data.
	MaxValueBytes int
}

// DefaultConfig returns the defaults; DataDir is left empty for the caller
// to set.
func DefaultConfig() Config {
	return Config{
		Common:        config.DefaultCommon(),
		Listen:        DefaultListen,
		MaxValueBytes: DefaultMaxValueBytes,
	}
}

// Validate reports the first setting that cannot work, saying what to change.
func (c Config) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if c.Listen == "" {
		return errors.New("--listen is empty: give the gRPC listen address as host:port (port 0 picks a free port)")
	}
	_, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("--listen %q: want host:port, e.g. %s (%v)", c.Listen, DefaultListen, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("--listen %q: port %q must be a number 0..65535", c.Listen, port)
	}
	if c.DataDir == "" {
		return errors.New("--data-dir is empty: give a directory for the store's data file")
	}
	if c.MaxValueBytes < 1 || c.MaxValueBytes > MaxMaxValueBytes {
		return fmt.Errorf("--max-value-bytes %d: want 1..%d", c.MaxValueBytes, MaxMaxValueBytes)
	}
	return nil
}
