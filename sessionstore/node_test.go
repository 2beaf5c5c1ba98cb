package sessionstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"github.com/erlmcp/erlmcp/sessionstore"
	"github.com/erlmcp/erlmcp/sessionstore/client"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
)

func TestCRUD(t *testing.T) {
	e := newEnv(t, 8, true)
	e.spread("s1")
	n := e.startNode(e.nodeConfig("s1", t.TempDir()))
	c := e.client()
	ctx := ctxT(t)

	// Health says SERVING once ready.
	cc, err := grpc.NewClient(n.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hr, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: pb.SessionStoreService_ServiceDesc.ServiceName})
	if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v; want SERVING", hr.GetStatus(), err)
	}
	// Reflection lists the store's services (grpcurl and friends need it).
	rs, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	rr, err := rs.Recv()
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	var listed []string
	for _, svc := range rr.GetListServicesResponse().GetService() {
		listed = append(listed, svc.GetName())
	}
	for _, want := range []string{pb.SessionStoreService_ServiceDesc.ServiceName, pb.StoreAdminService_ServiceDesc.ServiceName, "grpc.health.v1.Health"} {
		if !slices.Contains(listed, want) {
			t.Fatalf("reflection lists %v, not %s", listed, want)
		}
	}
	_ = rs.CloseSend()

	s, err := c.Create(ctx, "sess-1", []byte("v1"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if s.ID != "sess-1" || s.Version != 1 || string(s.Data) != "v1" || s.IdleTTL != time.Hour || s.CreatedAt.IsZero() || !s.UpdatedAt.Equal(s.CreatedAt) {
		t.Fatalf("created %+v", s)
	}
	if _, err := c.Create(ctx, "sess-1", []byte("other"), 0); !errors.Is(err, client.ErrAlreadyExists) || !strings.Contains(err.Error(), "sess-1") {
		t.Fatalf("second create: %v; want ErrAlreadyExists naming the session", err)
	}
	g, err := c.Get(ctx, "sess-1", false)
	if err != nil || g.Version != 1 || string(g.Data) != "v1" {
		t.Fatalf("get = %+v, %v", g, err)
	}
	testcluster.WaitFor(t, 2*time.Second, "touch to move updated_at", func() error {
		g, err := c.Get(ctx, "sess-1", true)
		if err != nil {
			return err
		}
		if !g.UpdatedAt.After(s.UpdatedAt) || g.Version != 1 {
			return fmt.Errorf("after touch %+v", g)
		}
		return nil
	})

	s2, err := c.CompareAndSet(ctx, "sess-1", 1, []byte("v2"))
	if err != nil || s2.Version != 2 || string(s2.Data) != "v2" {
		t.Fatalf("cas = %+v, %v", s2, err)
	}
	_, err = c.CompareAndSet(ctx, "sess-1", 1, []byte("v3"))
	if !errors.Is(err, client.ErrVersionConflict) || !strings.Contains(err.Error(), "current version 2") {
		t.Fatalf("stale cas: %v; want ErrVersionConflict with current version 2", err)
	}
	// The raw answer carries ErrorInfo VERSION_CONFLICT with current_version.
	_, err = raw(t, n.Addr()).CompareAndSetSession(ctx, &pb.CompareAndSetSessionRequest{Id: "sess-1", ExpectedVersion: 7, Data: []byte("x"), RequestId: "r-conflict"})
	if ei := errInfo(err); status.Code(err) != codes.Aborted || ei == nil || ei.Reason != "VERSION_CONFLICT" || ei.Metadata["current_version"] != "2" {
		t.Fatalf("raw stale cas: %v (info %v)", err, ei)
	}

	if err := c.Delete(ctx, "sess-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "sess-1", false); !errors.Is(err, client.ErrNotFound) || errors.Is(err, client.ErrExpired) {
		t.Fatalf("get after delete: %v; want ErrNotFound", err)
	}
	if err := c.Delete(ctx, "sess-1"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("second delete: %v; want ErrNotFound", err)
	}
	if _, err := c.CompareAndSet(ctx, "nope", 1, nil); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("cas missing: %v; want ErrNotFound", err)
	}
	_, err = raw(t, n.Addr()).GetSession(ctx, &pb.GetSessionRequest{Id: "nope"})
	if ei := errInfo(err); status.Code(err) != codes.NotFound || ei == nil || ei.Reason != "SESSION_NOT_FOUND" {
		t.Fatalf("raw get missing: %v", err)
	}
}

