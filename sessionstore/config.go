// Package sessionstore is the session store node: it keeps MCP session
// records for the shards the shard map assigns to it and serves them over
// gRPC (erlmcp.sessionstore.v1.SessionStoreService).
//
// Every shard replica is a member of the shard's Raft group (package
// multiraft): one multiraft.Node per store node keeps all of them in
// <data-dir>/raft.db, a write is acknowledged once a quorum of the shard's
// replicas has it durably, and reads are linearizable (ReadIndex on the
// leader). The node creates, reconfigures and destroys its replicas to
// follow the shard map the control plane writes (placement.go).
package sessionstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/etcdclient"
	"github.com/erlmcp/erlmcp/internal/gcfloor"
	"github.com/erlmcp/erlmcp/sessionstore/multiraft"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Defaults.
const (
	DefaultListen        = "127.0.0.1:9090"
	DefaultMaxValueBytes = 1 << 20
	// DefaultRaftTickInterval: 50ms ticks make the election timeout
	// (raftElectionTicks) 0.5-1s, for the 2s store leader failover budget;
	// heartbeats go every 2 ticks (multiraft's default).
	DefaultRaftTickInterval  = 50 * time.Millisecond
	DefaultReconcileInterval = time.Second
	DefaultStatusInterval    = 500 * time.Millisecond
	DefaultSweepInterval     = 5 * time.Second
	// DefaultGCPercent: see Config.GCPercent.
	DefaultGCPercent = 200
	// DefaultGCMinHeapMiB: see Config.GCMinHeapMiB.
	DefaultGCMinHeapMiB = 256
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
	// HTTPListen, if set, serves /metrics, /healthz and /readyz over HTTP
	// (port 0 picks a free port); its address is registered as the
	// member's http_addr.
	HTTPListen string
	// DataDir holds raft.db (every hosted shard replica's log and state).
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

	// RaftTickInterval is the Raft logical clock period: heartbeats every
	// 2 ticks, elections after 10-20 ticks without a leader.
	RaftTickInterval time.Duration
	// ReadIndexOnly makes every linearizable read confirm the shard
	// leader's leadership with a heartbeat round to a quorum (ReadIndex),
	// never with the leader's lease (multiraft/lease.go). Leases assume
	// that clocks on different machines run at rates within 10% of each
	// other and do not stop while a host is suspended, and they are used
	// only while every store advertises the same Raft timing
	// (uniformTiming); they halve a read's CPU.
	ReadIndexOnly bool
	// GCPercent is the Go GC target of the store process (as GOGC),
	// applied by the `erlmcp store` command, not by Start (it is
	// process-wide). A write allocates tens of KiB of short-lived garbage
	// (gRPC, Raft messages, bbolt pages) against a live heap of tens of
	// MiB, so at the runtime's default of 100 the store collected about
	// four times as often per write as etcd and spent a sixth of its CPU
	// in GC; 200 halves the collections for about twice the peak heap
	// (bound it with GOMEMLIMIT, as the Kubernetes manifests do).
	GCPercent int
	// GCMinHeapMiB is the floor of the store process's GC heap goal in
	// MiB (internal/gcfloor), applied with GCPercent: GOGC is raised after
	// each collection while the live heap is small, so a lightly loaded
	// node collects every few seconds instead of several times a second
	// (each collection stalls calls for milliseconds: the p99 of reads at
	// a steady load halved with the floor). 0 turns the floor off. It
	// costs up to that much heap beyond the live data; GOMEMLIMIT still
	// bounds the heap.
	GCMinHeapMiB int
	// ReconcileInterval is how often the node re-checks its replicas
	// against the shard map (it also does on every map change).
	ReconcileInterval time.Duration
	// StatusInterval is how often a shard leader may rewrite the shard's
	// status keys in etcd.
	StatusInterval time.Duration
	// SweepInterval is how often a shard leader looks for idle-expired
	// sessions and deletes them through the log.
	SweepInterval time.Duration

	// wrapTransport, if set, wraps the Raft transport (tests inject
	// partitions there).
	wrapTransport func(multiraft.Transport) multiraft.Transport

	// manualMembership, if set, keeps the reconcile pass from changing
	// Raft membership: only the admin RPCs do (tests of those RPCs).
	manualMembership bool

	// leaseHook, if set, is told when the node stops (false) and starts
	// again (true) serving for its membership lease (tests).
	leaseHook func(held bool)

	// keepAlive, if set, replaces etcdclient.KeepAlive for the node's own
	// renewals (tests: a keepalive that gives up while the lease lives).
	keepAlive func(context.Context, *clientv3.Client, clientv3.LeaseID) <-chan etcdclient.Renewal
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
		RaftTickInterval:     DefaultRaftTickInterval,
		ReconcileInterval:    DefaultReconcileInterval,
		StatusInterval:       DefaultStatusInterval,
		SweepInterval:        DefaultSweepInterval,
		GCPercent:            DefaultGCPercent,
		GCMinHeapMiB:         DefaultGCMinHeapMiB,
	}
}

// Validate reports the first setting that cannot work, saying what to change.
func (c Config) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if _, err := gcfloor.FromMiB(c.GCPercent, c.GCMinHeapMiB); err != nil {
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
	if c.HTTPListen != "" {
		_, port, err := net.SplitHostPort(c.HTTPListen)
		if err != nil {
			return fmt.Errorf("--http-listen %q: want host:port, e.g. 127.0.0.1:9190 (%v)", c.HTTPListen, err)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			return fmt.Errorf("--http-listen %q: port %q must be a number 0..65535", c.HTTPListen, port)
		}
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
	if c.RaftTickInterval < time.Millisecond || c.RaftTickInterval > 10*time.Second {
		return fmt.Errorf("--raft-tick %v: want 1ms..10s", c.RaftTickInterval)
	}
	if c.ReconcileInterval <= 0 || c.StatusInterval <= 0 || c.SweepInterval <= 0 {
		return errors.New("reconcile, status and sweep intervals must be positive")
	}
	if c.MaxStreamsPerSession < 1 || c.MaxStreamsPerSession > MaxMaxStreams {
		return fmt.Errorf("--max-streams-per-session %d: want 1..%d", c.MaxStreamsPerSession, MaxMaxStreams)
	}
	return nil
}
