package controlplane

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/testcluster"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestAdminWriteDuringLeaderChangeIsRetryable: while the election key
// names this instance but its term has not begun (a restarted leader whose
// previous key has not expired yet: a leader change in progress), a write
// gets 503 with Retry-After and a message saying to retry, and writes
// nothing; reads are served; once the old key goes, the same write works.
func TestAdminWriteDuringLeaderChangeIsRetryable(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx := context.Background()
	old, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	val, _ := json.Marshal(LeaderInfo{ID: "cp-a", AdminAddr: "127.0.0.1:1"})
	key := fmt.Sprintf("%selection/controlplane/%x", e.Prefix, old.ID)
	if _, err := cli.Put(ctx, key, string(val), clientv3.WithLease(old.ID)); err != nil {
		t.Fatal(err)
	}
	cp := startCP(t, testConfig(e, "cp-a"))
	if cp.IsLeader() {
		t.Fatal("leads although an older election key exists")
	}

	post := func() (int, http.Header, string) {
		req, _ := http.NewRequest(http.MethodPost, cp.AdminURL()+"/v1/placement/pause?reason=test", nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}
	code, hdr, body := post()
	if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" || !strings.Contains(body, "retry") {
		t.Fatalf("write during a leader change: %d Retry-After %q %s", code, hdr.Get("Retry-After"), body)
	}
	var st PlacementState
	if code := get(t, cp.AdminURL()+"/v1/placement", testToken, &st); code != http.StatusOK || st.Paused {
		t.Fatalf("read during a leader change: %d %+v (the refused write must not have paused placement)", code, st)
	}

	if _, err := cli.Revoke(ctx, old.ID); err != nil {
		t.Fatal(err)
	}
	oneLeader(t, 10*time.Second, cp)
	if code, _, body := post(); code != http.StatusOK || !strings.Contains(body, `"paused": true`) {
		t.Fatalf("the same write once leading: %d %s", code, body)
	}
}
