package client

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	"github.com/erlmcp/erlmcp/sessionstore"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestErrorMapping(t *testing.T) {
	if !errors.Is(ErrExpired, ErrNotFound) || !errors.Is(ErrExpired, ErrSessionNotFound) || !errors.Is(ErrSessionNotFound, ErrNotFound) {
		t.Fatal("ErrExpired ⊂ ErrSessionNotFound ⊂ ErrNotFound does not hold")
	}
	if errors.Is(ErrNotFound, ErrSessionNotFound) {
		t.Fatal("ErrNotFound is ErrSessionNotFound")
	}
	info := func(code codes.Code, reason string, md map[string]string) *status.Status {
		st, err := status.New(code, "msg").WithDetails(&errdetails.ErrorInfo{Reason: reason, Metadata: md})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	cases := []struct {
		st   *status.Status
		is   []error
		isnt []error
		text string
	}{
		{info(codes.NotFound, "SESSION_NOT_FOUND", nil), []error{ErrNotFound, ErrSessionNotFound}, []error{ErrExpired}, `get session "s1"`},
		{info(codes.NotFound, "SESSION_EXPIRED", nil), []error{ErrNotFound, ErrSessionNotFound, ErrExpired}, nil, "expired"},
		{info(codes.NotFound, "KEY_NOT_FOUND", nil), []error{ErrNotFound}, []error{ErrSessionNotFound, ErrExpired}, "not found"},
		{info(codes.NotFound, "TASK_NOT_FOUND", nil), []error{ErrNotFound}, []error{ErrSessionNotFound, ErrExpired}, "not found"},
		{status.New(codes.NotFound, "no info"), []error{ErrNotFound}, []error{ErrSessionNotFound}, "no info"},
		{info(codes.ResourceExhausted, "LIMIT_EXCEEDED", map[string]string{"limit": "state_keys_per_session"}), []error{ErrLimitExceeded}, []error{ErrNotFound, ErrUnavailable}, "limit exceeded"},
		{status.New(codes.AlreadyExists, "taken"), []error{ErrAlreadyExists}, []error{ErrNotFound}, "taken"},
		{info(codes.Aborted, "VERSION_CONFLICT", map[string]string{"current_version": "7"}), []error{ErrVersionConflict}, nil, "current version 7"},
		{status.New(codes.InvalidArgument, "data is 9 bytes; the limit is 8 bytes"), nil, []error{ErrNotFound, ErrUnavailable}, "limit is 8 bytes"},
	}
	for _, tc := range cases {
		err := mapStatus("get", "s1", tc.st)
		for _, want := range tc.is {
			if !errors.Is(err, want) {
				t.Errorf("%v: not %v", err, want)
			}
		}
		for _, not := range tc.isnt {
			if errors.Is(err, not) {
				t.Errorf("%v: is %v", err, not)
			}
		}
		if !strings.Contains(err.Error(), tc.text) || !strings.Contains(err.Error(), "s1") {
			t.Errorf("%v: want %q and the session id in the message", err, tc.text)
		}
	}
}

// TestFollowsShardHint: a client whose shard map is stale (it still thinks
// store a hosts the shard) is redirected by a's ShardHint to b.
func TestFollowsShardHint(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	put := func(k string, v any) {
		b, _ := json.Marshal(v)
		if _, err := cli.Put(ctx, k, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	cc := clusterstate.ClusterConfig{ShardCount: 1, ReplicationFactor: 1}
	put(clusterstate.ConfigKey(e.Prefix), cc)
	put(clusterstate.ShardKey(e.Prefix, 0), clusterstate.Shard{Replicas: []clusterstate.Replica{{Store: "b", Role: clusterstate.RoleVoter}}})
	start := func(id string) *sessionstore.Node {
		cfg := sessionstore.DefaultConfig()
		cfg.Common = config.DefaultCommon()
		cfg.Common.ID, cfg.Common.EtcdEndpoints, cfg.Common.Prefix = id, e.Endpoint, e.Prefix
		cfg.Common.LeaseTTL = 2 * time.Second
		cfg.Listen, cfg.DataDir = "127.0.0.1:0", t.TempDir()
		n, err := sessionstore.Start(ctx, cfg, logging.Discard())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		<-n.Ready()
		return n
	}
	a, b := start("a"), start("b")

	// A client frozen on a stale view: no watches, shard 0 on a.
	c := &Client{
		cfg:     Config{Etcd: cli, Prefix: e.Prefix, RequestTimeout: time.Second, Log: logging.Discard()},
		cancel:  func() {},
		changed: make(chan struct{}),
		conns:   map[string]*grpc.ClientConn{},
		cluster: &cc,
		shards:  []clusterstate.Shard{{Replicas: []clusterstate.Replica{{Store: "a", Role: clusterstate.RoleVoter}}}},
		stores: map[string]membership.Member{
			"a": {ID: "a", Addr: a.Addr()},
			"b": {ID: "b", Addr: b.Addr()},
		},
	}
	defer c.Close()
	if _, err := c.Create(ctx, "hinted", []byte("x"), 0); err != nil {
		t.Fatalf("create with a stale map: %v", err)
	}
	s, err := c.Get(ctx, "hinted", false)
	if err != nil || string(s.Data) != "x" {
		t.Fatalf("get with a stale map: %+v, %v", s, err)
	}
	if err := c.Delete(ctx, "hinted"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "hinted"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}

	// When nobody answers before the deadline the error says why.
	c.stores = map[string]membership.Member{"a": {ID: "a", Addr: "127.0.0.1:1"}}
	short, cancel2 := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel2()
	_, err = c.Get(short, "hinted", false)
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `"hinted"`) {
		t.Fatalf("unreachable store: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	etcd := &clientv3.Client{} // only checked for nil
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "Config.Etcd is nil"},
		{Config{Etcd: etcd, Prefix: "erlmcp"}, "must start and end with '/'"},
		{Config{Etcd: etcd, AttemptTimeout: -time.Second}, "attempt timeout"},
		{Config{Etcd: etcd, RequestTimeout: -time.Second}, "request timeout"},
		{Config{Etcd: etcd, RetryBudget: -time.Second}, "retry budget"},
	} {
		tc.cfg.setDefaults()
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error about %q", tc.cfg, err, tc.want)
		}
	}
	cfg := Config{Etcd: etcd}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if cfg.HedgeDelay != DefaultHedgeDelay || cfg.AttemptTimeout != DefaultAttemptTimeout || cfg.RequestTimeout != DefaultRequestTimeout || cfg.Prefix != DefaultPrefix || cfg.RetryBudget != DefaultRetryBudget {
		t.Fatalf("defaults not applied: %+v", cfg)
	}
	off := Config{Etcd: etcd, HedgeDelay: -1}
	off.setDefaults()
	if off.HedgeDelay >= 0 {
		t.Fatalf("a negative HedgeDelay (hedging off) became %s", off.HedgeDelay)
	}
}
