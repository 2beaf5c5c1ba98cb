package controlplane

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/testcluster"
)

// postRaw POSTs with the token and returns the status and the body. A 503
// (no leader for a moment: the API says retry) is retried for up to 20 s,
// as erlmcp ctl does; a loaded CI machine can delay an election renewal.
func postRaw(t *testing.T, url, token string) (int, string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodPost, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
			return resp.StatusCode, string(b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAdminPauseDrainAndMoveLeader: an operator pauses placement, drains a
// store (nothing moves while paused), resumes (its replicas move to a spare
// through learner → promote → remove), and moves a shard's leader.
func TestAdminPauseDrainAndMoveLeader(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	cfg := raftConfig(e, "cp-a")
	cfg.Planner.MaxOpsPerStore = 4
	cp := startCP(t, cfg)
	side, victim := repairCluster(t, e, cli)
	base := cp.AdminURL()

	if code, body := postRaw(t, base+"/v1/placement/pause?reason=maintenance", ""); code != http.StatusUnauthorized {
		t.Fatalf("pause without a token: %d %s", code, body)
	}
	if code, body := postRaw(t, base+"/v1/placement/pause?reason=maintenance", testToken); code != http.StatusOK || !strings.Contains(body, `"paused": true`) {
		t.Fatalf("pause: %d %s", code, body)
	}
	var st PlacementState
	if code := get(t, base+"/v1/placement", testToken, &st); code != http.StatusOK || !st.Paused || st.Reason != "maintenance" {
		t.Fatalf("GET /v1/placement: %d %+v", code, st)
	}
	testcluster.WaitFor(t, 5*time.Second, "placement_paused gauge", func() error {
		if v := metricValue(t, cp, "erlmcp_controlplane_placement_paused"); v != "1" {
			return fmt.Errorf("placement_paused = %q", v)
		}
		return nil
	})

	// A spare in the victim's region, then the drain.
	killAndReplace := addStore(t, cli, e.Prefix, "sd", "r3", "z2")
	side.mu.Lock()
	side.stores["sd"] = killAndReplace
	side.mu.Unlock()
	if code, body := postRaw(t, base+"/v1/nodes/nope/drain", testToken); code != http.StatusNotFound || !strings.Contains(body, "sa, sb, sc, sd") {
		t.Fatalf("drain of an unknown node: %d %s", code, body)
	}
	if code, body := postRaw(t, base+"/v1/nodes/"+victim+"/drain?reason=disk", testToken); code != http.StatusOK || !strings.Contains(body, `"reason": "disk"`) {
		t.Fatalf("drain: %d %s", code, body)
	}
	// Paused: a few dozen planner ticks (20 ms) pass and nothing moves.
	time.Sleep(500 * time.Millisecond)
	if ops := readOps(t, cli, e.Prefix); len(ops) != 0 {
		t.Fatalf("placement acted while paused: %v", ops)
	}
	for _, d := range readDocs(t, cli, e.Prefix, 4) {
		if !d.Hosts(victim) || d.ConfEpoch != 1 {
			t.Fatalf("shard %d changed while paused: %+v", d.Shard.Shard, d)
		}
	}

	if code, body := postRaw(t, base+"/v1/placement/resume", testToken); code != http.StatusOK || !strings.Contains(body, `"paused": false`) {
		t.Fatalf("resume: %d %s", code, body)
	}
	waitRepaired(t, cli, e.Prefix, victim) // every replica moved off the drained store to sd
	if v := metricValue(t, cp, "erlmcp_controlplane_placement_paused"); v != "0" {
		t.Errorf("placement_paused = %q after resume", v)
	}
	if code, body := postRaw(t, base+"/v1/nodes/"+victim+"/undrain", testToken); code != http.StatusOK {
		t.Fatalf("undrain: %d %s", code, body)
	}

	// Moving a leader: only to an up-to-date voter in the active region (r1: sa).
	for _, tc := range []struct {
		path string
		code int
		msg  string
	}{
		{"/v1/shards/99/leader?store=sa", http.StatusNotFound, "no shard 99"},
		{"/v1/shards/0/leader?store=zz", http.StatusNotFound, "voters are:"},
		{"/v1/shards/0/leader", http.StatusNotFound, "give one with ?store="},
		{"/v1/shards/0/leader?store=sb", http.StatusConflict, "not the active region r1"},
		{"/v1/shards/x/leader?store=sa", http.StatusNotFound, "want POST /v1/shards/"},
		{"/v1/nodes/sa/explode", http.StatusNotFound, "drain or /undrain"},
	} {
		if code, body := postRaw(t, base+tc.path, testToken); code != tc.code || !strings.Contains(body, tc.msg) {
			t.Errorf("POST %s: %d %s, want %d with %q", tc.path, code, body, tc.code, tc.msg)
		}
	}
	code, body := postRaw(t, base+"/v1/shards/0/leader?store=sa", testToken)
	var doc ShardDoc
	if code != http.StatusOK || json.Unmarshal([]byte(body), &doc) != nil || doc.TargetLeader != "sa" {
		t.Fatalf("move leader: %d %s", code, body)
	}
	if d := readDocs(t, cli, e.Prefix, 4)[0]; d.TargetLeader != "sa" || d.Replicas[0].Role != clusterstate.RoleVoter {
		t.Fatalf("shard 0 after the move: %+v", d)
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/placement/pause", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /v1/placement/pause: %d", resp.StatusCode)
	}
}
