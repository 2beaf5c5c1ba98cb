package sessionstore_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/testcluster"
	"github.com/erlmcp/erlmcp/sessionstore/client"
)

// gateProxy forwards TCP to a store node's gRPC port; each direction can
// be frozen (bytes held, connections kept open), which is what a client
// sees of a SIGSTOPped node (both directions) or of a reply lost after
// the write committed (replies only).
type gateProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	gates  [2]chan struct{} // [0] client→node, [1] node→client; nil: open
	conns  []net.Conn
}

func startGateProxy(t *testing.T, target string) *gateProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &gateProxy{ln: ln, target: target}
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

func (p *gateProxy) serve(c net.Conn) {
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, u)
	p.mu.Unlock()
	go p.pipe(1, c, u)
	p.pipe(0, u, c)
}

func (p *gateProxy) pipe(dir int, dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			g := p.gates[dir]
			p.mu.Unlock()
			if g != nil {
				<-g
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// freeze holds the bytes of the given directions until close.
func (p *gateProxy) freeze(dirs ...int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range dirs {
		if p.gates[d] == nil {
			p.gates[d] = make(chan struct{})
		}
	}
}

func (p *gateProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, g := range p.gates {
		if g != nil {
			close(g)
			p.gates[i] = nil
		}
	}
	for _, c := range p.conns {
		_ = c.Close()
	}
}

// proxiedCluster is three store nodes replicating one shard, each reached
// (by clients and by its peers) through its own gateProxy.
func proxiedCluster(t *testing.T) (*rcluster, map[string]*gateProxy) {
	c := newRCluster(t, 1, "a", "b", "c")
	proxies := map[string]*gateProxy{}
	for _, s := range []string{"a", "b", "c"} {
		cfg := c.cfgs[s]
		cfg.Listen = testcluster.FreeAddr(t)
		proxies[s] = startGateProxy(t, cfg.Listen)
		cfg.Advertise = proxies[s].ln.Addr().String()
		c.cfgs[s] = cfg
	}
	c.place(0, 1, []string{"a", "b", "c"}, nil, nil)
	c.start("a", "b", "c")
	return c, proxies
}

// storeClient has a long RequestTimeout (as the worker's, 2.5 s) so only
// the short first attempts (AttemptTimeout) can meet the 2 s budget.
func storeClient(t *testing.T, c *rcluster) *client.Client {
	t.Helper()
	cl, err := client.New(context.Background(), client.Config{Etcd: c.cli, Prefix: c.prefix, RequestTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	return cl
}

// failoverBudget is issue #6's budget for a store shard leader (2 s), with
// room for a loaded 2-core CI box; the measured figure is logged.
const failoverBudget = 3 * time.Second

// A paused shard leader (no Raft traffic, client connections frozen) is
// failed over by the client within the budget: the first attempt times out
// after AttemptTimeout and the retry reaches the new leader. With each
// attempt bounded by RequestTimeout alone (5 s here) this fails.
func TestClientFailsOverPausedLeader(t *testing.T) {
	c, proxies := proxiedCluster(t)
	cl := storeClient(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := cl.Create(ctx, "s", []byte("{}"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.PutState(ctx, "s", "k", []byte("1"), nil); err != nil {
		t.Fatal(err)
	}
	lead := c.leader(0)
	c.net.isolate(lead, true)
	proxies[lead].freeze(0, 1)
	start := time.Now()
	e, err := cl.PutState(ctx, "s", "k", []byte("2"), nil)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("write after pausing leader %s: %v", lead, err)
	}
	t.Logf("leader %s paused: first write succeeded after %s (budget 2s)", lead, took.Round(time.Millisecond))
	if took > failoverBudget {
		t.Fatalf("failover took %s, over %s", took, failoverBudget)
	}
	if e.Version != 2 {
		t.Fatalf("version %d after two writes, want 2", e.Version)
	}
}

// A write that committed but whose reply was lost is retried (after the
// leader is cut off) on the new leader with the same request id and is
// applied once: the key's version grows by one, not two.
func TestClientRetryAfterLostReplyAppliesOnce(t *testing.T) {
	c, proxies := proxiedCluster(t)
	cl := storeClient(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := cl.Create(ctx, "s", []byte("{}"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.PutState(ctx, "s", "k", []byte("1"), nil); err != nil {
		t.Fatal(err)
	}
	lead := c.leader(0)
	before, err := c.status(lead, 0)
	if err != nil {
		t.Fatal(err)
	}
	proxies[lead].freeze(1) // replies from the leader are lost
	type result struct {
		e   client.StateEntry
		err error
	}
	done := make(chan result, 1)
	go func() {
		e, err := cl.PutState(ctx, "s", "k", []byte("2"), nil)
		done <- result{e, err}
	}()
	// Wait until the write is committed and applied on a follower, then cut
	// the leader off so the retry must go to a new one.
	var follower string
	for _, s := range []string{"a", "b", "c"} {
		if s != lead {
			follower = s
			break
		}
	}
	testcluster.WaitFor(t, 30*time.Second, "the write applied on a follower", func() error {
		st, err := c.status(follower, 0)
		if err != nil {
			return err
		}
		if st.Applied <= before.Commit {
			return testcluster.Errorf("applied %d, leader committed %d before the write", st.Applied, before.Commit)
		}
		return nil
	})
	c.net.isolate(lead, true)
	proxies[lead].freeze(0)
	r := <-done
	if r.err != nil {
		t.Fatalf("retried write: %v", r.err)
	}
	got, err := cl.GetState(ctx, "s", "k")
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 2 || string(got.Value) != "2" || r.e.Version != 2 {
		t.Fatalf("after one write retried across a leader change: stored version %d value %q, answered version %d; want 2, \"2\", 2 (applied once)", got.Version, got.Value, r.e.Version)
	}
}