// TestIdleExpiry: with the leader's expiry sweep held off (SweepInterval
// an hour), the test controls what happens to an idle-expired session: it
// answers SESSION_EXPIRED until a read deletes it lazily, then
// SESSION_NOT_FOUND.
func TestIdleExpiry(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	cfg := e.nodeConfig("s1", t.TempDir())
	cfg.SweepInterval = time.Hour // no sweep races the assertions below
	n := e.startNode(cfg)
	c := e.client()
	ctx := ctxT(t)

	if _, err := c.Create(ctx, "short", []byte("x"), 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(ctx, "forever", []byte("y"), 0); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 3*time.Second, "session to expire", func() error {
		_, err := c.Get(ctx, "short", false)
		if !errors.Is(err, client.ErrExpired) {
			return fmt.Errorf("get: %v", err)
		}
		if !errors.Is(err, client.ErrNotFound) {
			return fmt.Errorf("expired is not ErrNotFound: %v", err)
		}
		return nil
	})
	// Lazily deleted: now simply not found; and the id can be created again.
	_, err := raw(t, n.Addr()).GetSession(ctx, &pb.GetSessionRequest{Id: "short"})
	if ei := errInfo(err); status.Code(err) != codes.NotFound || ei == nil || ei.Reason != "SESSION_NOT_FOUND" {
		t.Fatalf("after lazy delete: %v", err)
	}
	if s, err := c.Create(ctx, "short", []byte("again"), time.Hour); err != nil || s.Version != 1 {
		t.Fatalf("re-create expired id: %+v, %v", s, err)
	}
	if _, err := c.Get(ctx, "forever", true); err != nil {
		t.Fatalf("ttl 0 never expires: %v", err)
	}
	// An expired record refuses writes with SESSION_EXPIRED.
	if _, err := c.Create(ctx, "short2", []byte("x"), 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 3*time.Second, "cas on expired session", func() error {
		_, err := c.CompareAndSet(ctx, "short2", 1, []byte("z"))
		if !errors.Is(err, client.ErrExpired) {
			return fmt.Errorf("cas: %v", err)
		}
		return nil
	})
}

