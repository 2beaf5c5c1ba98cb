package sessionstore

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"time"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"github.com/erlmcp/erlmcp/sessionstore/multiraft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// metrics live in a per-node registry, so several nodes can run in one
// process (tests, benchmarks) without clashing.
type metrics struct {
	reg           *prometheus.Registry
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	leaderChanges prometheus.Counter
}

// Descriptions of the series computed at scrape time from the node's
// replicas (nodeCollector).
type stateDescs struct {
	replicas, lag, sessions, healthy *prometheus.Desc
}

func newMetrics(n *Node) *metrics {
	c := n.cfg.Common
	labels := prometheus.Labels{"role": "store", "node": c.ID, "region": c.Region, "zone": c.Zone}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erlmcp_store_requests_total", ConstLabels: labels,
			Help: "Requests answered by this node's SessionStoreService and StoreAdminService, by method and gRPC status code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "erlmcp_store_request_duration_seconds", ConstLabels: labels,
			Help: "Time to answer a SessionStoreService or StoreAdminService request (writes include the quorum's fsync).",
			// Writes wait for a group-committed fsync on a quorum: the
			// interesting range is 100 µs to a few hundred ms.
			Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
		}, []string{"method"}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "erlmcp_store_raft_leader_changes_total", ConstLabels: labels,
			Help: "Times a shard replica on this node saw its group's leader become a different replica (the first leader a replica learns of counts).",
		}),
	}
	d := stateDescs{
		replicas: prometheus.NewDesc("erlmcp_store_shard_replicas",
			"This node's shard replicas by Raft state (leader, voter or learner).", []string{"state"}, labels),
		lag: prometheus.NewDesc("erlmcp_store_replication_lag_entries",
			"On a shard's leader: how many log entries the furthest-behind other member's durable log trails the commit index.", []string{"shard"}, labels),
		sessions: prometheus.NewDesc("erlmcp_store_sessions",
			"Session records in the shards this node leads.", nil, labels),
		healthy: prometheus.NewDesc("erlmcp_store_storage_healthy",
			"1 while this node's Raft storage accepts writes, 0 after a failed write or fsync (it refuses writes then).", nil, labels),
	}
	m.reg.MustRegister(m.requests, m.duration, m.leaderChanges, &nodeCollector{n: n, d: d},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observedServices are the services whose requests are counted; the Raft
// transport, health and reflection services on the same server are not.
var observedServices = []string{
	"/" + pb.SessionStoreService_ServiceDesc.ServiceName + "/",
	"/" + pb.StoreAdminService_ServiceDesc.ServiceName + "/",
}

// methodName is the short method name of an observed full method name,
// or "" for a method of another service.
func methodName(full string) string {
	for _, p := range observedServices {
		if m, ok := strings.CutPrefix(full, p); ok {
			return m
		}
	}
	return ""
}

func (m *metrics) observe(method string, start time.Time, err error) {
	m.requests.WithLabelValues(method, status.Code(err).String()).Inc()
	m.duration.WithLabelValues(method).Observe(time.Since(start).Seconds())
}

// serverOptions are the interceptors that count and time requests.
func (m *metrics) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			method := methodName(info.FullMethod)
			if method == "" {
				return h(ctx, req)
			}
			start := time.Now()
			resp, err := h(ctx, req)
			m.observe(method, start, err)
			return resp, err
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			method := methodName(info.FullMethod)
			if method == "" {
				return h(srv, ss)
			}
			start := time.Now()
			err := h(srv, ss)
			m.observe(method, start, err)
			return err
		}),
	}
}

// nodeCollector reads the node's replicas at scrape time: the values are
// already in memory (or one bbolt read transaction away), so nothing has
// to be kept up to date on the write path.
type nodeCollector struct {
	n *Node
	d stateDescs
}

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.d.replicas
	ch <- c.d.lag
	ch <- c.d.sessions
	ch <- c.d.healthy
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	healthy := 1.0
	if c.n.storageErr() != nil {
		healthy = 0
	}
	ch <- prometheus.MustNewConstMetric(c.d.healthy, prometheus.GaugeValue, healthy)
	counts := map[string]float64{"leader": 0, "voter": 0, "learner": 0}
	var sessions float64
	if c.n.raft != nil {
		mr := c.n.raft.mr
		for _, s := range mr.Shards() {
			st, err := mr.Status(s)
			if err != nil {
				continue // destroyed since Shards
			}
			switch {
			case st.Role == "leader":
				counts["leader"]++
			case slices.Contains(st.Learners, st.Replica):
				counts["learner"]++
			default:
				counts["voter"]++
			}
			if st.Role != "leader" {
				continue
			}
			var lag uint64
			for _, p := range st.Progress {
				if p.ID != st.Replica && st.Commit > p.Match {
					lag = max(lag, st.Commit-p.Match)
				}
			}
			ch <- prometheus.MustNewConstMetric(c.d.lag, prometheus.GaugeValue, float64(lag), strconv.Itoa(int(s)))
			_ = mr.View(s, func(b *bolt.Bucket) error {
				if sb := b.Bucket([]byte(bkSessions)); sb != nil {
					// Less the request records kept beside the sessions.
					sessions += float64(sb.Stats().KeyN) - float64(colocatedCount(shardTx{root: b}))
				}
				return nil
			})
		}
	}
	for state, v := range counts {
		ch <- prometheus.MustNewConstMetric(c.d.replicas, prometheus.GaugeValue, v, state)
	}
	ch <- prometheus.MustNewConstMetric(c.d.sessions, prometheus.GaugeValue, sessions)
}

// storageErr is why the node refuses writes because of its storage (a
// failed write or fsync, until a probe succeeds again), or nil.
func (n *Node) storageErr() error {
	if n.raft == nil {
		return nil
	}
	return n.raft.mr.StorageErr()
}

// observeLeaders counts leader changes of the hosted replicas, checking
// every Raft tick: multiraft has no leader-change hook, and an election
// takes at least an election timeout (10 ticks), so polling misses none of
// those; only two leadership transfers within one tick count as one.
func (n *Node) observeLeaders(ctx context.Context) {
	t := time.NewTicker(n.cfg.RaftTickInterval)
	defer t.Stop()
	last := map[uint32]multiraft.ReplicaID{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n.raft == nil {
			continue
		}
		seen := map[uint32]bool{}
		for _, s := range n.raft.mr.Shards() {
			seen[s] = true
			lead, err := n.raft.mr.Leader(s)
			if err != nil || lead == 0 {
				continue
			}
			if last[s] != lead {
				last[s] = lead
				n.metrics.leaderChanges.Inc()
			}
		}
		for s := range last {
			if !seen[s] {
				delete(last, s)
			}
		}
	}
}
