package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/front"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
)

func TestDeployQuantile(t *testing.T) {
	// 100 samples: 90 under 10 ms, 10 between 100 ms and 1 s.
	b := map[float64]float64{0.01: 90, 0.1: 90, 1: 100, math.Inf(1): 100}
	if got := quantile(0.95, b); math.Abs(got-0.55) > 1e-9 {
		t.Fatalf("p95 = %v, want 0.55 (halfway through the 0.1..1 bucket)", got)
	}
	if got := quantile(0.5, b); math.Abs(got-0.01*50/90) > 1e-9 {
		t.Fatalf("p50 = %v", got)
	}
	// Everything beyond the last finite bound reports that bound.
	if got := quantile(0.95, map[float64]float64{1: 0, math.Inf(1): 10}); got != 1 {
		t.Fatalf("p95 beyond the buckets = %v, want 1", got)
	}
	if !math.IsNaN(quantile(0.95, map[float64]float64{1: 0, math.Inf(1): 0})) {
		t.Fatal("p95 of nothing is not NaN")
	}
}

// metricsWorker serves a worker's /metrics whose counters grow by step on
// every scrape: each scrape sees `requests` more requests, `errors` of them
// 5xx, all taking about `latency`.
func metricsWorker(t *testing.T, requests, errors int, latency float64) *httptest.Server {
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		k := n.Add(1)
		ok, bad := k*int64(requests-errors), k*int64(errors)
		total := ok + bad
		fmt.Fprintf(w, "# TYPE erlmcp_worker_requests_total counter\n")
		fmt.Fprintf(w, "erlmcp_worker_requests_total{code=\"200\",method=\"tools/call\"} %d\n", ok)
		fmt.Fprintf(w, "erlmcp_worker_requests_total{code=\"503\",method=\"tools/call\"} %d\n", bad)
		fmt.Fprintf(w, "# TYPE erlmcp_worker_request_duration_seconds histogram\n")
		for _, le := range []float64{0.01, 0.1, 1, 10} {
			c := int64(0)
			if latency <= le {
				c = total
			}
			fmt.Fprintf(w, "erlmcp_worker_request_duration_seconds_bucket{method=\"tools/call\",le=\"%g\"} %d\n", le, c)
		}
		fmt.Fprintf(w, "erlmcp_worker_request_duration_seconds_bucket{method=\"tools/call\",le=\"+Inf\"} %d\n", total)
		fmt.Fprintf(w, "erlmcp_worker_request_duration_seconds_sum{method=\"tools/call\"} %g\n", float64(total)*latency)
		fmt.Fprintf(w, "erlmcp_worker_request_duration_seconds_count{method=\"tools/call\"} %d\n", total)
	}))
	t.Cleanup(s.Close)
	return s
}

// TestCtlDeployGate: the gate reads the workers of the version named (and
// only those) over the window; a clean version passes, 5xx above the rate
// or a slow p95 fails with exit 1, and a version with no traffic fails
// rather than passing on no evidence.
func TestCtlDeployGate(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx := context.Background()
	put := func(id, version string, s *httptest.Server) {
		m := membership.Member{Role: membership.RoleWorker, ID: id, Addr: strings.TrimPrefix(s.URL, "http://"), Version: version, StartedAt: time.Now()}
		b, _ := json.Marshal(m)
		if _, err := cli.Put(ctx, membership.Key(e.Prefix, m.Role, m.ID), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	put("worker-1", "good", metricsWorker(t, 50, 0, 0.005))
	put("worker-2", "good", metricsWorker(t, 50, 0, 0.005))
	put("worker-3", "erroring", metricsWorker(t, 50, 5, 0.005))
	put("worker-4", "slow", metricsWorker(t, 50, 0, 5))
	put("worker-5", "idle", metricsWorker(t, 0, 0, 0.005))

	gate := func(version string, extra ...string) (int, string, string) {
		args := append([]string{"deploy", "gate", "--etcd-endpoints", e.Endpoint, "--etcd-prefix", e.Prefix, "--version", version,
			"--window", "200ms", "--max-wait", "1s", "--max-error-rate", "0.01", "--max-p95", "500ms", "--min-requests", "10"}, extra...)
		return ctl(t, nil, args...)
	}
	code, out, errs := gate("good")
	if code != exitOK || !strings.Contains(out, "gate passed: version good") || !strings.Contains(out, "100 requests, error rate 0.0000") {
		t.Fatalf("good: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs := gate("erroring"); code != exitFailure || !strings.Contains(errs, "gate missed (error rate)") || !strings.Contains(errs, "error rate 0.1000") {
		t.Fatalf("erroring: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs := gate("slow"); code != exitFailure || !strings.Contains(errs, "gate missed (p95)") {
		t.Fatalf("slow: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs := gate("idle"); code != exitFailure || !strings.Contains(errs, "no evidence is not a pass") {
		t.Fatalf("idle: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs := gate("absent"); code != exitFailure || !strings.Contains(errs, "no worker of version absent") {
		t.Fatalf("absent: exit %d\n%s%s", code, out, errs)
	}
}

// TestCtlDeployTrafficAndUsage: traffic writes the split the fronts read
// (there are none here, so nothing to wait for) and --clear removes it;
// status shows it; bad usage exits 2.
func TestCtlDeployTrafficAndUsage(t *testing.T) {
	e := testcluster.StartEtcd(t)
	base := []string{"--etcd-endpoints", e.Endpoint, "--etcd-prefix", e.Prefix}
	run := func(args ...string) (int, string, string) {
		return ctl(t, nil, append(append([]string{"deploy"}, args[:1]...), append(base, args[1:]...)...)...)
	}
	if code, out, errs := run("traffic", "--version", "v2", "--weight", "10"); code != exitOK || out != "traffic: 10% to version v2\n" {
		t.Fatalf("traffic: exit %d %q %s", code, out, errs)
	}
	resp, err := e.Client().Get(context.Background(), front.TrafficKey(e.Prefix))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("split not stored: %v %v", resp, err)
	}
	if tr, err := front.ParseTraffic(resp.Kvs[0].Value); err != nil || tr.Version != "v2" || tr.Weight != 10 {
		t.Fatalf("stored split %+v, %v", tr, err)
	}
	if code, out, errs := run("status", "--plain"); code != exitOK || !strings.Contains(out, "traffic v2 10\n") {
		t.Fatalf("status: exit %d %q %s", code, out, errs)
	}
	if code, out, errs := run("traffic", "--clear"); code != exitOK {
		t.Fatalf("clear: exit %d %q %s", code, out, errs)
	}
	if code, out, _ := run("status", "--plain"); code != exitOK || !strings.Contains(out, "traffic - 0\n") {
		t.Fatalf("status after clear: %q", out)
	}
	for _, args := range [][]string{
		{"traffic", "--version", "v2", "--weight", "101"},
		{"traffic", "--weight", "5"},
		{"traffic", "--clear", "--version", "v2"},
		{"start", "--version", "v2"},
		{"stop", "--version", "v2", "--except-version", "v1"},
		{"gate", "--version", "v2", "--window", "0s"},
		{"gate"},
		{"launch"},
	} {
		if code, out, errs := run(args...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d\n%s%s", args, code, exitUsage, out, errs)
		}
	}
	if code, _, errs := ctl(t, nil, "deploy", "start", "--data-dir", t.TempDir(), "--etcd-endpoints", e.Endpoint, "--binary", "/bin/true", "--version", "v2"); code != exitFailure || !strings.Contains(errs, "local actuator") {
		t.Errorf("start without a local cluster: exit %d, %s", code, errs)
	}
}