// TestIdleExpiryWithSweep: with the leader's expiry sweep running, an
// idle-expired session may already be swept when it is next touched, so
// SESSION_EXPIRED and SESSION_NOT_FOUND are both right answers (both mean
// gone; workers answer 404 for either). Eventually the sweep deletes it
// without anyone reading it.
func TestIdleExpiryWithSweep(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	n := e.startNode(e.nodeConfig("s1", t.TempDir())) // sweep every 200ms
	c := e.client()
	ctx := ctxT(t)

	for _, id := range []string{"read", "written", "untouched"} {
		if _, err := c.Create(ctx, id, []byte("x"), 50*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Create(ctx, "forever", []byte("y"), 0); err != nil {
		t.Fatal(err)
	}
	gone := func(what string, err error) error {
		if errors.Is(err, client.ErrExpired) || errors.Is(err, client.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("%s: %v; want ErrExpired or ErrNotFound", what, err)
	}
	testcluster.WaitFor(t, 3*time.Second, "sessions to expire", func() error {
		_, err := c.Get(ctx, "read", false)
		if err := gone("get", err); err != nil {
			return err
		}
		_, err = c.CompareAndSet(ctx, "written", 1, []byte("z"))
		return gone("cas", err)
	})
	testcluster.WaitFor(t, 10*time.Second, "the sweep to delete the untouched session", func() error {
		if has, err := n.HasLocalSession(uint32(clusterstate.ShardOf("untouched", e.shardCount)), "untouched"); err != nil || has {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})
	if _, err := c.Get(ctx, "forever", true); err != nil {
		t.Fatalf("ttl 0 never expires: %v", err)
	}
}

func TestIdempotentRetry(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	n := e.startNode(e.nodeConfig("s1", t.TempDir()))
	rc := raw(t, n.Addr())
	ctx := ctxT(t)

	create := &pb.CreateSessionRequest{Id: "idem", Data: []byte("a"), IdleTtlMs: 60000, RequestId: "req-create"}
	r1, err := rc.CreateSession(ctx, create)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := rc.CreateSession(ctx, create)
	if err != nil {
		t.Fatalf("retried create: %v; want the first outcome (success)", err)
	}
	if r2.Session.Version != 1 || r2.Session.CreatedAtUnixMs != r1.Session.CreatedAtUnixMs || string(r2.Session.Data) != "a" {
		t.Fatalf("retried create = %v; want %v", r2.Session, r1.Session)
	}

	cas := &pb.CompareAndSetSessionRequest{Id: "idem", ExpectedVersion: 1, Data: []byte("b"), RequestId: "req-cas"}
	for i := 0; i < 3; i++ {
		r, err := rc.CompareAndSetSession(ctx, cas)
		if err != nil || r.Session.Version != 2 || string(r.Session.Data) != "b" {
			t.Fatalf("cas attempt %d = %v, %v; want version 2 every time", i, r, err)
		}
	}
	g, err := rc.GetSession(ctx, &pb.GetSessionRequest{Id: "idem"})
	if err != nil || g.Session.Version != 2 {
		t.Fatalf("after retried cas: %v, %v; want version 2 (applied once)", g, err)
	}

	// A refused request is refused the same way on retry, even though the
	// state has since changed.
	conflict := &pb.CompareAndSetSessionRequest{Id: "idem", ExpectedVersion: 1, Data: []byte("c"), RequestId: "req-conflict"}
	if _, err := rc.CompareAndSetSession(ctx, conflict); status.Code(err) != codes.Aborted {
		t.Fatalf("conflict: %v", err)
	}
	if _, err := rc.CompareAndSetSession(ctx, conflict); status.Code(err) != codes.Aborted || errInfo(err).GetMetadata()["current_version"] != "2" {
		t.Fatalf("retried conflict: %v; want the first outcome (ABORTED, current_version 2)", err)
	}

	// Reusing a request_id for a different request is refused.
	other := &pb.CompareAndSetSessionRequest{Id: "idem", ExpectedVersion: 2, Data: []byte("different"), RequestId: "req-cas"}
	if _, err := rc.CompareAndSetSession(ctx, other); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "req-cas") {
		t.Fatalf("reused request_id: %v; want INVALID_ARGUMENT naming it", err)
	}

	del := &pb.DeleteSessionRequest{Id: "idem", RequestId: "req-del"}
	if _, err := rc.DeleteSession(ctx, del); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.DeleteSession(ctx, del); err != nil {
		t.Fatalf("retried delete: %v; want the first outcome (success)", err)
	}
	if _, err := rc.DeleteSession(ctx, &pb.DeleteSessionRequest{Id: "idem", RequestId: "req-del-2"}); status.Code(err) != codes.NotFound {
		t.Fatalf("new delete: %v; want NOT_FOUND", err)
	}
}

func TestInvalidArgument(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	cfg := e.nodeConfig("s1", t.TempDir())
	cfg.MaxValueBytes = 1000
	n := e.startNode(cfg)
	rc := raw(t, n.Addr())
	c := e.client()
	ctx := ctxT(t)

	cases := []struct {
		name string
		call func() error
		want string
	}{
		{"empty id", func() error {
			_, err := rc.CreateSession(ctx, &pb.CreateSessionRequest{RequestId: "r"})
			return err
		}, "id is empty"},
		{"empty id get", func() error {
			_, err := rc.GetSession(ctx, &pb.GetSessionRequest{})
			return err
		}, "id is empty"},
		{"id not visible ascii", func() error {
			_, err := rc.CreateSession(ctx, &pb.CreateSessionRequest{Id: "a b", RequestId: "r"})
			return err
		}, "not visible ASCII"},
		{"id too long", func() error {
			_, err := rc.CreateSession(ctx, &pb.CreateSessionRequest{Id: strings.Repeat("a", 257), RequestId: "r"})
			return err
		}, "limit is 256 bytes"},
		{"missing request_id", func() error {
			_, err := rc.DeleteSession(ctx, &pb.DeleteSessionRequest{Id: "a"})
			return err
		}, "request_id is empty"},
		{"data too large", func() error {
			_, err := rc.CreateSession(ctx, &pb.CreateSessionRequest{Id: "a", Data: make([]byte, 1001), RequestId: "r"})
			return err
		}, "limit is 1000 bytes"},
		{"data too large cas", func() error {
			_, err := rc.CompareAndSetSession(ctx, &pb.CompareAndSetSessionRequest{Id: "a", ExpectedVersion: 1, Data: make([]byte, 1001), RequestId: "r"})
			return err
		}, "limit is 1000 bytes"},
		{"negative ttl", func() error {
			_, err := rc.CreateSession(ctx, &pb.CreateSessionRequest{Id: "a", IdleTtlMs: -1, RequestId: "r"})
			return err
		}, "idle_ttl_ms"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want INVALID_ARGUMENT containing %q", err, tc.want)
			}
		})
	}
	// Through the client: no retry, the limit in the message.
	_, err := c.Create(ctx, "big", make([]byte, 1001), 0)
	if err == nil || !strings.Contains(err.Error(), "limit is 1000 bytes") || errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("client create oversized: %v", err)
	}
	if s, err := c.Create(ctx, "fits", make([]byte, 1000), 0); err != nil || len(s.Data) != 1000 {
		t.Fatalf("create at the limit: %v", err)
	}
}

