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
	"github.com/erlmcp/erlmcp/internal/membership"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Operator actions on placement, kept in etcd under admin/ so that they
// survive a leader change and `etcdctl get --prefix <prefix>admin/` shows
// them:
//
//	admin/placement      PlacementState: placement paused by an operator
//	admin/drain/<store>  DrainDoc: a store node whose replicas must move off

// AdminPrefix is where operator actions live.
func AdminPrefix(prefix string) string { return prefix + "admin/" }

// PlacementKey holds the operator's pause of placement.
func PlacementKey(prefix string) string { return AdminPrefix(prefix) + "placement" }

// DrainPrefix holds the drained store nodes.
func DrainPrefix(prefix string) string { return AdminPrefix(prefix) + "drain/" }

// DrainKey is store id's drain record.
func DrainKey(prefix, id string) string { return DrainPrefix(prefix) + id }

// PlacementState is the value of admin/placement and the answer of
// GET /v1/placement. While Paused the leader plans (and reports
// under-replicated shards) but carries out no operation.
type PlacementState struct {
	Paused bool      `json:"paused"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at,omitzero"`
}

// DrainDoc is the value of admin/drain/<store>: placement moves every
// replica off the store (add elsewhere, catch up, promote, remove) and its
// shards' leadership with them, as for a store that drains itself.
type DrainDoc struct {
	Store  string    `json:"store"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// adminActions is what placement reads from admin/.
type adminActions struct {
	placement PlacementState
	drained   map[string]bool
}

func decodeAdmin(prefix string, kvs map[string][]byte) adminActions {
	a := adminActions{drained: map[string]bool{}}
	for k, v := range kvs {
		if k == PlacementKey(prefix) {
			_ = json.Unmarshal(v, &a.placement)
			continue
		}
		if id, ok := strings.CutPrefix(k, DrainPrefix(prefix)); ok && id != "" {
			a.drained[id] = true
		}
	}
	return a
}

// applyDrains marks drained stores as draining for the planner.
func applyDrains(stores []StoreState, drained map[string]bool) {
	for i := range stores {
		if drained[stores[i].ID] {
			stores[i].Draining = true
		}
	}
}

// handleAdminAction serves the operator actions on placement:
//
//	GET  /v1/placement                      PlacementState
//	POST /v1/placement/pause|resume[?reason=]
//	POST /v1/nodes/<store>/drain|undrain[?reason=]
//	POST /v1/shards/<n>/leader?store=<store>
//
// Writes go to the leader (a standby redirects with 307, 503 while no
// leader is known) and are fenced on its leadership.
func (cp *ControlPlane) handleAdminAction(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	if path == "/v1/placement" {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, r.Method+" "+path+": only GET is allowed")
			return
		}
		if !cp.authorized(w, r) {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), etcdTimeout)
		defer cancel()
		st, err := cp.readPlacementState(ctx)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, "cannot read the placement state from etcd: "+err.Error())
			return
		}
		writeJSON(w, http.StatusOK, st)
		return
	}
	var do func(ctx context.Context, lead leadership) (any, int, error)
	switch {
	case path == "/v1/placement/pause" || path == "/v1/placement/resume":
		pause := path == "/v1/placement/pause"
		do = func(ctx context.Context, lead leadership) (any, int, error) {
			return cp.setPlacementPaused(ctx, lead, pause, r)
		}
	case strings.HasPrefix(path, "/v1/nodes/"):
		id, action, _ := strings.Cut(strings.TrimPrefix(path, "/v1/nodes/"), "/")
		if id == "" || action != "drain" && action != "undrain" {
			writeError(w, http.StatusNotFound, "no such endpoint "+path+": want POST /v1/nodes/<store id>/drain or /undrain")
			return
		}
		do = func(ctx context.Context, lead leadership) (any, int, error) {
			return cp.drainStore(ctx, lead, id, action == "drain", r)
		}
	case strings.HasPrefix(path, "/v1/shards/") && strings.HasSuffix(path, "/leader"):
		num := strings.TrimSuffix(strings.TrimPrefix(path, "/v1/shards/"), "/leader")
		shard, err := strconv.Atoi(num)
		if err != nil {
			writeError(w, http.StatusNotFound, "no such endpoint "+path+": want POST /v1/shards/<number>/leader?store=<store id>")
			return
		}
		do = func(ctx context.Context, lead leadership) (any, int, error) {
			return cp.moveLeader(ctx, lead, shard, r.URL.Query().Get("store"))
		}
	default:
		writeError(w, http.StatusNotFound, "no such endpoint "+path)
		return
	}
	if !cp.postAuthorized(w, r) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*etcdTimeout)
	defer cancel()
	lead := cp.leaderOrRedirect(ctx, w, r)
	if lead == nil {
		return
	}
	v, code, err := do(ctx, *lead)
	switch {
	case errors.Is(err, ErrNotLeader):
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "leadership was lost while handling the request; nothing was written; retry")
	case err != nil && code != 0:
		writeError(w, code, err.Error())
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		writeJSON(w, http.StatusOK, v)
	}
}

func (cp *ControlPlane) readPlacementState(ctx context.Context) (PlacementState, error) {
	var st PlacementState
	resp, err := cp.cli.Get(ctx, PlacementKey(cp.cfg.Common.Prefix))
	if err != nil {
		return st, err
	}
	if len(resp.Kvs) > 0 {
		if err := json.Unmarshal(resp.Kvs[0].Value, &st); err != nil {
			return st, fmt.Errorf("%s is not JSON: %w", PlacementKey(cp.cfg.Common.Prefix), err)
		}
	}
	return st, nil
}

func reasonOf(r *http.Request, def string) string {
	if q := r.URL.Query().Get("reason"); q != "" {
		return q
	}
	return def
}

func (cp *ControlPlane) setPlacementPaused(ctx context.Context, lead leadership, pause bool, r *http.Request) (any, int, error) {
	st := PlacementState{Paused: pause, At: time.Now().UTC()}
	verb := "resumed"
	if pause {
		verb = "paused"
	}
	st.Reason = reasonOf(r, verb+" through the admin API")
	val, _ := json.Marshal(st)
	if _, _, err := lead.txn(ctx, nil, []clientv3.Op{clientv3.OpPut(PlacementKey(cp.cfg.Common.Prefix), string(val))}, nil); err != nil {
		return nil, 0, fmt.Errorf("placement %s failed: %w", verb, err)
	}
	cp.log.WithField("reason", st.Reason).Warn("placement " + verb + " by an operator")
	return st, 0, nil
}

// drainStore records or removes a drain. Only store nodes are drained this
// way: a worker drains itself on SIGTERM (it finishes its requests and
// leaves), and the control plane holds no data to move.
func (cp *ControlPlane) drainStore(ctx context.Context, lead leadership, id string, drain bool, r *http.Request) (any, int, error) {
	prefix := cp.cfg.Common.Prefix
	resp, err := cp.cli.Get(ctx, prefix+"members/", clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("cannot read members from etcd: %w", err)
	}
	var stores []string
	role := ""
	for _, m := range membership.FromKVs(kvMap(resp.Kvs)) {
		if m.Role == membership.RoleStore {
			stores = append(stores, m.ID)
		}
		if m.ID == id {
			role = m.Role
		}
	}
	sort.Strings(stores)
	switch {
	case role == "" && drain:
		return nil, http.StatusNotFound, fmt.Errorf("no live node %q; store nodes are: %s", id, strings.Join(stores, ", "))
	case role != "" && role != membership.RoleStore:
		return nil, http.StatusConflict, fmt.Errorf("%s is a %s: only store nodes are drained here; a %s drains itself on SIGTERM (erlmcp ctl members shows its pid)", id, role, role)
	}
	doc := DrainDoc{Store: id, Reason: reasonOf(r, "drained through the admin API"), At: time.Now().UTC()}
	op := clientv3.OpDelete(DrainKey(prefix, id))
	if drain {
		val, _ := json.Marshal(doc)
		op = clientv3.OpPut(DrainKey(prefix, id), string(val))
	}
	if _, _, err := lead.txn(ctx, nil, []clientv3.Op{op}, nil); err != nil {
		return nil, 0, fmt.Errorf("drain of %s failed: %w", id, err)
	}
	cp.log.WithFields(map[string]any{"store": id, "drain": drain, "reason": doc.Reason}).Warn("store drain changed by an operator")
	return doc, 0, nil
}

// moveLeader sets a shard's preferred leader. The planner keeps leaders in
// the active region, so only an up-to-date voter there can be asked for;
// the shard's Raft leader then transfers leadership to it.
func (cp *ControlPlane) moveLeader(ctx context.Context, lead leadership, shard int, store string) (any, int, error) {
	// The entry is read, changed and written back guarded on its revision;
	// placement writes the same entry, so a lost race is retried a few
	// times before the operator is told to retry.
	for attempt := 0; ; attempt++ {
		v, code, err := cp.moveLeaderOnce(ctx, lead, shard, store)
		if !errors.Is(err, errShardChanged) || attempt == 4 || ctx.Err() != nil {
			return v, code, err
		}
	}
}

var errShardChanged = errors.New("the shard entry changed while the move was written")

func (cp *ControlPlane) moveLeaderOnce(ctx context.Context, lead leadership, shard int, store string) (any, int, error) {
	prefix := cp.cfg.Common.Prefix
	key := clusterstate.ShardKey(prefix, shard)
	resp, err := cp.cli.Txn(ctx).Then(clientv3.OpGet(key), clientv3.OpGet(RegionsPrefix(prefix), clientv3.WithPrefix()),
		clientv3.OpGet(membership.RolePrefix(prefix, membership.RoleStore), clientv3.WithPrefix())).Commit()
	if err != nil {
		return nil, 0, fmt.Errorf("cannot read shard %d from etcd: %w", shard, err)
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return nil, http.StatusNotFound, fmt.Errorf("no shard %d in the shard map (erlmcp ctl shards lists them)", shard)
	}
	var doc ShardDoc
	if err := json.Unmarshal(kvs[0].Value, &doc); err != nil {
		return nil, 0, fmt.Errorf("shard %d's entry is not JSON: %w", shard, err)
	}
	var voters []string
	isVoter := false
	for _, rep := range doc.Replicas {
		if rep.Role == clusterstate.RoleVoter || rep.Role == "" {
			voters = append(voters, rep.Store)
			isVoter = isVoter || rep.Store == store
		}
	}
	if store == "" || !isVoter {
		return nil, http.StatusNotFound, fmt.Errorf("store %q is not a voter of shard %d; its voters are: %s (give one with ?store=)", store, shard, strings.Join(voters, ", "))
	}
	active := ""
	for _, d := range decodeRegions(prefix, kvMap(resp.Responses[1].GetResponseRange().GetKvs())) {
		if d.State == RegionActive {
			active = d.Name
		}
	}
	var region string
	for _, m := range membership.FromKVs(kvMap(resp.Responses[2].GetResponseRange().GetKvs())) {
		if m.ID == store {
			region = m.Region
		}
	}
	if region == "" {
		return nil, http.StatusConflict, fmt.Errorf("store %s is not alive (not in membership); it cannot lead shard %d", store, shard)
	}
	if active != "" && region != active {
		return nil, http.StatusConflict, fmt.Errorf("store %s is in region %s, not the active region %s: placement keeps shard leaders in the active region (fail the region over instead)", store, region, active)
	}
	doc.TargetLeader = store
	val, err := json.Marshal(doc)
	if err != nil {
		return nil, 0, err
	}
	ok, _, err := lead.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", kvs[0].ModRevision)},
		[]clientv3.Op{clientv3.OpPut(key, string(val))}, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("moving shard %d's leader failed: %w", shard, err)
	}
	if !ok {
		return nil, http.StatusConflict, fmt.Errorf("shard %d: %w (placement is at work on it); nothing was written; retry", shard, errShardChanged)
	}
	cp.log.WithFields(map[string]any{"shard": shard, "store": store}).Info("shard leader move requested by an operator")
	return doc, 0, nil
}

func kvMap(kvs []*mvccpb.KeyValue) map[string][]byte {
	m := make(map[string][]byte, len(kvs))
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value
	}
	return m
}
