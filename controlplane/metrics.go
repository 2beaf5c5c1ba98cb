package controlplane

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics live in a private registry, so several instances can run in one
// process (tests) without clashing.
type metrics struct {
	reg           *prometheus.Registry
	isLeader      prometheus.Gauge
	leaderChanges prometheus.Counter
	shardsPlaced  prometheus.Counter
}

func newMetrics(node, region, zone string) *metrics {
	labels := prometheus.Labels{"role": "controlplane", "node": node, "region": region, "zone": zone}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "erlmcp_controlplane_is_leader", ConstLabels: labels,
			Help: "1 while this control-plane instance is the elected leader, else 0.",
		}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "erlmcp_controlplane_leader_changes_total", ConstLabels: labels,
			Help: "Changes of the elected control-plane leader seen by this instance (the first leader it sees counts).",
		}),
		shardsPlaced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "erlmcp_controlplane_shards_placed_total", ConstLabels: labels,
			Help: "Shards this instance placed (wrote a first replica set for) while leader.",
		}),
	}
	m.reg.MustRegister(m.isLeader, m.leaderChanges, m.shardsPlaced,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