func TestRoutingAcrossNodes(t *testing.T) {
	const shards = 6
	e := newEnv(t, shards, true)
	e.spread("a", "b", "c")
	nodes := map[string]*sessionstore.Node{}
	for _, id := range []string{"a", "b", "c"} {
		nodes[id] = e.startNode(e.nodeConfig(id, t.TempDir()))
	}
	owner := func(shard int) string { return []string{"a", "b", "c"}[shard%3] }
	c := e.client()
	ctx := ctxT(t)

	for shard := 0; shard < shards; shard++ {
		id := idInShard(shard, shards, "route")
		if _, err := c.Create(ctx, id, []byte(id), 0); err != nil {
			t.Fatalf("create %s (shard %d): %v", id, shard, err)
		}
		// The record is on the owner...
		g, err := raw(t, nodes[owner(shard)].Addr()).GetSession(ctx, &pb.GetSessionRequest{Id: id})
		if err != nil || string(g.Session.Data) != id {
			t.Fatalf("shard %d owner %s: %v, %v", shard, owner(shard), g, err)
		}
		// ...and another node refuses it with a hint naming the owner.
		other := owner(shard + 1)
		_, err = raw(t, nodes[other].Addr()).GetSession(ctx, &pb.GetSessionRequest{Id: id})
		h := hintOf(err)
		if status.Code(err) != codes.FailedPrecondition || h == nil || h.Shard != uint32(shard) || h.NodeId != owner(shard) || h.Addr != nodes[owner(shard)].Addr() {
			t.Fatalf("shard %d asked at %s: %v, hint %v; want FAILED_PRECONDITION with hint %s", shard, other, err, h, owner(shard))
		}
		if _, err := c.CompareAndSet(ctx, id, 1, []byte("next")); err != nil {
			t.Fatalf("cas %s: %v", id, err)
		}
	}
}

