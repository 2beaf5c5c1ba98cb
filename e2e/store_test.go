package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/localcluster"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/sessionstore/client"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestUpStoreKillLosesNoAcknowledgedWrite: `erlmcp up` runs every shard as
// a Raft group of three store replicas. Sessions are CAS-incremented
// directly through the session store client while the store node leading
// the most shards is SIGKILLed; writes go on through the new leaders, and
// afterwards every acknowledged version is present.
func TestUpStoreKillLosesNoAcknowledgedWrite(t *testing.T) {
	dataDir := t.TempDir()
	c := startUp(t, dataDir, pickPorts(t))

	cli, _ := etcdClient(t, dataDir)
	prefix := localcluster.Prefix
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The control plane places three voters per shard, and every shard
	// gets a leader that reports status.
	var shardCount int
	waitFor(t, 60*time.Second, "every shard placed on 3 voters with a leader", func() error {
		cc, err := clusterstate.GetConfig(ctx, cli, prefix)
		if err != nil {
			return err
		}
		shardCount = cc.ShardCount
		resp, err := cli.Get(ctx, clusterstate.ShardsPrefix(prefix), clientv3.WithPrefix())
		if err != nil {
			return err
		}
		kvs := map[string][]byte{}
		for _, kv := range resp.Kvs {
			kvs[string(kv.Key)] = kv.Value
		}
		for _, sh := range clusterstate.DecodeShards(prefix, cc.ShardCount, kvs) {
			voters := 0
			for _, r := range sh.Replicas {
				if r.Role == clusterstate.RoleVoter && r.ID != 0 {
					voters++
				}
			}
			if voters != 3 {
				return fmt.Errorf("shard %d: %+v", sh.Shard, sh.Replicas)
			}
		}
		if lead := leadersByStore(ctx, t, cli, prefix); total(lead) < cc.ShardCount {
			return fmt.Errorf("leaders reported for %d of %d shards", total(lead), cc.ShardCount)
		}
		return nil
	})

	// Every store serves /readyz and /metrics on the HTTP address it
	// registered (erlmcp up gives each one a port).
	waitFor(t, 30*time.Second, "every store ready on its registered http_addr, with metrics", func() error {
		resp, err := cli.Get(ctx, membership.RolePrefix(prefix, membership.RoleStore), clientv3.WithPrefix())
		if err != nil {
			return err
		}
		kvs := map[string][]byte{}
		for _, kv := range resp.Kvs {
			kvs[string(kv.Key)] = kv.Value
		}
		ms := membership.FromKVs(kvs)
		if len(ms) != 3 {
			return fmt.Errorf("%d stores registered", len(ms))
		}
		for _, m := range ms {
			if m.HTTPAddr == "" {
				return fmt.Errorf("store %s registered no http_addr", m.ID)
			}
			for path, want := range map[string]string{"/readyz": "ready", "/metrics": "erlmcp_store_shard_replicas"} {
				code, body, err := httpGetBody(ctx, "http://"+m.HTTPAddr+path)
				if err != nil || code != http.StatusOK || !strings.Contains(body, want) {
					return fmt.Errorf("store %s GET %s: %d %.200q %v", m.ID, path, code, body, err)
				}
			}
		}
		return nil
	})

	sc, err := client.New(ctx, client.Config{Etcd: cli, Prefix: prefix, RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if err := sc.Ready(ctx); err != nil {
		t.Fatal(err)
	}

	const sessions = 16
	var (
		mu    sync.Mutex
		acked = map[string]uint64{}
		n     atomic.Int64
		stop  atomic.Bool
		wg    sync.WaitGroup
		// killedAt is the SIGKILL's time (unix ns; 0 before it);
		// firstAfter[i] is how long after it session i's first write was
		// acknowledged.
		killedAt   atomic.Int64
		firstAfter = make([]time.Duration, sessions)
	)
	ids := make([]string, sessions)
	for i := range ids {
		ids[i] = fmt.Sprintf("e2e-counter-%d", i)
		// Leadership may still be moving to the shard map's target
		// leaders: retry within a deadline; a retry that finds the record
		// means an earlier attempt with an unknown outcome created it.
		// A first attempt that finds it is a store bug (fresh cluster,
		// fresh ids).
		failedBefore := false
		waitFor(t, 20*time.Second, "create "+ids[i], func() error {
			_, err := sc.Create(ctx, ids[i], []byte("1"), 0)
			if errors.Is(err, client.ErrAlreadyExists) {
				if !failedBefore {
					t.Fatalf("create %s on a fresh cluster: %v", ids[i], err)
				}
				return nil
			}
			failedBefore = failedBefore || err != nil
			return err
		})
		acked[ids[i]] = 1
	}
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ver := uint64(1)
			seen := false
			for !stop.Load() {
				wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
				s, err := sc.CompareAndSet(wctx, id, ver, fmt.Appendf(nil, "%d", ver+1))
				wcancel()
				switch {
				case err == nil:
					ver = s.Version
					n.Add(1)
					mu.Lock()
					acked[id] = max(acked[id], ver)
					mu.Unlock()
					if k := killedAt.Load(); k != 0 && !seen {
						seen = true
						firstAfter[i] = time.Since(time.Unix(0, k))
					}
				case errors.Is(err, client.ErrVersionConflict):
					if g, gerr := sc.Get(ctx, id, false); gerr == nil {
						ver = g.Version
					}
				}
			}
		}()
	}
	waitN := func(what string, want int64) {
		waitFor(t, 30*time.Second, what, func() error {
			if got := n.Load(); got < want {
				return fmt.Errorf("%d acknowledged writes, want %d", got, want)
			}
			return nil
		})
	}
	waitN("writes before the kill", 200)

	lead := leadersByStore(ctx, t, cli, prefix)
	victim := ""
	for s, k := range lead {
		if victim == "" || k > lead[victim] {
			victim = s
		}
	}
	pid := 0
	for _, m := range c.members() {
		if m.Role == "store" && m.ID == victim {
			pid = m.PID
		}
	}
	if pid <= 0 {
		t.Fatalf("no pid for store %s", victim)
	}
	before := n.Load()
	t.Logf("SIGKILL store %s (pid %d), leader of %d of %d shards, after %d acknowledged writes", victim, pid, lead[victim], shardCount, before)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	killedAt.Store(killed.UnixNano())
	waitN("writes after the kill", before+int64(sessions))
	t.Logf("first %d writes after the kill within %v", sessions, time.Since(killed))
	waitN("more writes after the kill", before+400)
	stop.Store(true)
	wg.Wait()
	// Failover time: SIGKILL to the first acknowledged write of the session
	// that waited longest (its shard was led by the killed store; sessions
	// on other shards go on at once).
	slices.Sort(firstAfter)
	t.Logf("STORE_FAILOVER SIGKILL of the leader of %d shards to first acknowledged write: max %v, median %v over %d sessions",
		lead[victim], firstAfter[len(firstAfter)-1].Round(time.Millisecond), firstAfter[len(firstAfter)/2].Round(time.Millisecond), sessions)

	for _, id := range ids {
		g, err := sc.Get(ctx, id, false)
		if err != nil {
			t.Fatalf("read %s: %v", id, err)
		}
		if g.Version < acked[id] || string(g.Data) != fmt.Sprint(g.Version) {
			t.Fatalf("%s: stored version %d (data %q), acknowledged up to %d: an acknowledged write was lost", id, g.Version, g.Data, acked[id])
		}
	}
	t.Logf("%d acknowledged CAS writes over %d sessions, none lost", n.Load(), sessions)
}

// leadersByStore counts, from the status keys store nodes write, the shards
// each store leads.
func leadersByStore(ctx context.Context, t *testing.T, cli *clientv3.Client, prefix string) map[string]int {
	t.Helper()
	resp, err := cli.Get(ctx, prefix+"status/shards/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, kv := range resp.Kvs {
		var v struct {
			Role string `json:"role"`
		}
		if json.Unmarshal(kv.Value, &v) != nil || v.Role != "leader" {
			continue
		}
		parts := strings.Split(string(kv.Key), "/")
		out[parts[len(parts)-1]]++
	}
	return out
}

func total(m map[string]int) int {
	s := 0
	for _, v := range m {
		s += v
	}
	return s
}

func httpGetBody(ctx context.Context, url string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}
