package controlplane

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
)

// Keys the control plane owns besides config/cluster and shards/ (see
// internal/clusterstate), all under the cluster prefix and all JSON:
//
//	ops/<id>                      Operator (placement operator in flight)
//	status/shards/<nnn>/<store>   ReplicaStatus (written by store nodes)
//	regions/<name>                RegionDoc
//	history/<ts>-<id>             HistoryEntry (newest HistoryLimit kept)

// OpsPrefix is where in-flight operators live.
func OpsPrefix(prefix string) string { return prefix + "ops/" }

// OpKey is operator id's key.
func OpKey(prefix, id string) string { return OpsPrefix(prefix) + id }

// StatusPrefix is where store nodes report replica progress.
func StatusPrefix(prefix string) string { return prefix + "status/shards/" }

// StatusKey is the key under which store reports its replica of shard.
func StatusKey(prefix string, shard int, store string) string {
	return fmt.Sprintf("%s%03d/%s", StatusPrefix(prefix), shard, store)
}

// ParseStatusKey returns the shard and store of a status key.
func ParseStatusKey(prefix, key string) (int, string, bool) {
	rest, ok := strings.CutPrefix(key, StatusPrefix(prefix))
	if !ok {
		return 0, "", false
	}
	num, store, ok := strings.Cut(rest, "/")
	n, err := strconv.Atoi(num)
	if !ok || err != nil || store == "" {
		return 0, "", false
	}
	return n, store, true
}

// RegionsPrefix is where regions are described.
func RegionsPrefix(prefix string) string { return prefix + "regions/" }

// RegionKey is region name's key.
func RegionKey(prefix, name string) string { return RegionsPrefix(prefix) + name }

// HistoryPrefix is where history entries live.
func HistoryPrefix(prefix string) string { return prefix + "history/" }

// historyTimeFormat sorts lexically in time order (fixed width, UTC).
const historyTimeFormat = "20060102T150405.000000000Z"

// HistoryKey is the key of an entry that started at start.
func HistoryKey(prefix string, start time.Time, id string) string {
	return HistoryPrefix(prefix) + start.UTC().Format(historyTimeFormat) + "-" + id
}

// ShardDoc is the shard map entry as the control plane writes it in raft
// mode: clusterstate.Shard plus the preferred leader.
//
// target_leader names the store that should lead the shard: the shard's
// current Raft leader transfers leadership to it once it is a caught-up
// voter (and stops trying if it is not a voter). Empty means no preference.
type ShardDoc struct {
	clusterstate.Shard
	TargetLeader string `json:"target_leader,omitempty"`
}
