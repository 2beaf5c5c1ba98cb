// Package etcdclient builds the etcd clients every erlmcp role uses, with
// the settings that keep a role responsive when one etcd member stops
// answering without closing its connections (SIGSTOP, a frozen VM, a
// dropped network path).
//
// Two layers do it. gRPC keepalive closes a connection whose member stopped
// answering after KeepAliveTime+KeepAliveTimeout; without it such a
// connection lives until TCP gives up (minutes), and every stream on it
// (watches, lease keepalives, elections) stalls although the other members
// serve. gRPC will not ping more often than every 10 s, so that layer alone
// takes 12 s. The faster layer is per-request timeouts: the client balances
// requests round robin over its members, so a request that timed out on
// the frozen member is retried on the next one. KeepAlive keeps a lease
// alive that way instead of on one long-lived stream.
package etcdclient

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Defaults.
const (
	DefaultDialTimeout = 5 * time.Second
	// DefaultConnectTimeout is how long New waits for a first answer: long
	// enough for the processes of `erlmcp up` (or a Kubernetes rollout),
	// started together with etcd, to find it serving without a restart.
	DefaultConnectTimeout = 30 * time.Second
	// DefaultKeepAliveTime is gRPC's floor: it raises anything lower to
	// 10 s (and etcd answers pings more often than every 5 s with GOAWAY).
	DefaultKeepAliveTime    = 10 * time.Second
	DefaultKeepAliveTimeout = 2 * time.Second
	// DefaultAutoSyncInterval refreshes the member list, so a client given
	// one endpoint still learns the others and can fail over to them.
	DefaultAutoSyncInterval = 30 * time.Second
	// DefaultRequestTimeout bounds one etcd request made on behalf of a
	// background loop (lease grant, keepalive-once, revoke); see
	// RequestTimeout.
	DefaultRequestTimeout = 3 * time.Second

	minKeepAliveTime = 10 * time.Second
)

// Config of an etcd client.
type Config struct {
	Endpoints   []string
	DialTimeout time.Duration
	// ConnectTimeout bounds New's wait for a first answer from any member
	// (each try bounded by DialTimeout).
	ConnectTimeout time.Duration
	// KeepAliveTime is how long a connection may be idle before the client
	// pings the member; KeepAliveTimeout how long it waits for the answer
	// before closing the connection and using another member.
	KeepAliveTime    time.Duration
	KeepAliveTimeout time.Duration
	// AutoSyncInterval: how often the member list is refreshed (0: never).
	AutoSyncInterval time.Duration
	// Logger receives the etcd client's own logs (nil: discarded).
	Logger *zap.Logger
}

// DefaultConfig returns the defaults for endpoints.
func DefaultConfig(endpoints ...string) Config {
	return Config{
		Endpoints:        endpoints,
		DialTimeout:      DefaultDialTimeout,
		ConnectTimeout:   DefaultConnectTimeout,
		KeepAliveTime:    DefaultKeepAliveTime,
		KeepAliveTimeout: DefaultKeepAliveTimeout,
		AutoSyncInterval: DefaultAutoSyncInterval,
	}
}

// Validate says what is wrong with c.
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("etcd client: no endpoints (set --etcd-endpoints or ERLMCP_ETCD_ENDPOINTS)")
	}
	for _, e := range c.Endpoints {
		if strings.TrimSpace(e) == "" {
			return fmt.Errorf("etcd client: empty endpoint in %q", c.Endpoints)
		}
	}
	if c.DialTimeout <= 0 || c.ConnectTimeout <= 0 {
		return fmt.Errorf("etcd client: dial timeout %s and connect timeout %s: both must be positive", c.DialTimeout, c.ConnectTimeout)
	}
	// gRPC silently raises a shorter ping interval to 10 s; refuse it
	// rather than let the configuration promise what will not happen.
	if c.KeepAliveTime < minKeepAliveTime || c.KeepAliveTimeout <= 0 {
		return fmt.Errorf("etcd client: keepalive time %s (at least %s, gRPC's floor) and timeout %s (positive)", c.KeepAliveTime, minKeepAliveTime, c.KeepAliveTimeout)
	}
	if c.AutoSyncInterval < 0 {
		return fmt.Errorf("etcd client: auto-sync interval %s: must not be negative", c.AutoSyncInterval)
	}
	return nil
}

// New connects to etcd. It fails, naming the endpoints, when no member
// answers within ConnectTimeout, so a misconfigured process stops at start
// with a clear error instead of hanging on its first request.
func New(ctx context.Context, cfg Config) (*clientv3.Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    cfg.KeepAliveTime,
		DialKeepAliveTimeout: cfg.KeepAliveTimeout,
		// No PermitWithoutStream: etcd's server does not permit pings on a
		// connection without streams and would answer them with GOAWAY.
		AutoSyncInterval: cfg.AutoSyncInterval,
		Logger:           log,
	})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd at %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	// clientv3.New dials lazily; a serializable read (answered by any
	// member, no quorum needed) proves a member answers. Members starting
	// at the same time as this process get ConnectTimeout to do so.
	deadline := time.Now().Add(cfg.ConnectTimeout)
	for {
		pctx, cancel := context.WithTimeout(ctx, min(cfg.DialTimeout, time.Until(deadline)))
		_, err := cli.Get(pctx, "/", clientv3.WithSerializable(), clientv3.WithCountOnly())
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil || time.Until(deadline) <= 0 {
			_ = cli.Close()
			return nil, fmt.Errorf("connect to etcd at %s: no member answered within %s: %w", strings.Join(cfg.Endpoints, ","), cfg.ConnectTimeout, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	return cli, nil
}

// RequestTimeout returns ctx bounded by DefaultRequestTimeout: for one
// request of a background loop, so a member that stopped answering fails
// the request (and the loop retries, on another member) instead of
// blocking the loop.
func RequestTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, DefaultRequestTimeout)
}

// WithLogger returns c with the etcd client's logs going to l.
func (c Config) WithLogger(l *zap.Logger) Config {
	c.Logger = l
	return c
}
