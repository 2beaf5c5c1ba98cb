package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/erlmcp/erlmcp/controlplane"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// healthReport is the result of `dr check` (its --json form).
type healthReport struct {
	Verdict string `json:"verdict"` // healthy, degraded, down
	// Problems say why the verdict is not healthy, worst first.
	Problems []string `json:"problems"`
	Etcd     struct {
		Members int  `json:"members"`
		Healthy int  `json:"healthy"`
		Quorum  bool `json:"quorum"`
	} `json:"etcd"`
	Stores struct {
		Registered int      `json:"registered"`
		Healthy    int      `json:"healthy"`
		Down       []string `json:"down"` // named by the shard map, not healthy
	} `json:"stores"`
	Shards struct {
		Total             int   `json:"total"`
		UnderReplicated   []int `json:"under_replicated"`
		Leaderless        []int `json:"leaderless"`
		QuorumLost        []int `json:"quorum_lost"`
		LeadersInActive   int   `json:"leaders_in_active_region"`
		ReplicationFactor int   `json:"replication_factor"`
	} `json:"shards"`
	WorkersByRegion map[string]int `json:"healthy_workers_by_region"`
	ActiveRegion    string         `json:"active_region"`
	ControlPlanes   int            `json:"healthy_control_planes"`
}

func (h *healthReport) problem(down bool, format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	if down {
		h.Verdict = "down"
		h.Problems = append([]string{msg}, h.Problems...)
		return
	}
	if h.Verdict == "healthy" {
		h.Verdict = "degraded"
	}
	h.Problems = append(h.Problems, msg)
}

func drCheck(ctx context.Context, o drOptions, stdout, stderr io.Writer) int {
	h := &healthReport{Verdict: "healthy", Problems: []string{}, WorkersByRegion: map[string]int{}}
	checkEtcd(ctx, o, h)
	if urls, token, err := ctlTarget(o.ctl); err != nil {
		h.problem(true, "admin API: %v", err)
	} else {
		checkCluster(ctx, urls, token, h)
	}
	code := exitHealthy
	switch h.Verdict {
	case "degraded":
		code = exitDegraded
	case "down":
		code = exitDown
	}
	if o.json {
		_ = printJSON(stdout, h)
		return code
	}
	fmt.Fprintf(stdout, "verdict: %s\n", h.Verdict)
	fmt.Fprintf(stdout, "etcd: %d/%d members healthy, quorum %v\n", h.Etcd.Healthy, h.Etcd.Members, h.Etcd.Quorum)
	fmt.Fprintf(stdout, "stores: %d registered, %d healthy, down: %s\n", h.Stores.Registered, h.Stores.Healthy, dash(strings.Join(h.Stores.Down, ",")))
	fmt.Fprintf(stdout, "shards: %d, under-replicated %d, leaderless %d, quorum lost %d, leaders in the active region %d\n",
		h.Shards.Total, len(h.Shards.UnderReplicated), len(h.Shards.Leaderless), len(h.Shards.QuorumLost), h.Shards.LeadersInActive)
	var regions []string
	for r, n := range h.WorkersByRegion {
		regions = append(regions, fmt.Sprintf("%s=%d", r, n))
	}
	sort.Strings(regions)
	fmt.Fprintf(stdout, "workers (healthy) by region: %s\n", dash(strings.Join(regions, " ")))
	fmt.Fprintf(stdout, "active region: %s; healthy control planes: %d\n", dash(h.ActiveRegion), h.ControlPlanes)
	for _, p := range h.Problems {
		fmt.Fprintf(stdout, "problem: %s\n", p)
	}
	return code
}

func checkEtcd(ctx context.Context, o drOptions, h *healthReport) {
	eps, err := o.etcdEndpoints()
	if err != nil {
		h.problem(true, "etcd: %v", err)
		return
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 3 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		h.problem(true, "etcd %v: %v", eps, err)
		return
	}
	defer cli.Close()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ml, err := cli.MemberList(lctx)
	if err != nil {
		h.problem(true, "etcd %v unreachable: %v", eps, err)
		return
	}
	h.Etcd.Members = len(ml.Members)
	for _, m := range ml.Members {
		ok := false
		for _, u := range m.ClientURLs {
			sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := cli.Status(sctx, u)
			scancel()
			if err == nil {
				ok = true
				break
			}
		}
		if ok {
			h.Etcd.Healthy++
		} else {
			h.problem(false, "etcd member %s is not answering", m.Name)
		}
	}
	h.Etcd.Quorum = h.Etcd.Healthy > h.Etcd.Members/2
	if !h.Etcd.Quorum {
		h.problem(true, "etcd has no quorum: %d of %d members answer", h.Etcd.Healthy, h.Etcd.Members)
	}
}

