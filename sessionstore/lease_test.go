package sessionstore

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/etcdclient"
	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func startInternal(t *testing.T, change func(*Config)) (*Node, *testcluster.Etcd) {
	t.Helper()
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	put := func(k string, v any) {
		b, _ := json.Marshal(v)
		if _, err := cli.Put(ctx, k, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	put(clusterstate.ConfigKey(e.Prefix), clusterstate.ClusterConfig{ShardCount: 1, ReplicationFactor: 1})
	put(clusterstate.ShardKey(e.Prefix, 0), clusterstate.Shard{Replicas: []clusterstate.Replica{{Store: "s1", Role: clusterstate.RoleVoter}}})
	cfg := DefaultConfig()
	cfg.Common = config.DefaultCommon()
	cfg.Common.ID, cfg.Common.EtcdEndpoints, cfg.Common.Prefix = "s1", e.Endpoint, e.Prefix
	cfg.Common.LeaseTTL = 2 * time.Second
	cfg.Listen, cfg.DataDir = "127.0.0.1:0", t.TempDir()
	if change != nil {
		change(&cfg)
	}
	n, err := Start(ctx, cfg, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	select {
	case <-n.Ready():
	case <-ctx.Done():
		t.Fatal("node not ready")
	}
	return n, e
}

// TestStopsServingWithoutLease: when the membership lease is lost the node
// answers UNAVAILABLE (and health NOT_SERVING) until it is registered
// again under a new lease.
func TestStopsServingWithoutLease(t *testing.T) {
	lost := make(chan struct{}, 1)
	back := make(chan struct{}, 1)
	release := make(chan struct{})
	n, e := startInternal(t, func(c *Config) {
		c.leaseHook = func(held bool) {
			if held {
				select {
				case back <- struct{}{}:
				default:
				}
				return
			}
			select {
			case lost <- struct{}{}:
			default:
			}
			<-release // hold the node in the lost state while the test looks
		}
	})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // runs before the node's Close
	svc := &service{n: n}
	ctx := context.Background()
	if _, err := svc.CreateSession(ctx, &pb.CreateSessionRequest{Id: "a", RequestId: "r1"}); err != nil {
		t.Fatal(err)
	}
	cli := e.Client()
	old := n.reg.LeaseID()
	if _, err := cli.Revoke(ctx, old); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("lease loss not noticed")
	}
	_, err := svc.GetSession(ctx, &pb.GetSessionRequest{Id: "a"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "membership lease") {
		t.Fatalf("request without a lease: %v; want UNAVAILABLE", err)
	}
	if hr, err := n.health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health without a lease: %v %v", hr, err)
	}
	unblock()
	select {
	case <-back:
	case <-time.After(5 * time.Second):
		t.Fatal("not serving again after re-registration")
	}
	if n.reg.LeaseID() == old {
		t.Fatal("serving again under the revoked lease")
	}
	if _, err := svc.GetSession(ctx, &pb.GetSessionRequest{Id: "a"}); err != nil {
		t.Fatalf("after re-registration: %v", err)
	}
	if hr, _ := n.health.Check(ctx, &healthpb.HealthCheckRequest{}); hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after re-registration: %v", hr)
	}
}

// TestServesAgainWhenLeaseOutlivesKeepAlive: the node's own keepalive
// gives up (as after a TTL without an answer from etcd) while the lease
// lives on at etcd (membership's renewals got through); the node stops
// serving, and must serve again under the same lease instead of waiting
// for a new one that never comes.
func TestServesAgainWhenLeaseOutlivesKeepAlive(t *testing.T) {
	lost := make(chan struct{}, 1)
	back := make(chan struct{}, 1)
	var calls atomic.Int32
	n, _ := startInternal(t, func(c *Config) {
		c.leaseHook = func(held bool) {
			ch := lost
			if held {
				ch = back
			}
			select {
			case ch <- struct{}{}:
			default:
			}
		}
		c.keepAlive = func(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID) <-chan etcdclient.Renewal {
			if calls.Add(1) == 1 {
				ch := make(chan etcdclient.Renewal)
				close(ch) // gave up
				return ch
			}
			return etcdclient.KeepAlive(ctx, cli, id)
		}
	})
	lease := n.reg.LeaseID()
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the keepalive giving up did not stop the node serving")
	}
	select {
	case <-back:
	case <-time.After(10 * time.Second):
		t.Fatal("not serving again although its lease is alive")
	}
	if got := n.reg.LeaseID(); got != lease {
		t.Fatalf("lease changed %x -> %x; the test wants the same lease to serve again", lease, got)
	}
	if _, err := (&service{n: n}).CreateSession(context.Background(), &pb.CreateSessionRequest{Id: "a", RequestId: "r1"}); err != nil {
		t.Fatalf("serving again: %v", err)
	}
}

// TestAdvertise: --listen on all interfaces registers hostname:port;
// --advertise registers what it says.
func TestAdvertise(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skip("no hostname:", err)
	}
	n, e := startInternal(t, func(c *Config) { c.Listen = "0.0.0.0:0" })
	_, port, _ := net.SplitHostPort(n.Addr())
	want := net.JoinHostPort(host, port)
	ms, err := membership.List(context.Background(), e.Client(), e.Prefix, membership.RoleStore)
	if err != nil || len(ms) != 1 || ms[0].Addr != want || n.AdvertiseAddr() != want {
		t.Fatalf("registered %+v (%v); want addr %s", ms, err, want)
	}

	n2, e2 := startInternal(t, func(c *Config) { c.Advertise = "store-1.example:7000" })
	ms, err = membership.List(context.Background(), e2.Client(), e2.Prefix, membership.RoleStore)
	if err != nil || len(ms) != 1 || ms[0].Addr != "store-1.example:7000" || n2.AdvertiseAddr() != "store-1.example:7000" {
		t.Fatalf("registered %+v (%v); want the advertised address", ms, err)
	}
}

func TestServingUntilCountsFromSending(t *testing.T) {
	now := time.Now()
	ttl := 5 * time.Second
	at := func(d time.Duration) time.Time { return now.Add(d) }
	lost := time.Time{}
	for _, tc := range []struct {
		name string
		cur  *time.Time
		r    etcdclient.Renewal
		want time.Time
	}{
		// Sent 2 s ago, answered now: the lease lives until sent + TTL at
		// least, not answer + TTL.
		{"late answer", nil, etcdclient.Renewal{Sent: at(-2 * time.Second), TTL: ttl}, at(2500 * time.Millisecond)},
		{"after loss", &lost, etcdclient.Renewal{Sent: now, TTL: ttl}, at(4500 * time.Millisecond)},
		{"extends", ptr(at(time.Second)), etcdclient.Renewal{Sent: now, TTL: ttl}, at(4500 * time.Millisecond)},
		// An earlier attempt answered after a later one: keep the later bound.
		{"never back", ptr(at(4500 * time.Millisecond)), etcdclient.Renewal{Sent: at(-time.Second), TTL: ttl}, at(4500 * time.Millisecond)},
	} {
		if got := servingUntil(tc.cur, tc.r); !got.Equal(tc.want) {
			t.Errorf("%s: serving until now%+v, want now%+v", tc.name, got.Sub(now), tc.want.Sub(now))
		}
	}
}

func ptr[T any](v T) *T { return &v }
