// Package clusterstate holds the JSON documents the roles share through
// etcd: the cluster's fixed settings (<prefix>config/cluster) and the shard
// map (<prefix>shards/<nnn>), and the hash that maps a session id to its
// shard.
package clusterstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Defaults for a new cluster.
const (
	DefaultShardCount        = 64
	DefaultReplicationFactor = 3
	MaxShardCount            = 4096
)

// ClusterConfig is fixed when the cluster is created.
type ClusterConfig struct {
	ShardCount        int       `json:"shard_count"`
	ReplicationFactor int       `json:"replication_factor"`
	CreatedAt         time.Time `json:"created_at"`
}

// Validate says what is wrong with a cluster config.
func (c ClusterConfig) Validate() error {
	if c.ShardCount < 1 || c.ShardCount > MaxShardCount {
		return fmt.Errorf("shard count %d: want 1..%d", c.ShardCount, MaxShardCount)
	}
	if c.ReplicationFactor < 1 || c.ReplicationFactor > 7 {
		return fmt.Errorf("replication factor %d: want 1..7", c.ReplicationFactor)
	}
	return nil
}

// ConfigKey is the cluster config's key.
func ConfigKey(prefix string) string { return prefix + "config/cluster" }

// ShardsPrefix is the prefix of all shard map entries.
func ShardsPrefix(prefix string) string { return prefix + "shards/" }

// ShardKey is shard n's key; the number is zero-padded to three digits so
// etcdctl lists shards in order.
func ShardKey(prefix string, shard int) string {
	return fmt.Sprintf("%sshards/%03d", prefix, shard)
}

// ParseShardKey returns the shard number of a shard key.
func ParseShardKey(prefix, key string) (int, error) {
	s, ok := strings.CutPrefix(key, ShardsPrefix(prefix))
	if !ok {
		return 0, fmt.Errorf("key %q is not under %s", key, ShardsPrefix(prefix))
	}
	return strconv.Atoi(s)
}

// ShardOf maps a session id to its shard: FNV-1a 32-bit modulo shardCount.
// Every client and node must agree on this, so it never changes.
func ShardOf(sessionID string, shardCount int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(sessionID))
	return int(h.Sum32() % uint32(shardCount))
}

// Replica roles.
const (
	RoleVoter   = "voter"
	RoleLearner = "learner"
)

// Replica is one store node's copy of a shard.
type Replica struct {
	Store string `json:"store"`
	Role  string `json:"role"`
	// ID is the replica's Raft id when the shard is Raft-replicated: a
	// fresh id for each incarnation, so a replica that is removed and added
	// again never reuses an old id (0 for a single-replica shard).
	ID uint64 `json:"id,omitempty"`
}

// Shard is one shard map entry.
type Shard struct {
	Shard    int       `json:"shard"`
	Replicas []Replica `json:"replicas"`
	// Leader is the store last known to lead the shard ("" if unknown).
	Leader string `json:"leader,omitempty"`
	// ConfEpoch grows with every change of Replicas.
	ConfEpoch uint64 `json:"conf_epoch"`
	// TargetLeader is the store the control plane prefers to lead the
	// shard (one in the active region); "" means no preference. The
	// shard's leader hands leadership to it once it is an up-to-date
	// voter. (controlplane.ShardDoc writes the same JSON field.)
	TargetLeader string `json:"target_leader,omitempty"`
}

// Hosts reports whether store holds a replica of the shard.
func (s Shard) Hosts(store string) bool {
	for _, r := range s.Replicas {
		if r.Store == store {
			return true
		}
	}
	return false
}

// RaftStoreID is the 32-bit id a store node uses in Raft: FNV-1a of its
// member id, never 0. Every node and the control plane derive it the same
// way, so no registry of numbers is needed; placement refuses two stores
// whose ids collide.
func RaftStoreID(storeID string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(storeID))
	if v := h.Sum32(); v != 0 {
		return v
	}
	return 1
}

// ReplicaID is the Raft id of the replica that store gains in a shard at
// conf epoch epoch: the epoch (the incarnation) in the high 32 bits and the
// store's Raft id in the low 32 bits. A shard's conf epoch grows with every
// change, so a store that leaves and rejoins a shard gets a new id.
func ReplicaID(storeID string, epoch uint64) uint64 {
	return uint64(uint32(epoch))<<32 | uint64(RaftStoreID(storeID))
}

// Preferred is the store a request for the shard should go to: its leader
// when the leader is known and still a replica, else its first voter ("" if
// it has none).
func (s Shard) Preferred() string {
	if s.Leader != "" && s.Hosts(s.Leader) {
		return s.Leader
	}
	for _, r := range s.Replicas {
		if r.Role == RoleVoter || r.Role == "" {
			return r.Store
		}
	}
	return ""
}

// ErrNoClusterConfig means the cluster has not been created yet: no control
// plane has written config/cluster.
var ErrNoClusterConfig = errors.New("cluster config not found in etcd: no control plane has created the cluster yet")

// GetConfig reads the cluster config.
func GetConfig(ctx context.Context, cli *clientv3.Client, prefix string) (ClusterConfig, error) {
	var c ClusterConfig
	resp, err := cli.Get(ctx, ConfigKey(prefix))
	if err != nil {
		return c, fmt.Errorf("read %s: %w", ConfigKey(prefix), err)
	}
	if len(resp.Kvs) == 0 {
		return c, ErrNoClusterConfig
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &c); err != nil {
		return c, fmt.Errorf("decode %s: %w", ConfigKey(prefix), err)
	}
	return c, c.Validate()
}

// DecodeShards parses the shard map entries in kvs (as from etcdwatch)
// into a slice indexed by shard number; entries that do not parse are
// skipped and their slots left with no replicas.
func DecodeShards(prefix string, shardCount int, kvs map[string][]byte) []Shard {
	out := make([]Shard, shardCount)
	for i := range out {
		out[i].Shard = i
	}
	for k, v := range kvs {
		n, err := ParseShardKey(prefix, k)
		if err != nil || n < 0 || n >= shardCount {
			continue
		}
		var s Shard
		if json.Unmarshal(v, &s) == nil {
			s.Shard = n
			out[n] = s
		}
	}
	return out
}
