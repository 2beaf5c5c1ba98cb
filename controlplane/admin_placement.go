package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ShardView is one entry of GET /v1/shards.
type ShardView struct {
	Shard        int           `json:"shard"`
	Leader       string        `json:"leader"`
	TargetLeader string        `json:"target_leader,omitempty"`
	ConfEpoch    uint64        `json:"conf_epoch"`
	Replicas     []ReplicaView `json:"replicas"`
}

// ReplicaView is one replica in ShardView. Lag is null when the store has
// not reported the replica (status/shards/<nnn>/<store>).
type ReplicaView struct {
	Store string `json:"store"`
	Role  string `json:"role"`
	Lag   *int64 `json:"lag"`
}

func (cp *ControlPlane) handleShards(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), etcdTimeout)
	defer cancel()
	prefix := cp.cfg.Common.Prefix
	resp, err := cp.cli.Txn(ctx).Then(
		clientv3.OpGet(clusterstate.ConfigKey(prefix)),
		clientv3.OpGet(clusterstate.ShardsPrefix(prefix), clientv3.WithPrefix()),
		clientv3.OpGet(StatusPrefix(prefix), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "cannot read the shard map from etcd: "+err.Error())
		return
	}
	count := -1
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
		var cc clusterstate.ClusterConfig
		if json.Unmarshal(kvs[0].Value, &cc) == nil && cc.Validate() == nil {
			count = cc.ShardCount
		}
	}
	shardKVs := kvMap(resp.Responses[1].GetResponseRange().GetKvs())
	statusKVs := kvMap(resp.Responses[2].GetResponseRange().GetKvs())
	maxShard := -1
	for key := range shardKVs {
		if n, err := clusterstate.ParseShardKey(prefix, key); err == nil && n < clusterstate.MaxShardCount {
			maxShard = max(maxShard, n)
		}
	}
	if count < 0 {
		count = maxShard + 1
	}
	statuses := decodeStatuses(prefix, statusKVs)
	out := []ShardView{}
	for _, d := range decodeShardDocs(prefix, count, shardKVs) {
		s := shardState(d, statuses[d.Shard.Shard])
		v := ShardView{Shard: s.Shard, Leader: s.Leader, TargetLeader: s.TargetLeader, ConfEpoch: s.ConfEpoch, Replicas: []ReplicaView{}}
		for _, rep := range s.Replicas {
			rv := ReplicaView{Store: rep.Store, Role: rep.Role}
			if rep.Reported && rep.Lag >= 0 {
				lag := rep.Lag
				rv.Lag = &lag
			}
			v.Replicas = append(v.Replicas, rv)
		}
		out = append(out, v)
	}
	writeJSON(w, http.StatusOK, out)
}

func (cp *ControlPlane) handleRegions(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), etcdTimeout)
	defer cancel()
	rr, err := cp.readRegions(ctx)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "cannot read regions from etcd: "+err.Error())
		return
	}
	out := rr.docs
	if out == nil {
		out = []RegionDoc{}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	writeJSON(w, http.StatusOK, out)
}

// handleHistory lists history entries, newest first; ?limit=N (default
// 100, at most the history limit).
func (cp *ControlPlane) handleHistory(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, "limit "+strconv.Quote(v)+": want a positive number")
			return
		}
		limit = n
	}
	ctx, cancel := context.WithTimeout(r.Context(), etcdTimeout)
	defer cancel()
	resp, err := cp.cli.Get(ctx, HistoryPrefix(cp.cfg.Common.Prefix), clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(int64(limit)))
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "cannot read history from etcd: "+err.Error())
		return
	}
	out := []HistoryEntry{}
	for _, kv := range resp.Kvs {
		var h HistoryEntry
		if json.Unmarshal(kv.Value, &h) == nil {
			out = append(out, h)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (cp *ControlPlane) handleOps(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), etcdTimeout)
	defer cancel()
	resp, err := cp.cli.Get(ctx, OpsPrefix(cp.cfg.Common.Prefix), clientv3.WithPrefix())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "cannot read operators from etcd: "+err.Error())
		return
	}
	out := []Operator{}
	for _, o := range decodeOps(kvMap(resp.Kvs)) {
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	writeJSON(w, http.StatusOK, out)
}

// handleRegionAction is POST /v1/regions/<name>/failover|failback. Only
// the leader writes: a standby answers 307 to the leader's admin URL, or
// 503 (retryable, Retry-After) while no leader is known.
func (cp *ControlPlane) handleRegionAction(w http.ResponseWriter, r *http.Request, name, action string) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(r.Context(), 2*etcdTimeout)
	defer cancel()
	rr, err := cp.readRegions(ctx)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "cannot read regions from etcd: "+err.Error())
		return
	}
	if _, ok := rr.get(name); !ok {
		names := rr.names()
		sort.Strings(names)
		writeError(w, http.StatusNotFound, fmt.Sprintf("no region %q; regions are: %s", name, strings.Join(names, ", ")))
		return
	}
	lead := cp.lead.Load()
	if lead == nil {
		li, _, err := cp.currentLeader(ctx)
		if err == nil && li.ID != cp.cfg.Common.ID && li.AdminAddr != "" {
			loc := "http://" + li.AdminAddr + r.URL.Path
			w.Header().Set("Location", loc)
			writeError(w, http.StatusTemporaryRedirect, "this instance is a standby; the leader "+li.ID+" is at "+loc)
			return
		}
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "no control-plane leader can take the request right now (leader change in progress); retry in a second")
		return
	}
	var healthy map[string]bool
	if h := cp.healthy.Load(); h != nil {
		healthy = *h
	}
	reason := "requested through the admin API"
	if q := r.URL.Query().Get("reason"); q != "" {
		reason = q
	}
	var h *HistoryEntry
	if action == "failover" {
		h, err = cp.failoverRegion(ctx, *lead, name, HistoryManualFailover, reason, start, healthy, RegionStandby)
	} else {
		h, err = cp.failbackRegion(ctx, *lead, name, reason, start, healthy)
	}
	var ce *errConflict
	switch {
	case errors.As(err, &ce):
		writeError(w, http.StatusConflict, ce.msg)
	case errors.Is(err, ErrNotLeader):
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "leadership was lost while handling the request; nothing was written; retry")
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "region "+action+" failed: "+err.Error())
	case h == nil:
		writeError(w, http.StatusConflict, "nothing to do")
	default:
		writeJSON(w, http.StatusOK, h)
	}
}
