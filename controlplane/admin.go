package controlplane

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// LeaderInfo is the election value and the answer of GET /v1/leader.
type LeaderInfo struct {
	ID        string `json:"id"`
	AdminAddr string `json:"admin_addr"`
}

// ClusterView is the answer of GET /v1/cluster. Config is null while no
// control plane has created the cluster.
type ClusterView struct {
	Config *clusterstate.ClusterConfig `json:"config"`
	Shards []clusterstate.Shard        `json:"shards"`
}

// ErrorBody is every admin API error's JSON body.
type ErrorBody struct {
	Error string `json:"error"`
}

// errNoLeader means no instance holds the election.
var errNoLeader = errors.New("no control-plane leader is elected right now")

// etcdTimeout bounds one admin request's etcd reads.
const etcdTimeout = 5 * time.Second

func (cp *ControlPlane) handler() http.Handler {
	type route struct {
		auth bool
		h    http.HandlerFunc
	}
	routes := map[string]route{
		"/healthz":    {false, cp.handleHealthz},
		"/metrics":    {false, promhttp.HandlerFor(cp.metrics.reg, promhttp.HandlerOpts{}).ServeHTTP},
		"/v1/members": {true, cp.handleMembers},
		"/v1/leader":  {true, cp.handleLeader},
		"/v1/cluster": {true, cp.handleCluster},
		"/v1/shards":  {true, cp.handleShards},
		"/v1/regions": {true, cp.handleRegions},
		"/v1/history": {true, cp.handleHistory},
		"/v1/ops":     {true, cp.handleOps},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/autoheal" || strings.HasPrefix(r.URL.Path, "/v1/autoheal/") {
			cp.handleAutohealAction(w, r)
			return
		}
		if p := r.URL.Path; p == "/v1/placement" || strings.HasPrefix(p, "/v1/placement/") || strings.HasPrefix(p, "/v1/nodes/") || strings.HasPrefix(p, "/v1/shards/") {
			cp.handleAdminAction(w, r) // admin_actions.go
			return
		}
		if rest, ok := strings.CutPrefix(r.URL.Path, "/v1/regions/"); ok {
			name, action, _ := strings.Cut(rest, "/")
			if action != "failover" && action != "failback" || name == "" {
				writeError(w, http.StatusNotFound, "no such endpoint "+r.URL.Path+": want POST /v1/regions/<name>/failover or /v1/regions/<name>/failback")
				return
			}
			if !cp.postAuthorized(w, r) {
				return
			}
			cp.handleRegionAction(w, r, name, action)
			return
		}
		rt, ok := routes[r.URL.Path]
		if !ok {
			writeError(w, http.StatusNotFound, "no such endpoint "+r.URL.Path+": the admin API has GET /v1/members, /v1/leader, /v1/cluster, /v1/shards, /v1/regions, /v1/history, /v1/ops, POST /v1/regions/<name>/failover|failback, GET /v1/placement, POST /v1/placement/pause|resume, /v1/nodes/<store>/drain|undrain, /v1/shards/<n>/leader?store=, /healthz, /metrics")
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, r.Method+" "+r.URL.Path+": only GET is allowed")
			return
		}
		if rt.auth && !cp.authorized(w, r) {
			return
		}
		rt.h(w, r)
	})
}

// authorized checks the bearer token in constant time and answers 401 when
// it is missing or wrong.
func (cp *ControlPlane) authorized(w http.ResponseWriter, r *http.Request) bool {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="erlmcp-admin"`)
		writeError(w, http.StatusUnauthorized, "missing bearer token: send the header \"Authorization: Bearer <admin token>\"")
		return false
	}
	if subtle.ConstantTimeCompare([]byte(strings.TrimSpace(tok)), []byte(cp.token)) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="erlmcp-admin", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, "bearer token rejected: it is not this cluster's admin token")
		return false
	}
	return true
}

func (cp *ControlPlane) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "id": cp.cfg.Common.ID, "leader": cp.IsLeader()})
}

func (cp *ControlPlane) handleMembers(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), etcdTimeout)
	defer cancel()
	ms, err := membership.List(ctx, cp.cli, cp.cfg.Common.Prefix, "")
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "cannot read membership from etcd: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, cp.prober.statuses(r.Context(), ms))
}

func (cp *ControlPlane) handleLeader(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), etcdTimeout)
	defer cancel()
	li, _, err := cp.currentLeader(ctx)
	switch {
	case errors.Is(err, errNoLeader):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "cannot read the election from etcd: "+err.Error())
	default:
		writeJSON(w, http.StatusOK, li)
	}
}

func (cp *ControlPlane) handleCluster(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), etcdTimeout)
	defer cancel()
	prefix := cp.cfg.Common.Prefix
	// One Txn reads both at the same revision.
	resp, err := cp.cli.Txn(ctx).Then(
		clientv3.OpGet(clusterstate.ConfigKey(prefix)),
		clientv3.OpGet(clusterstate.ShardsPrefix(prefix), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "cannot read the cluster from etcd: "+err.Error())
		return
	}
	view := ClusterView{Shards: []clusterstate.Shard{}}
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
		var cc clusterstate.ClusterConfig
		if err := json.Unmarshal(kvs[0].Value, &cc); err != nil {
			writeError(w, http.StatusInternalServerError, clusterstate.ConfigKey(prefix)+" in etcd is not a cluster config: "+err.Error())
			return
		}
		view.Config = &cc
	}
	shardKVs := map[string][]byte{}
	maxShard := -1
	for _, kv := range resp.Responses[1].GetResponseRange().GetKvs() {
		shardKVs[string(kv.Key)] = kv.Value
		if n, err := clusterstate.ParseShardKey(prefix, string(kv.Key)); err == nil {
			maxShard = max(maxShard, n)
		}
	}
	count := maxShard + 1
	if view.Config != nil {
		count = view.Config.ShardCount
	}
	if count > 0 && count <= clusterstate.MaxShardCount {
		view.Shards = clusterstate.DecodeShards(prefix, count, shardKVs)
		for i := range view.Shards {
			if view.Shards[i].Replicas == nil {
				view.Shards[i].Replicas = []clusterstate.Replica{}
			}
		}
	}
	writeJSON(w, http.StatusOK, view)
}

// currentLeader reads the election: the key with the lowest create
// revision under the election prefix holds.
func (cp *ControlPlane) currentLeader(ctx context.Context) (LeaderInfo, int64, error) {
	var li LeaderInfo
	resp, err := cp.cli.Get(ctx, cp.electionPrefix()+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return li, 0, err
	}
	if len(resp.Kvs) == 0 {
		return li, 0, errNoLeader
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &li); err != nil {
		return li, 0, errors.New("the election key holds a value that is not a leader record: " + err.Error())
	}
	return li, resp.Kvs[0].CreateRevision, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, ErrorBody{Error: msg})
}
