package embedetcd_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/embedetcd"
	"github.com/erlmcp/erlmcp/internal/testcluster"
)

// A member's log holds its leadership events and errors, not etcd's
// chatter at info (listeners, cluster version, snapshots), and nothing
// from its own Close.
func TestLogKeepsLeadershipEventsOnly(t *testing.T) {
	var log testcluster.SyncBuffer
	cfg := embedetcd.Config{Name: "e", DataDir: t.TempDir(), ClientURL: "http://" + testcluster.FreeAddr(t), PeerURL: "http://" + testcluster.FreeAddr(t),
		ClusterState: "new", TickMs: 10, ElectionMs: 100, StartTimeout: 10 * time.Second, LogTo: &log}
	s, err := embedetcd.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	got := log.String()
	if !strings.Contains(got, "became leader at term") || !strings.Contains(got, "elected leader") {
		t.Errorf("no leadership event in the member's log:\n%s", got)
	}
	// etcd may log an error of its own in the background (a storage
	// version it cannot detect yet); only what is neither is chatter.
	for _, line := range strings.Split(strings.TrimSpace(got), "\n") {
		if !strings.Contains(line, "leader") && !strings.Contains(line, `"level":"error"`) {
			t.Errorf("log line that is neither an error nor an event: %s", line)
		}
	}
	// Closed on purpose, etcd reports its own listeners failing ("setting
	// up serving from embedded etcd failed", at error); none of that may
	// reach the log. A line its background work logged at the same moment
	// may, so the check is on what closing logs.
	before := log.String()
	s.Close()
	if added := strings.TrimPrefix(log.String(), before); strings.Contains(added, "serving from embedded etcd failed") || strings.Contains(added, "closed") {
		t.Errorf("logged while closing on purpose:\n%s", added)
	}
}
