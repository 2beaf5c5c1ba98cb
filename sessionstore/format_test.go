package sessionstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"github.com/erlmcp/erlmcp/sessionstore"
)

// TestFormatWaitsForEveryStore: a store of an older build (its membership
// record has no command_format) keeps the cluster proposing JSON; once it
// is gone the node proposes the newest format, and requests first applied
// in JSON are still answered once when retried in the new format.
func TestFormatWaitsForEveryStore(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	oldKey := membership.Key(e.prefix, membership.RoleStore, "old-build")
	e.put(oldKey, membership.Member{Role: membership.RoleStore, ID: "old-build", Addr: "127.0.0.1:1", Version: "v0"})
	n := e.startNode(e.nodeConfig("s1", t.TempDir()))
	format := func(want byte) {
		testcluster.WaitFor(t, 10*time.Second, fmt.Sprintf("command format %d", want), func() error {
			if got := n.CommandFormat(); got != want {
				return fmt.Errorf("proposing %d", got)
			}
			return nil
		})
	}
	format(1)
	rc := raw(t, n.Addr())
	ctx := ctxT(t)
	create := &pb.CreateSessionRequest{Id: "fmt", Data: []byte("a"), IdleTtlMs: 60000, RequestId: "req-create"}
	first, err := rc.CreateSession(ctx, create)
	if err != nil {
		t.Fatal(err)
	}
	cas := &pb.CompareAndSetSessionRequest{Id: "fmt", ExpectedVersion: 1, Data: []byte("b"), RequestId: "req-cas"}
	if _, err := rc.CompareAndSetSession(ctx, cas); err != nil {
		t.Fatal(err)
	}

	if _, err := e.cli.Delete(context.Background(), oldKey); err != nil {
		t.Fatal(err)
	}
	format(sessionstore.MaxCommandFormat)
	again, err := rc.CreateSession(ctx, create)
	if err != nil || again.Session.GetCreatedAtUnixMs() != first.Session.GetCreatedAtUnixMs() {
		t.Fatalf("create retried in the new format = %v, %v; want the first answer %v", again, err, first)
	}
	r, err := rc.CompareAndSetSession(ctx, cas)
	if err != nil || r.Session.GetVersion() != 2 {
		t.Fatalf("cas retried in the new format = %v, %v; want version 2 (applied once)", r, err)
	}
	cas3 := &pb.CompareAndSetSessionRequest{Id: "fmt", ExpectedVersion: 2, Data: []byte("c"), RequestId: "req-cas3"}
	for i := 0; i < 2; i++ {
		if r, err := rc.CompareAndSetSession(ctx, cas3); err != nil || r.Session.GetVersion() != 3 {
			t.Fatalf("new-format cas attempt %d = %v, %v; want version 3", i, r, err)
		}
	}

	// An older store coming back holds new proposals back again.
	e.put(oldKey, membership.Member{Role: membership.RoleStore, ID: "old-build", Addr: "127.0.0.1:1", Version: "v0"})
	format(1)
	g, err := rc.GetSession(ctx, &pb.GetSessionRequest{Id: "fmt"})
	if err != nil || g.Session.GetVersion() != 3 || string(g.Session.GetData()) != "c" {
		t.Fatalf("get = %v, %v; want version 3, data c", g, err)
	}
}

// Lease reads are on only while every store advertises the same Raft
// timing: a registered store with another tick turns them off until it
// leaves.
func TestLeasesNeedUniformTiming(t *testing.T) {
	e := newEnv(t, 2, true)
	e.spread("s1")
	n := e.startNode(e.nodeConfig("s1", t.TempDir()))
	rc := raw(t, n.Addr())
	ctx := ctxT(t)
	if _, err := rc.CreateSession(ctx, &pb.CreateSessionRequest{Id: "lease", Data: []byte("a"), IdleTtlMs: 60000, RequestId: "c1"}); err != nil {
		t.Fatal(err)
	}
	leased := func() uint64 {
		before := n.LeaseReads()
		for i := 0; i < 10; i++ {
			if _, err := rc.GetSession(ctx, &pb.GetSessionRequest{Id: "lease"}); err != nil {
				t.Fatal(err)
			}
		}
		return n.LeaseReads() - before
	}
	testcluster.WaitFor(t, 10*time.Second, "lease reads on", func() error {
		if leased() == 0 {
			return fmt.Errorf("no lease read")
		}
		return nil
	})
	oddKey := membership.Key(e.prefix, membership.RoleStore, "odd-tick")
	e.put(oddKey, membership.Member{Role: membership.RoleStore, ID: "odd-tick", Addr: "127.0.0.1:1", RaftTickMs: 10, RaftElectionTicks: 10, CommandFormat: sessionstore.MaxCommandFormat})
	testcluster.WaitFor(t, 10*time.Second, "lease reads off", func() error {
		if got := leased(); got != 0 {
			return fmt.Errorf("%d lease reads", got)
		}
		return nil
	})
	if got := leased(); got != 0 {
		t.Fatalf("%d lease reads while a store runs another tick; want 0", got)
	}
	if _, err := e.cli.Delete(context.Background(), oddKey); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 10*time.Second, "lease reads back on", func() error {
		if leased() == 0 {
			return fmt.Errorf("no lease read")
		}
		return nil
	})
}
