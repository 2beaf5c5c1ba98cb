package worker

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Method label values that are not MCP method names. Label values never
// carry a session id or anything else the client chooses freely: a method
// the worker does not know is counted as "other".
const (
	labelInvalid  = "invalid"  // refused before a message was decoded
	labelResponse = "response" // a JSON-RPC response from the client
	labelOther    = "other"    // an MCP method the worker does not serve
	labelGet      = "GET"      // GET /mcp
	labelDelete   = "DELETE"   // DELETE /mcp (end of session)
)

// metrics is one handler's Prometheus registry; no global state, so several
// handlers can live in one process (tests).
type metrics struct {
	reg           *prometheus.Registry
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	sessions      prometheus.Counter
	storeFailures *prometheus.CounterVec
	// principalMismatches counts requests for a session of another
	// principal (answered 404): a probe or a misrouted client.
	principalMismatches prometheus.Counter
	// sweeps and swept count the death sweep's passes over dead workers
	// and the records they handled (sweep.go).
	sweeps *prometheus.CounterVec
	swept  *prometheus.CounterVec
	// children caches observe's per-label children (observeKey ->
	// *observers).
	children sync.Map
}

func newMetrics(node, region, zone string) *metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	labels := prometheus.Labels{"role": "worker", "node": node, "region": region, "zone": zone}
	r := prometheus.WrapRegistererWith(labels, reg)
	m := &metrics{
		reg: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erlmcp_worker_requests_total",
			Help: "MCP HTTP requests on /mcp by MCP method (or GET, DELETE, invalid, response, other) and HTTP status code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "erlmcp_worker_request_duration_seconds",
			Help:    "Time to answer an MCP HTTP request on /mcp, by MCP method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method"}),
		sessions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "erlmcp_worker_sessions_created_total",
			Help: "Sessions this worker created (initialize answered).",
		}),
		storeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erlmcp_worker_store_failures_total",
			Help: "Session store calls that failed for a reason other than not-found, by operation.",
		}, []string{"op"}),
	}
	m.principalMismatches = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "erlmcp_worker_session_principal_mismatches_total",
		Help: "Requests naming a session bound to another authenticated principal (answered 404).",
	})
	m.sweeps = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "erlmcp_worker_death_sweeps_total",
		Help: "Sweeps of a dead worker's in-flight records by this worker, by outcome (complete, error).",
	}, []string{"outcome"})
	m.swept = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "erlmcp_worker_death_sweep_records_total",
		Help: "Indexed in-flight records of dead workers handled by this worker's sweeps: resolved (error answered, task failed) or stale (already gone).",
	}, []string{"result"})
	r.MustRegister(m.requests, m.duration, m.sessions, m.storeFailures, m.principalMismatches, m.sweeps, m.swept)
	return m
}

// observeKey names one (method, code) pair of children in metrics.children.
type observeKey struct {
	method string
	code   int
}

// observers are the children one request updates, looked up once per
// (method, code) instead of hashing label values on every request.
type observers struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

func (m *metrics) observe(method string, code int, d time.Duration) {
	k := observeKey{method, code}
	v, ok := m.children.Load(k)
	if !ok {
		// Bounded: method is one of the dispatcher's names or a fixed
		// label, code an HTTP status the worker writes.
		v, _ = m.children.LoadOrStore(k, &observers{
			requests: m.requests.WithLabelValues(method, strconv.Itoa(code)),
			duration: m.duration.WithLabelValues(method),
		})
	}
	o := v.(*observers)
	o.requests.Inc()
	o.duration.Observe(d.Seconds())
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
