package etcdclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/testcluster"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// freezeProxy forwards TCP to one etcd member and can freeze: while frozen
// it keeps every connection open but moves no byte, which is what a client
// sees of a SIGSTOPped member.
type freezeProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	frozen chan struct{} // nil: flowing; open channel: frozen until closed
	conns  []net.Conn
}

func startProxy(t *testing.T, target string) *freezeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{ln: ln, target: target}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	t.Cleanup(p.close)
	return p
}

func (p *freezeProxy) addr() string { return p.ln.Addr().String() }

func (p *freezeProxy) serve(c net.Conn) {
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, u)
	p.mu.Unlock()
	go p.pipe(u, c)
	p.pipe(c, u)
}

func (p *freezeProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.wait()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *freezeProxy) wait() {
	p.mu.Lock()
	ch := p.frozen
	p.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

func (p *freezeProxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen == nil {
		p.frozen = make(chan struct{})
	}
}

func (p *freezeProxy) thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen != nil {
		close(p.frozen)
		p.frozen = nil
	}
}

func (p *freezeProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen != nil {
		close(p.frozen)
		p.frozen = nil
	}
	for _, c := range p.conns {
		_ = c.Close()
	}
}

// startEtcd3 starts a 3-member embedded etcd on loopback and returns the
// members' client URLs.
func startEtcd3(t *testing.T) []string {
	// Slow enough for a loaded 2-core box, fast enough for short leases.
	return testcluster.StartEtcdMembers(t, 3, 50, 1000)
}

