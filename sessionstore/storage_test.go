package sessionstore

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/logging"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestDiskWriteFailure: a write the storage cannot make durable is answered
// UNAVAILABLE saying the disk write failed, and nothing is acknowledged.
func TestDiskWriteFailure(t *testing.T) {
	bs, err := openBolt(t.TempDir(), "s1")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Common.ID = "s1"
	n := &Node{cfg: cfg, log: logging.Discard(), store: bs}
	n.now = timeNow
	n.route.Store(&routing{
		cluster: clusterstate.ClusterConfig{ShardCount: 1, ReplicationFactor: 1},
		shards:  []clusterstate.Shard{{Shard: 0, Replicas: []clusterstate.Replica{{Store: "s1", Role: clusterstate.RoleVoter}}}},
	})
	svc := &service{n: n}
	ctx := context.Background()
	if _, err := svc.CreateSession(ctx, &pb.CreateSessionRequest{Id: "a", RequestId: "r1"}); err != nil {
		t.Fatal(err)
	}
	// The file goes away under the node (as a failed disk would).
	if err := bs.close(); err != nil {
		t.Fatal(err)
	}
	_, err = svc.CompareAndSetSession(ctx, &pb.CompareAndSetSessionRequest{Id: "a", ExpectedVersion: 1, RequestId: "r2"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "disk write failed") || !strings.Contains(err.Error(), "database not open") {
		t.Fatalf("write on a failed disk: %v; want UNAVAILABLE saying the disk write failed and why", err)
	}
	_, err = svc.GetSession(ctx, &pb.GetSessionRequest{Id: "a"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "disk read failed") {
		t.Fatalf("read on a failed disk: %v", err)
	}
}

// TestDedupWindowBounded: remembered request ids are pruned by age and by
// count, so the window stays bounded.
func TestDedupWindowBounded(t *testing.T) {
	bs, err := openBolt(t.TempDir(), "s1")
	if err != nil {
		t.Fatal(err)
	}
	defer bs.close()
	ctx := context.Background()
	if _, err := bs.apply(ctx, command{Op: opCreate, ID: "a", RequestID: "old", NowMs: 1000}); err != nil {
		t.Fatal(err)
	}
	// Past the window, a new write prunes the old request id: its retry is
	// then a new request (here ALREADY_EXISTS instead of the first success).
	later := int64(1000 + dedupWindowMs + 1)
	if _, err := bs.apply(ctx, command{Op: opCreate, ID: "b", RequestID: "new", NowMs: later}); err != nil {
		t.Fatal(err)
	}
	out, err := bs.apply(ctx, command{Op: opCreate, ID: "a", RequestID: "old", NowMs: later})
	if err != nil || out.Status.Code() != codes.AlreadyExists {
		t.Fatalf("retry past the window: %v, %v", out, err)
	}
	// Within the window the retry gets the first outcome.
	out, err = bs.apply(ctx, command{Op: opCreate, ID: "b", RequestID: "new", NowMs: later + 5})
	if err != nil || out.Status != nil || out.Session.GetVersion() != 1 {
		t.Fatalf("retry within the window: %v, %v", out, err)
	}
}

var timeNow = func() time.Time { return time.Now() }
