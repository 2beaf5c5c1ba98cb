package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/erlmcp/erlmcp/controlplane"
)

func dr(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := runDR(context.Background(), args, &out, &errb, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	return code, out.String(), errb.String()
}

func TestDRUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, exitDRUsage, "Usage: erlmcp dr"},
		{[]string{"--help"}, exitOK, "Exit codes"},
		{[]string{"check", "--help"}, exitOK, "Exit codes"},
		{[]string{"bogus"}, exitDRUsage, `unknown command "bogus"`},
		{[]string{"switch"}, exitDRUsage, "want 1 argument"},
		{[]string{"switch", "tertiary"}, exitDRUsage, "want primary, secondary or dr"},
		{[]string{"snapshot"}, exitDRUsage, "--out DIR is required"},
		{[]string{"restore", "--from", "x", "--phase", "later"}, exitDRUsage, "want auto, etcd or sessions"},
		{[]string{"check", "extra"}, exitDRUsage, "want 0 argument"},
		{[]string{"check", "--timeout", "0s"}, exitDRUsage, "want more than 0"},
	} {
		code, out, errs := dr(t, nil, tc.args...)
		if code != tc.code || !strings.Contains(out+errs, tc.want) {
			t.Errorf("dr %v: exit %d, want %d with %q\n%s%s", tc.args, code, tc.code, tc.want, out, errs)
		}
	}
	// A bad environment value is bad usage too, naming the variable.
	code, _, errs := dr(t, map[string]string{"ERLMCP_ETCD_PEER_PORT": "x"}, "check")
	if code != exitDRUsage || !strings.Contains(errs, "ERLMCP_ETCD_PEER_PORT") {
		t.Errorf("bad ERLMCP_ETCD_PEER_PORT: exit %d %s", code, errs)
	}
}

// TestDRCheckUnreachable: no cluster at all is "down", exit 2.
func TestDRCheckUnreachable(t *testing.T) {
	code, out, errs := dr(t, nil, "check", "--data-dir", t.TempDir(), "--json")
	if code != exitDown || !strings.Contains(out, `"verdict": "down"`) {
		t.Fatalf("check with no cluster: exit %d\n%s%s", code, out, errs)
	}
}

func TestPickRegion(t *testing.T) {
	up := []controlplane.RegionDoc{{Name: "us", Role: "primary"}, {Name: "eu", Role: "secondary"}, {Name: "ap", Role: "secondary"}}
	for role, want := range map[string]string{"primary": "us", "secondary": "ap", "dr": "eu", "other": ""} {
		if got := pickRegion(up, role); got != want {
			t.Errorf("up's regions: %s → %q, want %q", role, got, want)
		}
	}
	k8s := []controlplane.RegionDoc{{Name: "us", Role: "primary"}, {Name: "eu", Role: "secondary", Weight: 1}, {Name: "sa", Role: "secondary", Weight: 5}, {Name: "ap", Role: "dr"}}
	for role, want := range map[string]string{"secondary": "sa", "dr": "ap"} {
		if got := pickRegion(k8s, role); got != want {
			t.Errorf("regions with a dr: %s → %q, want %q", role, got, want)
		}
	}
}

func TestJudgeCluster(t *testing.T) {
	members := func(down ...string) []controlplane.MemberStatus {
		var ms []controlplane.MemberStatus
		for i, id := range []string{"s1", "s2", "s3"} {
			region := []string{"us", "eu", "ap"}[i]
			ms = append(ms, controlplane.MemberStatus{Role: "store", ID: id, Region: region, Healthy: !slices.Contains(down, id)},
				controlplane.MemberStatus{Role: "worker", ID: "w" + id, Region: region, Healthy: !slices.Contains(down, "w"+id)})
		}
		return append(ms, controlplane.MemberStatus{Role: "controlplane", ID: "cp", Healthy: true})
	}
	shards := []controlplane.ShardView{
		{Shard: 0, Leader: "s1", Replicas: []controlplane.ReplicaView{{Store: "s1", Role: "voter"}, {Store: "s2", Role: "voter"}, {Store: "s3", Role: "voter"}}},
		{Shard: 1, Leader: "s2", Replicas: []controlplane.ReplicaView{{Store: "s1", Role: "voter"}, {Store: "s2", Role: "voter"}, {Store: "s3", Role: "voter"}}},
	}
	regions := []controlplane.RegionDoc{{Name: "us", Role: "primary", State: "active"}, {Name: "eu", Role: "secondary", State: "standby"}, {Name: "ap", Role: "secondary", State: "standby"}}
	judge := func(ms []controlplane.MemberStatus, ss []controlplane.ShardView) *healthReport {
		h := &healthReport{Verdict: "healthy", Problems: []string{}, WorkersByRegion: map[string]int{}}
		judgeCluster(h, ms, ss, regions, 3)
		return h
	}
	if h := judge(members(), shards); h.Verdict != "healthy" || len(h.Problems) != 0 || h.ActiveRegion != "us" || h.Shards.LeadersInActive != 1 {
		t.Errorf("all up: %+v", h)
	}
	h := judge(members("s3"), shards)
	if h.Verdict != "degraded" || !slices.Equal(h.Stores.Down, []string{"s3"}) || len(h.Shards.UnderReplicated) != 2 {
		t.Errorf("one store down: %+v", h)
	}
	if h := judge(members("s2", "s3"), shards); h.Verdict != "down" || len(h.Shards.QuorumLost) != 2 {
		t.Errorf("two of three stores down: %+v", h)
	}
	if h := judge(members("ws1"), shards); h.Verdict != "degraded" || !strings.Contains(strings.Join(h.Problems, ";"), "active region us has no healthy worker") {
		t.Errorf("no worker in the active region: %+v", h)
	}
	if h := judge(members("ws1", "ws2", "ws3"), shards); h.Verdict != "down" {
		t.Errorf("no worker at all: %+v", h)
	}
	leaderless := slices.Clone(shards)
	leaderless[1].Leader = ""
	if h := judge(members(), leaderless); h.Verdict != "degraded" || !slices.Equal(h.Shards.Leaderless, []int{1}) {
		t.Errorf("a leaderless shard: %+v", h)
	}
	// Members of eu and ap run, but only us has a regions/ document yet
	// (a cluster just started): not healthy, and the problem names them.
	regions = regions[:1]
	h = judge(members(), shards)
	if p := strings.Join(h.Problems, ";"); h.Verdict != "degraded" || !strings.Contains(p, "region ap has members but is not registered") || !strings.Contains(p, "region eu has members") {
		t.Errorf("unregistered regions: %+v", h)
	}
}