// A client whose member freezes keeps working within a few seconds: a Put
// with a per-call timeout is retried onto a healthy member, and the lease
// kept alive by KeepAlive is renewed before it could lapse. (clientv3's own
// KeepAlive stream, pinned to the frozen member, gets no answer until gRPC
// keepalive closes the connection after 12 s, so with a 10 s lease its
// channel closes: swap it in and this test fails.)
func TestFrozenMemberFailover(t *testing.T) {
	urls := startEtcd3(t)
	p := startProxy(t, strings.TrimPrefix(urls[0], "http://"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const ttl = 10 // seconds; keepalive requests go every ttl/3
	// Only the proxied member: the test adds the other members itself.
	cli, g := clientWithLease(ctx, t, "http://"+p.addr(), ttl)
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	ka := KeepAlive(kctx, cli, g.ID)
	select {
	case <-ka:
	case <-time.After(30 * time.Second):
		t.Fatal("no first keepalive ack")
	}
	// The keepalive stream now lives on the proxied connection; make the
	// healthy members known, then freeze the one in use.
	cli.SetEndpoints("http://"+p.addr(), urls[1], urls[2])
	// Drain acks that were already on their way.
	for len(ka) > 0 {
		<-ka
	}
	p.freeze()
	frozeAt := time.Now()

	// A Put with a per-call timeout, retried, lands on a healthy member.
	var putAfter time.Duration
	for {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		_, err := cli.Put(pctx, "/etcdclient-test/k", "v")
		pcancel()
		if err == nil {
			putAfter = time.Since(frozeAt)
			break
		}
		if time.Since(frozeAt) > 20*time.Second {
			t.Fatalf("no Put succeeded within 20s of freezing the member: %v", err)
		}
	}

	// The lease keepalive is answered again before the lease could lapse.
	deadline := time.After(time.Duration(ttl) * time.Second)
	for {
		select {
		case r, ok := <-ka:
			if !ok {
				t.Fatalf("keepalive channel closed %s after the member froze: the lease lapsed", time.Since(frozeAt).Round(time.Millisecond))
			}
			if r.TTL <= 0 {
				t.Fatalf("keepalive answered TTL %s: the lease expired", r.TTL)
			}
			t.Logf("member frozen: Put succeeded after %s, lease keepalive answered after %s", putAfter.Round(time.Millisecond), time.Since(frozeAt).Round(time.Millisecond))
			// The lease is alive as seen by another member.
			other, err := clientv3.New(clientv3.Config{Endpoints: urls[1:], DialTimeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer other.Close()
			tl, err := other.TimeToLive(ctx, g.ID)
			if err != nil || tl.TTL <= 0 {
				t.Fatalf("lease after failover: TTL %v, err %v", tl, err)
			}
			return
		case <-deadline:
			t.Fatalf("no keepalive ack within %ds of freezing the member the stream was on", ttl)
		}
	}
}

func TestNewNamesEndpointsWhenUnreachable(t *testing.T) {
	addr := testcluster.FreeAddr(t) // nothing listens here
	cfg := DefaultConfig("http://" + addr)
	cfg.DialTimeout, cfg.ConnectTimeout = 300*time.Millisecond, time.Second
	_, err := New(context.Background(), cfg)
	if err == nil {
		t.Fatal("New succeeded against an address where nothing listens")
	}
	if !strings.Contains(err.Error(), addr) {
		t.Fatalf("error %q does not name the endpoint %s", err, addr)
	}
	var target error = context.DeadlineExceeded
	if !errors.Is(err, target) {
		t.Logf("error (not a deadline, fine): %v", err)
	}
}

func TestValidate(t *testing.T) {
	good := DefaultConfig("http://127.0.0.1:2379")
	if err := good.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for name, change := range map[string]func(*Config){
		"no endpoints":    func(c *Config) { c.Endpoints = nil },
		"empty endpoint":  func(c *Config) { c.Endpoints = []string{" "} },
		"dial timeout":    func(c *Config) { c.DialTimeout = 0 },
		"connect timeout": func(c *Config) { c.ConnectTimeout = 0 },
		"keepalive time":  func(c *Config) { c.KeepAliveTime = 2 * time.Second },
		"keepalive wait":  func(c *Config) { c.KeepAliveTimeout = -time.Second },
		"negative resync": func(c *Config) { c.AutoSyncInterval = -time.Second },
	} {
		c := good
		change(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
	}
}

// KeepAlive's channel closes when the lease is revoked, so a holder learns
// it lost the lease.
func TestKeepAliveClosesOnRevoke(t *testing.T) {
	e := testcluster.StartEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cli, err := New(ctx, DefaultConfig(e.Endpoint))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	g, err := cli.Grant(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	ka := KeepAlive(ctx, cli, g.ID)
	if r, ok := <-ka; !ok || r.TTL <= 0 {
		t.Fatalf("first renewal: %+v (channel open %v)", r, ok)
	}
	if _, err := cli.Revoke(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case _, ok := <-ka:
			if !ok {
				return
			}
		case <-ctx.Done():
			t.Fatal("keepalive channel still open a minute after the revoke")
		}
	}
}

// A renewal sent to a member cut off from its quorum is answered "no
// leader" at once, so the hedged renewal moves on to another member,
// instead of waiting there for a leader until its deadline.
func TestRenewalRefusedAtOnceWithoutLeader(t *testing.T) {
	servers := testcluster.StartEtcdServers(t, 2, 10, 100)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cli, g := clientWithLease(ctx, t, servers[0].ClientURL(), 30)
	servers[1].Close() // the member left has no quorum, so no leader
	testcluster.WaitFor(t, 20*time.Second, "a quick no-leader answer", func() error {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		defer acancel()
		start := time.Now()
		_, err := RenewOnce(actx, cli, g.ID)
		if errors.Is(err, rpctypes.ErrNoLeader) && time.Since(start) < time.Second {
			return nil
		}
		return fmt.Errorf("renewal answered %v after %s", err, time.Since(start).Round(time.Millisecond))
	})
}

// A renewal answered late bounds the lease by when it was sent: etcd's
// leader renewed it then or after, but possibly long before the answer
// arrived, so a bound taken from the answer's arrival could outlast the
// lease at etcd.
func TestRenewalCountsFromSending(t *testing.T) {
	e := testcluster.StartEtcd(t)
	p := startProxy(t, strings.TrimPrefix(e.Endpoint, "http://"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cli, g := clientWithLease(ctx, t, "http://"+p.addr(), 10)
	const late = 1500 * time.Millisecond
	p.freeze()
	time.AfterFunc(late, p.thaw)
	sent := time.Now()
	r, err := RenewOnce(ctx, cli, g.ID)
	answered := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if answered.Sub(sent) < late {
		t.Fatalf("answered after %s, before the proxy thawed", answered.Sub(sent))
	}
	if r.TTL != 10*time.Second || r.Sent.Before(sent) || r.Sent.Sub(sent) > late/2 {
		t.Fatalf("renewal %+v: want TTL 10s, sent at the call (%s), not at the answer (%s)", r, sent.Format(time.StampMilli), answered.Format(time.StampMilli))
	}
	if got, want := r.Expiry(time.Second), r.Sent.Add(9*time.Second); !got.Equal(want) {
		t.Fatalf("Expiry(1s) = %s, want %s", got, want)
	}
}

// clientWithLease connects to endpoint only (no member discovery, so the
// test decides which member the calls reach) and grants a lease of ttl
// seconds; the client is closed when the test ends.
func clientWithLease(ctx context.Context, t *testing.T, endpoint string, ttl int64) (*clientv3.Client, *clientv3.LeaseGrantResponse) {
	t.Helper()
	cfg := DefaultConfig(endpoint)
	cfg.AutoSyncInterval = 0
	cli, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	g, err := cli.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return cli, g
}