func TestRestartKeepsSessions(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	dir := t.TempDir()
	cfg := e.nodeConfig("s1", dir)
	n := e.startNode(cfg)
	c := e.client()
	ctx := ctxT(t)
	for i := 0; i < 10; i++ {
		if _, err := c.Create(ctx, fmt.Sprintf("keep-%d", i), []byte{byte(i)}, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	cas := &pb.CompareAndSetSessionRequest{Id: "keep-0", ExpectedVersion: 1, Data: []byte("two"), RequestId: "req-before-restart"}
	if _, err := raw(t, n.Addr()).CompareAndSetSession(ctx, cas); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	// The data dir belongs to s1.
	if _, err := sessionstore.Start(ctx, e.nodeConfig("s2", dir), logging.Discard()); err == nil || !strings.Contains(err.Error(), `belongs to store node "s1"`) {
		t.Fatalf("start s2 on s1's dir: %v", err)
	}

	n2 := e.startNode(cfg) // new port
	for i := 0; i < 10; i++ {
		s, err := c.Get(ctx, fmt.Sprintf("keep-%d", i), false)
		if err != nil {
			t.Fatalf("after restart: %v", err)
		}
		if i == 0 && (s.Version != 2 || string(s.Data) != "two") {
			t.Fatalf("keep-0 = %+v", s)
		}
		if i > 0 && (s.Version != 1 || !bytes.Equal(s.Data, []byte{byte(i)})) {
			t.Fatalf("keep-%d = %+v", i, s)
		}
	}
	// The idempotency record survived too.
	r, err := raw(t, n2.Addr()).CompareAndSetSession(ctx, cas)
	if err != nil || r.Session.Version != 2 {
		t.Fatalf("retry after restart: %v, %v; want the first outcome", r, err)
	}
}

func TestShardMoveFollowed(t *testing.T) {
	const shards = 2
	e := newEnv(t, shards, true)
	e.assign(0, "a", 1)
	e.assign(1, "a", 1)
	a := e.startNode(e.nodeConfig("a", t.TempDir()))
	b := e.startNode(e.nodeConfig("b", t.TempDir()))
	c := e.client()
	ctx := ctxT(t)

	id1 := idInShard(1, shards, "move")
	if _, err := c.Create(ctx, id1, []byte("on a"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := raw(t, a.Addr()).GetSession(ctx, &pb.GetSessionRequest{Id: id1}); err != nil {
		t.Fatalf("on a: %v", err)
	}

	e.assign(1, "b", 2)
	id2 := idInShard(1, shards, "moved")
	// Single-replica stores have no fencing between old and new owner, so
	// wait until the old owner has seen the move (the control plane's move
	// protocol orders this the same way).
	testcluster.WaitFor(t, 3*time.Second, "a to refuse the moved shard", func() error {
		_, err := raw(t, a.Addr()).GetSession(ctx, &pb.GetSessionRequest{Id: id2})
		if h := hintOf(err); status.Code(err) != codes.FailedPrecondition || h == nil || h.Shard != 1 || h.NodeId != "b" || h.Addr != b.Addr() {
			return fmt.Errorf("a answered %v (hint %v)", err, h)
		}
		return nil
	})
	// The client follows, from its watch or from a's hint.
	s, err := c.Create(ctx, id2, []byte("on b"), 0)
	if err != nil {
		t.Fatalf("create after move: %v", err)
	}
	if s.Version != 1 {
		t.Fatalf("created %+v", s)
	}
	if g, err := raw(t, b.Addr()).GetSession(ctx, &pb.GetSessionRequest{Id: id2}); err != nil || string(g.Session.Data) != "on b" {
		t.Fatalf("moved shard's new session is not on b: %v, %v", g, err)
	}
	if g, err := c.Get(ctx, id2, true); err != nil || string(g.Data) != "on b" {
		t.Fatalf("client get after move: %v, %v", g, err)
	}
	// The unmoved shard still works on a.
	if _, err := c.Create(ctx, idInShard(0, shards, "stay"), nil, 0); err != nil {
		t.Fatal(err)
	}
}

func TestNoStoreForShard(t *testing.T) {
	const shards = 2
	e := newEnv(t, shards, true)
	e.assign(0, "a", 1)
	e.assign(1, "", 1)
	e.startNode(e.nodeConfig("a", t.TempDir()))
	c := e.client()

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	id := idInShard(1, shards, "orphan")
	_, err := c.Create(ctx, id, nil, 0)
	if !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "shard 1 has no store assigned") || !strings.Contains(err.Error(), id) {
		t.Fatalf("create in unassigned shard: %v", err)
	}

	// A shard assigned to a store that is not registered.
	e.assign(1, "ghost", 2)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	_, err = c.Get(ctx2, id, false)
	if !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), `store "ghost", which is not registered`) {
		t.Fatalf("get in shard of unregistered store: %v", err)
	}
}

func TestNodeWaitsForClusterConfig(t *testing.T) {
	e := newEnv(t, 2, false)
	ctx := ctxT(t)
	n, err := sessionstore.Start(ctx, e.nodeConfig("a", t.TempDir()), logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	_, err = raw(t, n.Addr()).GetSession(ctx, &pb.GetSessionRequest{Id: "x"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "starting") {
		t.Fatalf("before config: %v; want UNAVAILABLE starting", err)
	}
	e.writeConfig()
	e.spread("a")
	select {
	case <-n.Ready():
	case <-ctx.Done():
		t.Fatal("node never became ready after the cluster config appeared")
	}
	c := e.client()
	if _, err := c.Create(ctx, "x", nil, 0); err != nil {
		t.Fatal(err)
	}
	// Registered under members/store with the real address.
	resp, err := e.cli.Get(ctx, e.prefix+"members/store/a")
	if err != nil || len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), n.Addr()) {
		t.Fatalf("membership: %v %v", resp, err)
	}
}

func errInfo(err error) *errdetails.ErrorInfo {
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei
		}
	}
	return nil
}

func hintOf(err error) *pb.ShardHint {
	for _, d := range status.Convert(err).Details() {
		if h, ok := d.(*pb.ShardHint); ok {
			return h
		}
	}
	return nil
}
