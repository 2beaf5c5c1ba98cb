package capacity

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"time"
)

// Sample is a built-in observed load for trying the planner without a
// cluster: three regions as `erlmcp up` names them, the primary busiest.
func Sample(now time.Time) Observed {
	return Observed{
		Source:   "sample",
		At:       now.UTC(),
		Sessions: 250000,
		Regions: []RegionLoad{
			{Name: "us-east-1", RPS: 1200, Workers: 12, Stores: 3, P95Seconds: 0.045, CPUUtilization: 0.55},
			{Name: "eu-west-1", RPS: 700, Workers: 8, Stores: 3, P95Seconds: 0.05, CPUUtilization: 0.5},
			{Name: "ap-southeast-1", RPS: 150, Workers: 2, Stores: 2, P95Seconds: 0.06, CPUUtilization: 0.4},
		},
	}
}

// ReadFile reads an observed load written as JSON (the format of Observed,
// which is also what --output's "observed" field holds).
func ReadFile(path string) (Observed, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Observed{}, fmt.Errorf("reading the metrics file: %w", err)
	}
	var o Observed
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&o); err != nil {
		return Observed{}, fmt.Errorf("metrics file %s is not an observed-load JSON document (see erlmcp capacity --sample --output for one): %w", path, err)
	}
	if o.Source == "" {
		o.Source = "file:" + path
	}
	return o, o.Validate()
}

// Prometheus asks a Prometheus server for the load over window. The queries
// use the series erlmcp exports (deploy/monitoring scrapes them with a
// region label on every target).
type Prometheus struct {
	URL    string        // base URL, e.g. http://localhost:9090
	Window time.Duration // rate window, e.g. 5m
	HTTP   *http.Client
}

// ErrNoData is returned when Prometheus answers but knows no erlmcp worker
// traffic: planning from nothing would recommend nothing.
var ErrNoData = errors.New("prometheus has no erlmcp worker request series (is it scraping the workers? see deploy/monitoring/prometheus.yml)")

// Observe runs the queries. It blocks for at most ctx's deadline.
func (p Prometheus) Observe(ctx context.Context) (Observed, error) {
	w := promDuration(p.Window)
	rps, err := p.byRegion(ctx, fmt.Sprintf(`sum by (region) (rate(erlmcp_worker_requests_total[%s]))`, w))
	if err != nil {
		return Observed{}, err
	}
	if len(rps) == 0 {
		return Observed{}, ErrNoData
	}
	workers, err := p.byRegion(ctx, `count by (region) (count by (region, node) (erlmcp_worker_requests_total))`)
	if err != nil {
		return Observed{}, err
	}
	p95, err := p.byRegion(ctx, fmt.Sprintf(`histogram_quantile(0.95, sum by (region, le) (rate(erlmcp_worker_request_duration_seconds_bucket[%s])))`, w))
	if err != nil {
		return Observed{}, err
	}
	// The rest is optional: a store without metrics, or a scrape config
	// without role labels, leaves those figures at 0.
	stores, _ := p.byRegion(ctx, `count by (region) (count by (region, node) (erlmcp_store_requests_total))`)
	cpu, _ := p.byRegion(ctx, fmt.Sprintf(`avg by (region) (rate(process_cpu_seconds_total{role="worker"}[%s]))`, w))
	sessions, _ := p.scalar(ctx, `sum(erlmcp_store_sessions)`)
	writes, _ := p.scalar(ctx, fmt.Sprintf(`sum(rate(erlmcp_store_requests_total{method=~"(?i).*(create|compareandset|cas|append|put|delete|touch).*"}[%s]))`, w))

	o := Observed{Source: "prometheus:" + p.URL, At: time.Now().UTC(), Sessions: int64(sessions), StoreWritesPerSec: writes}
	for region, v := range rps {
		o.Regions = append(o.Regions, RegionLoad{
			Name: region, RPS: v, Workers: int(workers[region]), Stores: int(stores[region]),
			P95Seconds: nanToZero(p95[region]), CPUUtilization: nanToZero(cpu[region]),
		})
	}
	sort.Slice(o.Regions, func(i, j int) bool { return o.Regions[i].Name < o.Regions[j].Name })
	return o, o.Validate()
}

type promResponse struct {
	Status string `json:"status"`
	Error  string `json:"error"`
	Data   struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	} `json:"data"`
}

func (p Prometheus) query(ctx context.Context, q string) (promResponse, error) {
	hc := p.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	u, err := url.Parse(p.URL)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return promResponse{}, fmt.Errorf("prometheus URL %q: want http(s)://host:port", p.URL)
	}
	u = u.JoinPath("/api/v1/query")
	u.RawQuery = url.Values{"query": {q}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return promResponse{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return promResponse{}, fmt.Errorf("querying prometheus at %s: %w", p.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return promResponse{}, fmt.Errorf("reading prometheus' answer: %w", err)
	}
	var pr promResponse
	if err := json.Unmarshal(body, &pr); err != nil {
		return promResponse{}, fmt.Errorf("prometheus at %s answered %s, not its query API JSON: %w", p.URL, resp.Status, err)
	}
	if pr.Status != "success" {
		return promResponse{}, fmt.Errorf("prometheus query %q failed: %s", q, pr.Error)
	}
	return pr, nil
}

func (p Prometheus) byRegion(ctx context.Context, q string) (map[string]float64, error) {
	pr, err := p.query(ctx, q)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, r := range pr.Data.Result {
		v, err := sampleValue(r.Value)
		if err != nil {
			return nil, fmt.Errorf("query %q: %w", q, err)
		}
		region := r.Metric["region"]
		if region == "" {
			region = "default"
		}
		out[region] += v
	}
	return out, nil
}

func (p Prometheus) scalar(ctx context.Context, q string) (float64, error) {
	m, err := p.byRegion(ctx, q)
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, v := range m {
		sum += nanToZero(v)
	}
	return sum, nil
}

func sampleValue(v [2]any) (float64, error) {
	s, ok := v[1].(string)
	if !ok {
		return 0, fmt.Errorf("sample value %v is not a string", v[1])
	}
	return strconv.ParseFloat(s, 64)
}

func nanToZero(v float64) float64 {
	if v != v { // NaN: histogram_quantile over no traffic
		return 0
	}
	return v
}

// promDuration renders d in Prometheus' duration syntax (whole seconds).
func promDuration(d time.Duration) string {
	if d <= 0 {
		d = 5 * time.Minute
	}
	return strconv.FormatInt(int64(d.Round(time.Second)/time.Second), 10) + "s"
}
