package sessionstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/sessionstore/client"
)

// hedgeClient is a store client whose attempts never time out within the
// test (attemptTimeout), so a call that reaches a new leader in time can
// only have done it through a hedge.
func hedgeClient(t *testing.T, c *rcluster, attemptTimeout, hedgeDelay time.Duration) *client.Client {
	t.Helper()
	cl, err := client.New(context.Background(), client.Config{Etcd: c.cli, Prefix: c.prefix,
		RequestTimeout: attemptTimeout, AttemptTimeout: attemptTimeout, HedgeDelay: hedgeDelay})
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

// pauseLeaderAndWrite writes once, pauses the shard leader as SIGSTOP
// would (Raft traffic cut, client connections frozen: requests neither
// answered nor refused) and times the next write.
func pauseLeaderAndWrite(t *testing.T, c *rcluster, proxies map[string]*gateProxy, cl *client.Client) (string, time.Duration, client.StateEntry, error) {
	t.Helper()
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
	return lead, time.Since(start), e, err
}

// With a paused shard leader and attempts that would wait 20 s on it, a
// write completes about an election timeout (0.5-1 s with the test
// cluster's 50 ms tick) after the pause: a hedge sent to a follower after
// HedgeDelay waits there for the election and is served by, or pointed to,
// the new leader. The next write goes to the new leader directly. The
// budget is generous for a loaded 2-core machine, and far below the
// attempt timeout, which is what the write would take without hedges.
// The hedge delay is 1 s, not the default 150 ms, so that the second
// write tells apart going to the new leader first (milliseconds) from
// going to the paused one and being rescued by a hedge (at least 1 s).
func TestClientHedgeFindsNewLeaderOfPausedShard(t *testing.T) {
	const attemptTimeout = 20 * time.Second
	const budget = 6 * time.Second
	const hedgeDelay = time.Second
	c, proxies := proxiedCluster(t)
	cl := hedgeClient(t, c, attemptTimeout, hedgeDelay)
	lead, took, e, err := pauseLeaderAndWrite(t, c, proxies, cl)
	if err != nil {
		t.Fatalf("write after pausing leader %s: %v", lead, err)
	}
	t.Logf("leader %s paused: first write succeeded after %s (store leader failover budget 2 s)", lead, took.Round(time.Millisecond))
	if took > budget {
		t.Fatalf("write after pausing leader %s took %s, over %s: the hedge did not find the new leader", lead, took, budget)
	}
	if e.Version != 2 {
		t.Fatalf("version %d after two writes, want 2", e.Version)
	}
	// The hedge's winner is remembered as the shard's leader.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	if _, err := cl.PutState(ctx, "s", "k", []byte("3"), nil); err != nil {
		t.Fatalf("second write: %v", err)
	}
	if d := time.Since(start); d >= hedgeDelay {
		t.Fatalf("second write took %s, at least the hedge delay %s: it went to the paused leader first, not to the new one", d, hedgeDelay)
	}
}

// The control for the test above: with hedging off the same write waits
// out its attempt on the paused leader, so the budget there is not met by
// anything but hedges.
func TestClientWithoutHedgeWaitsOutPausedLeader(t *testing.T) {
	const attemptTimeout = 3 * time.Second
	c, proxies := proxiedCluster(t)
	cl := hedgeClient(t, c, attemptTimeout, -1)
	lead, took, _, err := pauseLeaderAndWrite(t, c, proxies, cl)
	if err != nil {
		t.Fatalf("write after pausing leader %s: %v", lead, err)
	}
	t.Logf("leader %s paused, no hedges: first write succeeded after %s", lead, took.Round(time.Millisecond))
	if took < attemptTimeout {
		t.Fatalf("write took %s without hedges, under the attempt timeout %s: the paused leader was not paused", took, attemptTimeout)
	}
}
