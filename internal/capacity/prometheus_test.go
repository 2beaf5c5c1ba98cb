package capacity

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// promBinary finds the real Prometheus (Debian package). CI installs it;
// elsewhere a missing binary skips rather than fails.
func promBinary(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("prometheus not installed (apt-get install prometheus); CI must run this test")
		}
		t.Skip("prometheus not installed")
	}
	return p
}

// TestObserveFromRealPrometheus runs Prometheus scraping a target that
// exports worker series the way erlmcp workers do (labels region and node),
// at known request rates, and checks that the planner reads them back.
func TestObserveFromRealPrometheus(t *testing.T) {
	bin := promBinary(t)
	reg := prometheus.NewRegistry()
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "erlmcp_worker_requests_total"}, []string{"region", "node", "method"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "erlmcp_worker_request_duration_seconds", Buckets: prometheus.DefBuckets}, []string{"region", "node"})
	sessions := prometheus.NewGauge(prometheus.GaugeOpts{Name: "erlmcp_store_sessions"})
	reg.MustRegister(reqs, dur, sessions)
	sessions.Set(1234)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// 200 req/s over two workers in a, 50 req/s on one worker in b.
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				reqs.WithLabelValues("a", "w1", "tools/call").Add(1)
				reqs.WithLabelValues("a", "w2", "tools/call").Add(1)
				reqs.WithLabelValues("b", "w3", "tools/call").Add(0.5)
				dur.WithLabelValues("a", "w1").Observe(0.02)
				dur.WithLabelValues("b", "w3").Observe(0.2)
			}
		}
	}()
	target := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer target.Close()

	dir := t.TempDir()
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: t\n    static_configs:\n      - targets: [%q]\n", strings.TrimPrefix(target.URL, "http://"))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.CommandContext(ctx, bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	p := Prometheus{URL: "http://" + addr, Window: 10 * time.Second}
	var obs Observed
	deadline := time.Now().Add(90 * time.Second)
	for {
		qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
		obs, err = p.Observe(qctx)
		qcancel()
		// Wait for a full rate window: before it, rate() sees a partial
		// history and the figures are low.
		if err == nil && len(obs.Regions) == 2 && obs.Regions[0].RPS >= 60 && obs.Regions[1].RPS >= 15 && obs.Regions[0].P95Seconds > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no plan input from prometheus after 90 s: %v %+v\nprometheus output:\n%s", err, obs, out.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
	a, b := obs.Regions[0], obs.Regions[1]
	if a.Name != "a" || b.Name != "b" || a.Workers != 2 || b.Workers != 1 || obs.Sessions != 1234 {
		t.Fatalf("observed %+v", obs)
	}
	// Tickers under load run late, never early: rates are at most the
	// nominal and well above nothing.
	if a.RPS < 60 || a.RPS > 220 || b.RPS < 15 || b.RPS > 55 {
		t.Errorf("rates a %.1f b %.1f, want about 200 and 50", a.RPS, b.RPS)
	}
	if a.P95Seconds > 0.05 || b.P95Seconds < 0.1 {
		t.Errorf("p95 a %.3f b %.3f", a.P95Seconds, b.P95Seconds)
	}
	if _, err := Make(obs, DefaultParams()); err != nil {
		t.Fatal(err)
	}
}

func TestObserveErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := (Prometheus{URL: "not a url"}).Observe(ctx); err == nil || !strings.Contains(err.Error(), "want http") {
		t.Errorf("bad URL: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	if _, err := (Prometheus{URL: dead}).Observe(ctx); err == nil || !strings.Contains(err.Error(), "querying prometheus") {
		t.Errorf("unreachable: %v", err)
	}
	// Something that is not Prometheus.
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	if _, err := (Prometheus{URL: srv.URL}).Observe(ctx); err == nil || !strings.Contains(err.Error(), "not its query API") {
		t.Errorf("not prometheus: %v", err)
	}
	if promDuration(0) != "300s" || promDuration(1500*time.Millisecond) != "2s" {
		t.Error("promDuration")
	}
	// A Prometheus that answers but has no erlmcp series.
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{"status":"success","data":{"resultType":"vector","result":[]}}`)
	}))
	defer api.Close()
	if _, err := (Prometheus{URL: api.URL}).Observe(ctx); !errors.Is(err, ErrNoData) {
		t.Errorf("empty prometheus: %v", err)
	}
}
