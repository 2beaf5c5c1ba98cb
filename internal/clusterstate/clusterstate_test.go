package clusterstate_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/testcluster"
)

func TestShardOfIsStableAndSpread(t *testing.T) {
	// Pinned values: every client and node in every language must agree,
	// so a change here breaks existing clusters.
	if got := clusterstate.ShardOf("abc", 64); got != clusterstate.ShardOf("abc", 64) || got != 0x1a47e90b%64 {
		t.Fatalf("ShardOf(abc) = %d, want FNV-1a32 %% 64 = %d", got, 0x1a47e90b%64)
	}
	seen := map[int]int{}
	for i := range 6400 {
		seen[clusterstate.ShardOf(string(rune('a'+i%26))+time.Duration(i).String(), 64)]++
	}
	if len(seen) != 64 {
		t.Fatalf("6400 ids hit %d of 64 shards", len(seen))
	}
}

func TestKeys(t *testing.T) {
	if k := clusterstate.ShardKey("/erlmcp/", 7); k != "/erlmcp/shards/007" {
		t.Fatalf("ShardKey = %q", k)
	}
	n, err := clusterstate.ParseShardKey("/erlmcp/", "/erlmcp/shards/042")
	if err != nil || n != 42 {
		t.Fatalf("ParseShardKey = %d, %v", n, err)
	}
	if _, err := clusterstate.ParseShardKey("/erlmcp/", "/other/shards/1"); err == nil {
		t.Fatal("foreign key parsed")
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []clusterstate.ClusterConfig{{ShardCount: 0, ReplicationFactor: 3}, {ShardCount: 64, ReplicationFactor: 0}, {ShardCount: 5000, ReplicationFactor: 3}} {
		if c.Validate() == nil {
			t.Errorf("%+v validated", c)
		}
	}
	if err := (clusterstate.ClusterConfig{ShardCount: 64, ReplicationFactor: 3}).Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestGetConfigAndDecodeShards(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx := context.Background()
	if _, err := clusterstate.GetConfig(ctx, cli, e.Prefix); !errors.Is(err, clusterstate.ErrNoClusterConfig) {
		t.Fatalf("missing config: err = %v", err)
	}
	v, _ := json.Marshal(clusterstate.ClusterConfig{ShardCount: 4, ReplicationFactor: 3, CreatedAt: time.Now()})
	if _, err := cli.Put(ctx, clusterstate.ConfigKey(e.Prefix), string(v)); err != nil {
		t.Fatal(err)
	}
	c, err := clusterstate.GetConfig(ctx, cli, e.Prefix)
	if err != nil || c.ShardCount != 4 {
		t.Fatalf("GetConfig = %+v, %v", c, err)
	}
	s1, _ := json.Marshal(clusterstate.Shard{Replicas: []clusterstate.Replica{{Store: "s1", Role: clusterstate.RoleVoter}}, ConfEpoch: 1})
	shards := clusterstate.DecodeShards(e.Prefix, 4, map[string][]byte{
		clusterstate.ShardKey(e.Prefix, 1): s1,
		clusterstate.ShardKey(e.Prefix, 2): []byte("garbage"),
		clusterstate.ShardKey(e.Prefix, 9): s1, // out of range
	})
	if len(shards) != 4 || !shards[1].Hosts("s1") || shards[1].Shard != 1 || shards[2].Hosts("s1") || len(shards[0].Replicas) != 0 {
		t.Fatalf("DecodeShards = %+v", shards)
	}
}

func TestPreferred(t *testing.T) {
	v := func(s string) clusterstate.Replica {
		return clusterstate.Replica{Store: s, Role: clusterstate.RoleVoter}
	}
	l := func(s string) clusterstate.Replica {
		return clusterstate.Replica{Store: s, Role: clusterstate.RoleLearner}
	}
	for _, tc := range []struct {
		shard clusterstate.Shard
		want  string
	}{
		{clusterstate.Shard{}, ""},
		{clusterstate.Shard{Replicas: []clusterstate.Replica{l("a"), v("b"), v("c")}}, "b"},
		{clusterstate.Shard{Replicas: []clusterstate.Replica{v("a"), v("b")}, Leader: "b"}, "b"},
		{clusterstate.Shard{Replicas: []clusterstate.Replica{v("a"), v("b")}, Leader: "gone"}, "a"},
		{clusterstate.Shard{Replicas: []clusterstate.Replica{{Store: "x"}}}, "x"},
		{clusterstate.Shard{Replicas: []clusterstate.Replica{l("a")}}, ""},
	} {
		if got := tc.shard.Preferred(); got != tc.want {
			t.Errorf("%+v: Preferred = %q, want %q", tc.shard, got, tc.want)
		}
	}
}

func TestRaftIDs(t *testing.T) {
	a, b := clusterstate.RaftStoreID("store-1"), clusterstate.RaftStoreID("store-2")
	if a == 0 || b == 0 || a == b || a != clusterstate.RaftStoreID("store-1") {
		t.Fatalf("RaftStoreID: %d %d", a, b)
	}
	r1, r2 := clusterstate.ReplicaID("store-1", 1), clusterstate.ReplicaID("store-1", 7)
	if r1 == r2 || uint32(r1) != a || r1>>32 != 1 || r2>>32 != 7 {
		t.Fatalf("ReplicaID: %x %x", r1, r2)
	}
}
