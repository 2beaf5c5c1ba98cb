package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
)

// TestCtlPrometheusTargets: members in a real etcd become file_sd groups —
// workers and control planes by their address, stores by their HTTP
// address (a store without one is left out, its gRPC port has no
// /metrics), fronts not at all — written atomically to --output.
func TestCtlPrometheusTargets(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx := context.Background()
	for _, m := range []membership.Member{
		{Role: membership.RoleWorker, ID: "worker-2", Addr: "127.0.0.1:8082", Region: "eu-west-1", Zone: "eu-west-1a"},
		{Role: membership.RoleWorker, ID: "worker-1", Addr: "127.0.0.1:8081", Region: "us-east-1", Zone: "us-east-1a"},
		{Role: membership.RoleStore, ID: "store-1", Addr: "127.0.0.1:9091", HTTPAddr: "127.0.0.1:9191", Region: "us-east-1", Zone: "us-east-1a"},
		{Role: membership.RoleStore, ID: "store-2", Addr: "127.0.0.1:9092", Region: "eu-west-1", Zone: "eu-west-1a"},
		{Role: membership.RoleControlPlane, ID: "cp-1", Addr: "127.0.0.1:7070", Region: "us-east-1", Zone: "us-east-1a"},
		{Role: membership.RoleFront, ID: "front-1", Addr: "127.0.0.1:8080", Region: "us-east-1", Zone: "us-east-1a"},
	} {
		b, _ := json.Marshal(m)
		if _, err := cli.Put(ctx, membership.Key(e.Prefix, m.Role, m.ID), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "erlmcp.json")
	code, stdout, stderr := ctl(t, nil, "prometheus-targets", "--etcd-endpoints", e.Endpoint, "--etcd-prefix", e.Prefix, "--output", out)
	if code != exitOK {
		t.Fatalf("exit %d: %s%s", code, stdout, stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var got []fileSDGroup
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	lbl := func(role, node, region string) map[string]string {
		return map[string]string{"role": role, "node": node, "region": region, "zone": region + "a"}
	}
	want := []fileSDGroup{
		{Targets: []string{"127.0.0.1:7070"}, Labels: lbl("controlplane", "cp-1", "us-east-1")},
		{Targets: []string{"127.0.0.1:9191"}, Labels: lbl("store", "store-1", "us-east-1")},
		{Targets: []string{"127.0.0.1:8081"}, Labels: lbl("worker", "worker-1", "us-east-1")},
		{Targets: []string{"127.0.0.1:8082"}, Labels: lbl("worker", "worker-2", "eu-west-1")},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("targets:\n got %+v\nwant %+v", got, want)
	}

	// Environment variables stand in for the flags; without --output the
	// file goes to stdout.
	env := func(k string) (string, bool) {
		v, ok := map[string]string{"ERLMCP_ETCD_ENDPOINTS": e.Endpoint, "ERLMCP_ETCD_PREFIX": e.Prefix}[k]
		return v, ok
	}
	code, stdout, stderr = ctl(t, env, "prometheus-targets")
	if code != exitOK || !strings.Contains(stdout, `"127.0.0.1:9191"`) {
		t.Errorf("from the environment: exit %d stdout %s stderr %s", code, stdout, stderr)
	}

	// Bad usage and an unreachable cluster have their exit codes.
	if code, _, stderr := ctl(t, nil, "prometheus-targets", "--watch", "5s"); code != exitUsage || !strings.Contains(stderr, "--output") {
		t.Errorf("--watch without --output: exit %d %s", code, stderr)
	}
	if code, _, stderr := ctl(t, nil, "prometheus-targets", "--data-dir", t.TempDir()); code != exitFailure || !strings.Contains(stderr, "no local cluster") {
		t.Errorf("no cluster.json: exit %d %s", code, stderr)
	}
	if code, stdout, _ := ctl(t, nil, "prometheus-targets", "--help"); code != exitOK || !strings.Contains(stdout, "file_sd") {
		t.Errorf("--help: exit %d %s", code, stdout)
	}
}
