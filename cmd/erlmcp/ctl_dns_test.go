package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/controlplane"
	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
)

func TestPlanDNS(t *testing.T) {
	regions := []controlplane.RegionDoc{
		{Name: "us", State: "active", Weight: 0},
		{Name: "eu", State: "standby", Weight: 5},
		{Name: "ap", State: "failed", Weight: 9},
		{Name: "sa", State: "active", Weight: 3},
	}
	members := []controlplane.MemberStatus{
		{Role: "front", Region: "us", Addr: "10.0.0.2:8080", Healthy: true},
		{Role: "front", Region: "us", Addr: "10.0.0.1:8080", Healthy: true},
		{Role: "front", Region: "us", Addr: "10.0.0.9:8080", Healthy: false}, // probe failed: left out
		{Role: "worker", Region: "us", Addr: "10.0.0.3:8081", Healthy: true}, // not a front
		{Role: "front", Region: "eu", Addr: "[2001:db8::1]:8080", Healthy: true},
		{Role: "front", Region: "ap", Addr: "front.ap.example.com:8080", Healthy: true},
		{Role: "front", Region: "sa", Addr: "0.0.0.0:8080", Healthy: true}, // not dialable
	}
	plan := planDNS(regions, members)
	got := map[string]dnsRegion{}
	for _, r := range plan {
		got[r.Name] = r
	}
	if us := got["us"]; us.Weight != 1 || strings.Join(us.Hosts, ",") != "10.0.0.1,10.0.0.2" || us.Skip != "" {
		t.Errorf("us: %+v", us)
	}
	if eu := got["eu"]; eu.Weight != 0 || eu.Hosts[0] != "2001:db8::1" {
		t.Errorf("eu (standby gets weight 0): %+v", eu)
	}
	if ap := got["ap"]; ap.Weight != 0 || ap.Skip != "" {
		t.Errorf("ap (failed gets weight 0): %+v", ap)
	}
	if sa := got["sa"]; sa.Skip == "" {
		t.Errorf("sa has no dialable front, yet: %+v", sa)
	}

	var zone bytes.Buffer
	if err := writeZone(&zone, plan, "mcp.example.com", 30); err != nil {
		t.Fatal(err)
	}
	z := zone.String()
	for _, want := range []string{
		"mcp.example.com.\t30\tIN\tA\t10.0.0.1\n",
		"mcp.example.com.\t30\tIN\tA\t10.0.0.2\n",
		"eu.mcp.example.com.\t30\tIN\tAAAA\t2001:db8::1\n",
		"ap.mcp.example.com.\t30\tIN\tCNAME\tfront.ap.example.com.\n",
		"; sa (active): skipped, no healthy front",
	} {
		if !strings.Contains(z, want) {
			t.Errorf("zone lacks %q:\n%s", want, z)
		}
	}
	if strings.Contains(z, "\nmcp.example.com.\t30\tIN\tAAAA") {
		t.Errorf("standby region's front at the name itself:\n%s", z)
	}

	var r53 bytes.Buffer
	if err := writeRoute53(&r53, plan, "mcp.example.com.", 60); err != nil {
		t.Fatal(err)
	}
	var batch route53Batch
	if err := json.Unmarshal(r53.Bytes(), &batch); err != nil {
		t.Fatal(err)
	}
	weights := map[string]int{}
	for _, c := range batch.Changes {
		if c.Action != "UPSERT" || c.ResourceRecordSet.Name != "mcp.example.com." || c.ResourceRecordSet.TTL != 60 {
			t.Errorf("change %+v", c)
		}
		weights[c.ResourceRecordSet.SetIdentifier] = c.ResourceRecordSet.Weight
	}
	if len(weights) != 3 || weights["us"] != 1 || weights["eu"] != 0 || weights["ap"] != 0 {
		t.Errorf("weights %v", weights)
	}

	// Several fronts where one is a host name cannot be one CNAME.
	mixed := planDNS([]controlplane.RegionDoc{{Name: "x", State: "active"}}, []controlplane.MemberStatus{
		{Role: "front", Region: "x", Addr: "a.example.com:1", Healthy: true},
		{Role: "front", Region: "x", Addr: "10.1.1.1:1", Healthy: true},
	})
	if mixed[0].Skip == "" {
		t.Errorf("mixed: %+v", mixed[0])
	}
	zone.Reset()
	if err := writeZone(&zone, mixed, "m", 1); err != nil || !strings.Contains(zone.String(), "no active region has a healthy front") {
		t.Errorf("zone without an active front:\n%s", zone.String())
	}
}

// TestCtlDNSAgainstControlPlane registers a front in the control plane's
// region and asks ctl for records through the admin API.
func TestCtlDNSAgainstControlPlane(t *testing.T) {
	cp, e := startTestControlPlane(t)
	env := adminEnv(cp)
	// A front that answers /healthz, registered in the leader's region.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))
	t.Cleanup(srv.Close)
	front := strings.TrimPrefix(srv.URL, "http://")
	cli := e.Client()
	reg, err := membership.Register(t.Context(), cli, e.Prefix, membership.Member{
		Role: membership.RoleFront, ID: "front-1", Addr: front, HTTPAddr: front, Region: "local",
	}, 2*time.Second, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close(context.Background()) })
	host := strings.Split(front, ":")[0]
	var out string
	testcluster.WaitFor(t, 10*time.Second, "front in dns records", func() error {
		code, o, errs := ctl(t, env, "dns", "zone", "mcp.example.com", "45")
		if code != exitOK || !strings.Contains(o, "mcp.example.com.\t45\tIN\tA\t"+host) {
			return testcluster.Errorf("dns zone: exit %d\n%s\n%s", code, o, errs)
		}
		out = o
		return nil
	})
	if !strings.Contains(out, "local.mcp.example.com.") {
		t.Errorf("no per-region record:\n%s", out)
	}
	code, o, errs := ctl(t, env, "dns", "route53", "mcp.example.com")
	if code != exitOK || !json.Valid([]byte(o)) || !strings.Contains(o, `"SetIdentifier": "local"`) {
		t.Fatalf("route53: exit %d\n%s\n%s", code, o, errs)
	}
	for _, args := range [][]string{{"dns"}, {"dns", "bind", "x"}, {"dns", "zone"}, {"dns", "zone", "x", "1", "2"}} {
		if code, _, errs := ctl(t, env, args...); code != exitUsage {
			t.Errorf("ctl %q: exit %d, want %d (%s)", args, code, exitUsage, errs)
		}
	}
	for _, args := range [][]string{{"dns", "zone", "x", "0"}, {"dns", "zone", "a b"}} {
		if code, _, errs := ctl(t, env, args...); code != exitUsage {
			t.Errorf("ctl %q: exit %d, want %d (%s)", args, code, exitUsage, errs)
		}
	}
}
