package sessionstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"github.com/erlmcp/erlmcp/sessionstore"
	"github.com/erlmcp/erlmcp/sessionstore/client"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// env is one test's etcd with a cluster config written as the control
// plane would.
type env struct {
	t          testing.TB
	etcd       *testcluster.Etcd
	cli        *clientv3.Client
	prefix     string
	shardCount int
}

func newEnv(t testing.TB, shardCount int, writeConfig bool) *env {
	t.Helper()
	e := testcluster.StartEtcd(t)
	en := &env{t: t, etcd: e, cli: e.Client(), prefix: e.Prefix, shardCount: shardCount}
	if writeConfig {
		en.writeConfig()
	}
	return en
}

func (e *env) writeConfig() {
	e.t.Helper()
	cc := clusterstate.ClusterConfig{ShardCount: e.shardCount, ReplicationFactor: 1, CreatedAt: time.Now()}
	e.put(clusterstate.ConfigKey(e.prefix), cc)
}

func (e *env) put(key string, v any) {
	e.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.cli.Put(context.Background(), key, string(b)); err != nil {
		e.t.Fatalf("put %s: %v", key, err)
	}
}

// assign writes shard's map entry with store as its only voter.
func (e *env) assign(shard int, store string, epoch uint64) {
	e.t.Helper()
	s := clusterstate.Shard{Shard: shard, ConfEpoch: epoch}
	if store != "" {
		s.Replicas = []clusterstate.Replica{{Store: store, Role: clusterstate.RoleVoter}}
	}
	e.put(clusterstate.ShardKey(e.prefix, shard), s)
}

// spread assigns shard i to stores[i % len(stores)].
func (e *env) spread(stores ...string) {
	e.t.Helper()
	for i := 0; i < e.shardCount; i++ {
		e.assign(i, stores[i%len(stores)], 1)
	}
}

func (e *env) nodeConfig(id, dataDir string) sessionstore.Config {
	cfg := sessionstore.DefaultConfig()
	cfg.Common = config.DefaultCommon()
	cfg.Common.ID = id
	cfg.Common.EtcdEndpoints = e.etcd.Endpoint
	cfg.Common.Prefix = e.prefix
	cfg.Common.LeaseTTL = 2 * time.Second
	cfg.Listen = "127.0.0.1:0"
	cfg.HTTPListen = "127.0.0.1:0"
	cfg.DataDir = dataDir
	cfg.RaftTickInterval = 50 * time.Millisecond
	cfg.ReconcileInterval = 100 * time.Millisecond
	cfg.StatusInterval = 100 * time.Millisecond
	cfg.SweepInterval = 200 * time.Millisecond
	return cfg
}

// startNode starts a node and waits until it serves.
func (e *env) startNode(cfg sessionstore.Config) *sessionstore.Node {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := sessionstore.Start(ctx, cfg, logging.Discard().WithField("node", cfg.Common.ID))
	if err != nil {
		e.t.Fatalf("start node %s: %v", cfg.Common.ID, err)
	}
	e.t.Cleanup(func() { _ = n.Close() })
	select {
	case <-n.Ready():
	case <-ctx.Done():
		e.t.Fatalf("node %s not ready", cfg.Common.ID)
	}
	return n
}

func (e *env) client() *client.Client {
	e.t.Helper()
	c, err := client.New(context.Background(), client.Config{Etcd: e.cli, Prefix: e.prefix, RequestTimeout: time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ready(ctx); err != nil {
		e.t.Fatal(err)
	}
	return c
}

// raw dials one node directly.
func raw(t *testing.T, addr string) pb.SessionStoreServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return pb.NewSessionStoreServiceClient(cc)
}

// idInShard returns a session id that hashes to shard.
func idInShard(shard, shardCount int, tag string) string {
	for i := 0; ; i++ {
		id := fmt.Sprintf("%s-%d", tag, i)
		if clusterstate.ShardOf(id, shardCount) == shard {
			return id
		}
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}
