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

	failovers        *prometheus.CounterVec
	failoverDuration prometheus.Histogram
	underReplicated  prometheus.Gauge
	opsInFlight      prometheus.Gauge
	placementPaused  prometheus.Gauge
	regionFailed     *prometheus.GaugeVec

	healActions    *prometheus.CounterVec
	autohealPaused prometheus.Gauge
	desiredWorkers *prometheus.GaugeVec
	actualWorkers  *prometheus.GaugeVec
	scaleDecisions *prometheus.CounterVec
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
	m.failovers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "erlmcp_controlplane_failovers_total", ConstLabels: labels,
		Help: "Region failovers and failbacks this instance carried out while leader, by kind (region_failover, manual_failover, manual_failback).",
	}, []string{"kind"})
	m.failoverDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "erlmcp_controlplane_failover_duration_seconds", ConstLabels: labels,
		Help:    "Time from a failover's start (first failed probe round, or the admin request) until the active region was switched.",
		Buckets: []float64{0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120},
	})
	m.underReplicated = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "erlmcp_controlplane_under_replicated_shards", ConstLabels: labels,
		Help: "Placed shards with fewer voters on live stores than the replication factor (raft mode; 0 otherwise and on standbys).",
	})
	m.opsInFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "erlmcp_controlplane_operations_in_flight", ConstLabels: labels,
		Help: "Placement operators recorded in ops/ (raft mode, leader only).",
	})
	m.placementPaused = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "erlmcp_controlplane_placement_paused", ConstLabels: labels,
		Help: "1 while the mass lease expiry guard pauses placement (too many stores vanished at once), else 0.",
	})
	m.regionFailed = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "erlmcp_controlplane_region_failed", ConstLabels: labels,
		Help: "1 while the region failure detector holds a region failed (leader only).",
	}, []string{"monitored_region"})
	m.healActions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "erlmcp_controlplane_heal_actions_total", ConstLabels: labels,
		Help: "Autoheal and scaling actions carried out through the actuator while leader, by action (restart, scale_up, scale_down) and outcome (succeeded, failed, suppressed: restart attempts exhausted).",
	}, []string{"action", "outcome"})
	m.autohealPaused = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "erlmcp_controlplane_autoheal_paused", ConstLabels: labels,
		Help: "1 while autoheal and scaling actions are paused through the admin API (leader only), else 0.",
	})
	m.desiredWorkers = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "erlmcp_controlplane_desired_workers", ConstLabels: labels,
		Help: "Desired process count of a scaled pool (desired/<pool>; leader only).",
	}, []string{"pool"})
	m.actualWorkers = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "erlmcp_controlplane_actual_workers", ConstLabels: labels,
		Help: "Processes the actuator runs for a scaled pool (leader only).",
	}, []string{"pool"})
	m.scaleDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "erlmcp_controlplane_scale_decisions_total", ConstLabels: labels,
		Help: "Changes of a pool's desired count written to etcd, by direction (up, down).",
	}, []string{"pool", "direction"})
	m.reg.MustRegister(m.healActions, m.autohealPaused, m.desiredWorkers, m.actualWorkers, m.scaleDecisions)
	m.reg.MustRegister(m.isLeader, m.leaderChanges, m.shardsPlaced,
		m.failovers, m.failoverDuration, m.underReplicated, m.opsInFlight, m.placementPaused, m.regionFailed,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
