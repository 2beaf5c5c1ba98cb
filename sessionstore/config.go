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
	// Listen is the gRPC listen address; port 0 picks a free port.
	Listen string
	// Advertise is the host:port registered in membership, where workers
	// and other nodes dial this node. Empty: the address actually bound,
	// with an unspecified IP (0.0.0.0, ::) replaced by the hostname.
	Advertise string
	// DataDir holds store.db.
	DataDir string
	// MaxValueBytes limits a session's data, a state value, a task's
	// result+data+status message, and the data of one AppendEvents.
	MaxValueBytes int
	// EventRetention is how many events each stream keeps (the newest).
	EventRetention int
	// MaxStreamsPerSession is how many streams a session keeps; appending
	// to a new stream beyond it drops the stream appended to least
	// recently.
	MaxStreamsPerSession int

	// leaseHook, if set, is told when the node stops (false) and starts
	// again (true) serving for its membership lease (tests).
	leaseHook func(held bool)
}

// DefaultConfig returns the defaults; DataDir is left empty for the caller
// to set.
func DefaultConfig() Config {
	return Config{
		Common:               config.DefaultCommon(),
		Listen:               DefaultListen,
		MaxValueBytes:        DefaultMaxValueBytes,
		EventRetention:       DefaultEventRetention,
		MaxStreamsPerSession: DefaultMaxStreamsPerSession,
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
	if c.Advertise != "" {
		host, port, err := net.SplitHostPort(c.Advertise)
		if err != nil {
			return fmt.Errorf("--advertise %q: want host:port where other nodes and workers reach this node (%v)", c.Advertise, err)
		}
		if host == "" {
			return fmt.Errorf("--advertise %q: the host is empty; give a name or IP others can dial", c.Advertise)
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			return fmt.Errorf("--advertise %q: %s is not dialable; give this node's name or IP", c.Advertise, host)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return fmt.Errorf("--advertise %q: port %q must be a number 1..65535", c.Advertise, port)
		}
	}
	if c.DataDir == "" {
		return errors.New("--data-dir is empty: give a directory for the store's data file")
	}
	if c.MaxValueBytes < 1 || c.MaxValueBytes > MaxMaxValueBytes {
		return fmt.Errorf("--max-value-bytes %d: want 1..%d", c.MaxValueBytes, MaxMaxValueBytes)
	}
	if c.EventRetention < 1 || c.EventRetention > MaxEventRetention {
		return fmt.Errorf("--event-retention %d: want 1..%d events per stream", c.EventRetention, MaxEventRetention)
	}
	if c.MaxStreamsPerSession < 1 || c.MaxStreamsPerSession > MaxMaxStreams {
		return fmt.Errorf("--max-streams-per-session %d: want 1..%d", c.MaxStreamsPerSession, MaxMaxStreams)
	}
	return nil
}