func checkCluster(ctx context.Context, urls []string, token string, h *healthReport) {
	var ms []controlplane.MemberStatus
	if err := adminGet(ctx, urls, token, "/v1/members", &ms); err != nil {
		h.problem(true, "admin API unreachable: %v", err)
		return
	}
	var ss []controlplane.ShardView
	if err := adminGet(ctx, urls, token, "/v1/shards", &ss); err != nil {
		h.problem(true, "admin API: shards: %v", err)
		return
	}
	var rs []controlplane.RegionDoc
	if err := adminGet(ctx, urls, token, "/v1/regions", &rs); err != nil {
		h.problem(true, "admin API: regions: %v", err)
		return
	}
	var cv controlplane.ClusterView
	if err := adminGet(ctx, urls, token, "/v1/cluster", &cv); err != nil {
		h.problem(true, "admin API: cluster: %v", err)
		return
	}
	judgeCluster(h, ms, ss, rs, clusterRF(cv))
}

// judgeCluster fills h from the admin API's view of the cluster.
func judgeCluster(h *healthReport, ms []controlplane.MemberStatus, ss []controlplane.ShardView, rs []controlplane.RegionDoc, rf int) {
	h.Shards.ReplicationFactor = rf
	healthyStore := map[string]bool{}
	storeRegion := map[string]string{}
	for _, m := range ms {
		switch m.Role {
		case "store":
			h.Stores.Registered++
			storeRegion[m.ID] = m.Region
			if m.Healthy {
				h.Stores.Healthy++
				healthyStore[m.ID] = true
			}
		case "worker":
			if _, ok := h.WorkersByRegion[m.Region]; !ok {
				h.WorkersByRegion[m.Region] = 0
			}
			if m.Healthy {
				h.WorkersByRegion[m.Region]++
			}
		case "controlplane":
			if m.Healthy {
				h.ControlPlanes++
			}
		}
	}
	registered := map[string]bool{}
	for _, r := range rs {
		registered[r.Name] = true
		if r.State == "active" {
			h.ActiveRegion = r.Name
		}
		if _, ok := h.WorkersByRegion[r.Name]; !ok {
			h.WorkersByRegion[r.Name] = 0
		}
	}
	// A region whose members run but which has no regions/ document yet
	// (the control plane writes it on its next probe round) cannot be
	// switched or failed over to: until then the cluster is not healthy.
	var unregistered []string
	for _, m := range ms {
		if m.Region != "" && !registered[m.Region] && !slices.Contains(unregistered, m.Region) {
			unregistered = append(unregistered, m.Region)
		}
	}
	sort.Strings(unregistered)
	for _, r := range unregistered {
		h.problem(false, "region %s has members but is not registered yet (the leading control plane registers it within a probe round; if this persists, see its log)", r)
	}
	if h.ControlPlanes == 0 {
		h.problem(false, "no healthy control plane")
	}
	if h.ActiveRegion == "" {
		h.problem(false, "no region is active")
	}
	workers := 0
	for _, n := range h.WorkersByRegion {
		workers += n
	}
	if workers == 0 {
		h.problem(true, "no healthy worker: MCP is down")
	} else if h.ActiveRegion != "" && h.WorkersByRegion[h.ActiveRegion] == 0 {
		h.problem(false, "the active region %s has no healthy worker", h.ActiveRegion)
	}
	down := map[string]bool{}
	h.Shards.Total = len(ss)
	for _, s := range ss {
		voters, live := 0, 0
		for _, r := range s.Replicas {
			if r.Role != "voter" && r.Role != "" {
				continue
			}
			voters++
			if healthyStore[r.Store] {
				live++
			} else {
				down[r.Store] = true
			}
		}
		switch {
		case voters == 0 || live <= voters/2:
			h.Shards.QuorumLost = append(h.Shards.QuorumLost, s.Shard)
		case live < max(rf, voters):
			h.Shards.UnderReplicated = append(h.Shards.UnderReplicated, s.Shard)
		}
		if s.Leader == "" {
			h.Shards.Leaderless = append(h.Shards.Leaderless, s.Shard)
		} else if storeRegion[s.Leader] == h.ActiveRegion {
			h.Shards.LeadersInActive++
		}
	}
	for s := range down {
		h.Stores.Down = append(h.Stores.Down, s)
	}
	sort.Strings(h.Stores.Down)
	if h.Shards.Total == 0 {
		h.problem(true, "the shard map is empty: no shard is placed")
	}
	if n := len(h.Shards.QuorumLost); n > 0 {
		h.problem(true, "%d shard(s) lost their Raft quorum (sessions on them unavailable): %v", n, h.Shards.QuorumLost)
	}
	if len(h.Stores.Down) > 0 {
		h.problem(false, "store node(s) the shard map uses are down: %s", strings.Join(h.Stores.Down, ", "))
	}
	if n := len(h.Shards.UnderReplicated); n > 0 {
		h.problem(false, "%d shard(s) under-replicated", n)
	}
	if n := len(h.Shards.Leaderless); n > 0 {
		h.problem(false, "%d shard(s) without a reported leader", n)
	}
}

// clusterRF is the cluster's replication factor (0 if not created yet).
func clusterRF(cv controlplane.ClusterView) int {
	if cv.Config == nil {
		return 0
	}
	return cv.Config.ReplicationFactor
}
