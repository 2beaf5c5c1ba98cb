package sessionstore_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	"github.com/erlmcp/erlmcp/sessionstore"
	"github.com/erlmcp/erlmcp/sessionstore/client"
)

// scrape is one /metrics answer: series (name{labels} as exposed, labels
// sorted by the exposition) → value.
type scrape map[string]float64

func getScrape(t *testing.T, httpAddr string) scrape {
	t.Helper()
	code, body := httpGet(t, "http://"+httpAddr+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	out := scrape{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// find returns the value of the series named name whose labels include
// every one of want (each `k="v"`), and whether there is exactly one.
func (s scrape) find(name string, want ...string) (float64, bool) {
	var v float64
	n := 0
	for k, val := range s {
		if !strings.HasPrefix(k, name+"{") && k != name {
			continue
		}
		ok := true
		for _, w := range want {
			if !strings.Contains(k, w) {
				ok = false
			}
		}
		if ok {
			v, n = val, n+1
		}
	}
	return v, n == 1
}

func (s scrape) must(t *testing.T, name string, want ...string) float64 {
	t.Helper()
	v, ok := s.find(name, want...)
	if !ok {
		t.Fatalf("no single series %s%v in /metrics", name, want)
	}
	return v
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestMetricsAndHealth: a node's HTTP listener is registered as http_addr;
// /readyz says why it is not ready before the shard map exists and 200
// once its shards have leaders; after some writes /metrics counts them by
// method and code, times them, counts the sessions of the led shards, the
// replicas by state, the leader changes, and storage is healthy.
func TestMetricsAndHealth(t *testing.T) {
	const shards = 4
	e := newEnv(t, shards, false)
	cfg := e.nodeConfig("m1", t.TempDir())
	cfg.Common.Region, cfg.Common.Zone = "r1", "r1a"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := sessionstore.Start(ctx, cfg, logging.Discard().WithField("node", "m1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	addr := n.HTTPAddr()
	if addr == "" {
		t.Fatal("no HTTP listener although HTTPListen is set")
	}
	resp, err := e.cli.Get(ctx, membership.Key(e.prefix, membership.RoleStore, "m1"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("membership key: %v %v", resp, err)
	}
	var m membership.Member
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil || m.HTTPAddr != addr {
		t.Fatalf("registered http_addr %q, want %q (%v)", m.HTTPAddr, addr, err)
	}
	if code, body := httpGet(t, "http://"+addr+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz before ready: %d %s", code, body)
	}
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "shard map") {
		t.Fatalf("/readyz without a shard map: %d %q, want 503 naming the shard map", code, body)
	}

	e.writeConfig()
	e.spread("m1")
	select {
	case <-n.Ready():
	case <-ctx.Done():
		t.Fatal("node not ready")
	}
	testcluster.WaitFor(t, raftWait, "/readyz 200", func() error {
		if code, body := httpGet(t, "http://"+addr+"/readyz"); code != http.StatusOK {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})

	cl := e.client()
	const created = 7
	for i := range created {
		if _, err := cl.Create(ctxT(t), fmt.Sprintf("s%d", i), []byte("x"), 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.Get(ctxT(t), "s0", false); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Get(ctxT(t), "missing", false); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	if err := cl.Delete(ctxT(t), "s6"); err != nil {
		t.Fatal(err)
	}

	s := getScrape(t, addr)
	node := `node="m1"`
	if v := s.must(t, "erlmcp_store_requests_total", `method="CreateSession"`, `code="OK"`, `role="store"`, node, `region="r1"`, `zone="r1a"`); v != created {
		t.Errorf("CreateSession OK count %v, want %d", v, created)
	}
	if v := s.must(t, "erlmcp_store_requests_total", `method="GetSession"`, `code="NotFound"`); v != 1 {
		t.Errorf("GetSession NotFound count %v, want 1", v)
	}
	if v := s.must(t, "erlmcp_store_requests_total", `method="GetSession"`, `code="OK"`); v != 1 {
		t.Errorf("GetSession OK count %v, want 1", v)
	}
	if v := s.must(t, "erlmcp_store_request_duration_seconds_count", `method="CreateSession"`); v != created {
		t.Errorf("CreateSession duration count %v, want %d", v, created)
	}
	if sum := s.must(t, "erlmcp_store_request_duration_seconds_sum", `method="CreateSession"`); sum <= 0 || sum > 60 {
		t.Errorf("CreateSession duration sum %v s: not plausible", sum)
	}
	// The gauge is a local read of the applied state: wait for the delete.
	testcluster.WaitFor(t, raftWait, "erlmcp_store_sessions to count the sessions", func() error {
		if v := getScrape(t, addr).must(t, "erlmcp_store_sessions", node); v != created-1 {
			return fmt.Errorf("sessions %v, want %d (created minus the deleted one)", v, created-1)
		}
		return nil
	})
	if v := s.must(t, "erlmcp_store_shard_replicas", `state="leader"`); v != shards {
		t.Errorf("leader replicas %v, want %d", v, shards)
	}
	if v := s.must(t, "erlmcp_store_shard_replicas", `state="voter"`) + s.must(t, "erlmcp_store_shard_replicas", `state="learner"`); v != 0 {
		t.Errorf("voter+learner replicas %v, want 0 on a single-replica node", v)
	}
	for i := range shards {
		if v := s.must(t, "erlmcp_store_replication_lag_entries", fmt.Sprintf(`shard="%d"`, i)); v != 0 {
			t.Errorf("lag of shard %d: %v, want 0 (no followers)", i, v)
		}
	}
	// Leader changes are sampled every Raft tick (observeLeaders): the
	// requests above can all finish before the first sample.
	testcluster.WaitFor(t, raftWait, "every shard's election counted", func() error {
		if v := getScrape(t, addr).must(t, "erlmcp_store_raft_leader_changes_total", node); v < shards {
			return fmt.Errorf("leader changes %v, want >= %d (every shard elected once)", v, shards)
		}
		return nil
	})
	if v := s.must(t, "erlmcp_store_storage_healthy", node); v != 1 {
		t.Errorf("storage_healthy %v, want 1", v)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := s.find(name); !ok {
			t.Errorf("%s missing", name)
		}
	}
	// The Raft transport is not counted as a store request.
	for k := range s {
		if strings.Contains(k, "RaftService") || strings.Contains(k, "Batch") {
			t.Errorf("Raft transport counted: %s", k)
		}
	}
}
