package localcluster

import (
	"slices"
	"strings"
	"testing"
)

// TestPlanEtcdMembersAndFronts: --etcd-members 3 plans three etcd member
// children, started first, that know each other, and every child dials all
// three; --fronts 2 adds front-2 on the front port base, listed in
// FrontURLs after the first front.
func TestPlanEtcdMembersAndFronts(t *testing.T) {
	c := DefaultConfig()
	c.DataDir = "/tmp/x"
	c.EtcdMembers, c.Fronts = 3, 2
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := c.Plan()
	if err != nil {
		t.Fatal(err)
	}
	wantEndpoints := []string{"http://127.0.0.1:2379", "http://127.0.0.1:2381", "http://127.0.0.1:2383"}
	if !slices.Equal(p.EtcdEndpoints, wantEndpoints) {
		t.Errorf("etcd endpoints %v, want %v", p.EtcdEndpoints, wantEndpoints)
	}
	for i, name := range []string{"etcd-1", "etcd-2", "etcd-3"} {
		ch := p.Children[i]
		if ch.Name != name || ch.Args[0] != "etcd" {
			t.Fatalf("child %d is %s %v, want %s first", i, ch.Name, ch.Args, name)
		}
		if !slices.Contains(ch.Args, "--initial-cluster=etcd-1=http://127.0.0.1:2380,etcd-2=http://127.0.0.1:2382,etcd-3=http://127.0.0.1:2384") ||
			!slices.Contains(ch.Args, "--data-dir=/tmp/x/"+name) || !slices.Contains(ch.Args, "--client-url="+wantEndpoints[i]) {
			t.Errorf("%s args %v", name, ch.Args)
		}
	}
	var front2 *Child
	for i, ch := range p.Children {
		if ch.Role == "etcd" {
			continue
		}
		if !slices.Contains(ch.Args, "--etcd-endpoints="+strings.Join(wantEndpoints, ",")) {
			t.Errorf("%s does not dial every etcd member: %v", ch.Name, ch.Args)
		}
		if ch.Name == "front-2" {
			front2 = &p.Children[i]
		}
	}
	if front2 == nil || front2.Addr != "127.0.0.1:8090" || !slices.Contains(front2.Args, "--region=eu-west-1") {
		t.Fatalf("front-2: %+v", front2)
	}
	if want := []string{"http://127.0.0.1:8080/mcp", "http://127.0.0.1:8090/mcp"}; !slices.Equal(p.FrontURLs, want) {
		t.Errorf("front URLs %v, want %v", p.FrontURLs, want)
	}
}

func TestPlanTopologyRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"even etcd members", func(c *Config) { c.EtcdMembers = 2 }, "--etcd-members 2"},
		{"no front", func(c *Config) { c.Fronts = 0 }, "--fronts 0"},
		{"front on a worker port", func(c *Config) { c.Fronts, c.FrontPortBase = 2, c.WorkerPortBase }, "would be used both"},
		{"etcd member on the front", func(c *Config) { c.EtcdMembers, c.EtcdClientPort = 3, 8076 }, "would be used both"},
	} {
		c := DefaultConfig()
		c.DataDir = "/tmp/x"
		tc.mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}
