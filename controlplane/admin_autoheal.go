package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// AutohealView is the answer of GET /v1/autoheal and of the pause and
// resume actions.
type AutohealView struct {
	AutohealState
	Actuator     string      `json:"actuator"`
	HealEnabled  bool        `json:"heal_enabled"`
	ScaleEnabled bool        `json:"scale_enabled"`
	Desired      *DesiredDoc `json:"desired"`
}

func (cp *ControlPlane) handleAutoheal(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), etcdTimeout)
	defer cancel()
	v, err := cp.autohealView(ctx)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "cannot read the autoheal state from etcd: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (cp *ControlPlane) autohealView(ctx context.Context) (AutohealView, error) {
	prefix := cp.cfg.Common.Prefix
	v := AutohealView{HealEnabled: cp.cfg.Autoheal.Enabled, ScaleEnabled: cp.cfg.Scale.Enabled}
	if cp.actuator != nil {
		v.Actuator = cp.actuator.Name()
	}
	resp, err := cp.cli.Txn(ctx).Then(clientv3.OpGet(AutohealKey(prefix)), clientv3.OpGet(DesiredKey(prefix, cp.cfg.Scale.Pool))).Commit()
	if err != nil {
		return v, err
	}
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
		_ = json.Unmarshal(kvs[0].Value, &v.AutohealState)
	}
	if kvs := resp.Responses[1].GetResponseRange().GetKvs(); len(kvs) > 0 {
		var d DesiredDoc
		if json.Unmarshal(kvs[0].Value, &d) == nil {
			v.Desired = &d
		}
	}
	return v, nil
}

// handleAutohealAction serves GET /v1/autoheal and POST
// /v1/autoheal/pause|resume[?reason=…]:
// while paused the leader judges health and computes scaling decisions
// but neither restarts nor scales anything.
func (cp *ControlPlane) handleAutohealAction(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v1/autoheal" {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, r.Method+" "+r.URL.Path+": only GET is allowed")
			return
		}
		if cp.authorized(w, r) {
			cp.handleAutoheal(w, r)
		}
		return
	}
	action := strings.TrimPrefix(r.URL.Path, "/v1/autoheal/")
	if action != "pause" && action != "resume" {
		writeError(w, http.StatusNotFound, "no such endpoint "+r.URL.Path+": want POST /v1/autoheal/pause or /v1/autoheal/resume")
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
	st := AutohealState{Paused: action == "pause", Reason: r.URL.Query().Get("reason"), At: time.Now().UTC()}
	if st.Reason == "" {
		st.Reason = action + "d through the admin API"
	}
	val, _ := json.Marshal(st)
	_, _, err := lead.txn(ctx, nil, []clientv3.Op{clientv3.OpPut(AutohealKey(cp.cfg.Common.Prefix), string(val))}, nil)
	switch {
	case errors.Is(err, ErrNotLeader):
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "leadership was lost while handling the request; nothing was written; retry")
		return
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "autoheal "+action+" failed: "+err.Error())
		return
	}
	cp.metrics.autohealPaused.Set(b2f(st.Paused))
	cp.log.WithField("reason", st.Reason).Warnf("autoheal %sd", action)
	v, err := cp.autohealView(ctx)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "autoheal "+action+"d, but reading it back failed: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// postAuthorized answers 405 to anything but POST and 401 to a missing or
// wrong token; it reports whether the request may go on.
func (cp *ControlPlane) postAuthorized(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeError(w, http.StatusMethodNotAllowed, r.Method+" "+r.URL.Path+": only POST is allowed")
		return false
	}
	return cp.authorized(w, r)
}

// leaderOrRedirect returns the leadership when this instance leads;
// otherwise it answers 307 to the leader's admin URL, or 503 (retryable)
// while no leader is known, and returns nil.
func (cp *ControlPlane) leaderOrRedirect(ctx context.Context, w http.ResponseWriter, r *http.Request) *leadership {
	if lead := cp.lead.Load(); lead != nil {
		return lead
	}
	li, _, err := cp.currentLeader(ctx)
	if err == nil && li.ID != cp.cfg.Common.ID && li.AdminAddr != "" {
		loc := "http://" + li.AdminAddr + r.URL.RequestURI()
		w.Header().Set("Location", loc)
		writeError(w, http.StatusTemporaryRedirect, "this instance is a standby; the leader "+li.ID+" is at "+loc)
		return nil
	}
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusServiceUnavailable, "no control-plane leader can take the request right now (leader change in progress); retry in a second")
	return nil
}
