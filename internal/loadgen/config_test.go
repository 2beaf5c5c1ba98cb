package loadgen

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestParseMix(t *testing.T) {
	m, err := ParseMix("list=1, echo=6,counter=3,sse=0,resume=0,delete=0")
	if err != nil {
		t.Fatal(err)
	}
	if m[OpList] != 1 || m[OpEcho] != 6 || m[OpCounter] != 3 || m.Total() != 10 {
		t.Fatalf("mix %v", m)
	}
	if m.String() != "list=1,echo=6,counter=3,sse=0,resume=0,delete=0" {
		t.Fatalf("String %q", m.String())
	}
	// pick covers the weights in order
	counts := map[Op]int{}
	for r := 0; r < m.Total(); r++ {
		counts[m.pick(r)]++
	}
	if counts[OpList] != 1 || counts[OpEcho] != 6 || counts[OpCounter] != 3 {
		t.Fatalf("pick counts %v", counts)
	}
	if m, err := ParseMix("echo=1"); err != nil || m.Total() != 1 || m[OpCounter] != 0 {
		t.Fatalf("echo=1: %v %v", m, err)
	}
	for _, bad := range []struct{ in, want string }{
		{"", "empty"},
		{"echo", "not name=weight"},
		{"echo=x", "whole number"},
		{"echo=-1", "whole number"},
		{"echo=1,echo=2", "twice"},
		{"ping=1", "unknown operation"},
		{"echo=0,list=0", "every weight is 0"},
	} {
		if _, err := ParseMix(bad.in); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParseMix(%q) = %v, want error containing %q", bad.in, err, bad.want)
		}
	}
}

func TestDefaultMix(t *testing.T) {
	if m := DefaultMix(Protocol20251125); m.String() != "list=1,echo=6,counter=3,sse=0,resume=0,delete=0" {
		t.Errorf("sessions: %s", m)
	}
	if m := DefaultMix(Protocol20260728); m[OpCounter] != 0 || m.Total() != 10 {
		t.Errorf("sessionless: %s", m)
	}
}

func TestParseHeader(t *testing.T) {
	k, v, err := ParseHeader("Authorization:  Bearer x:y ")
	if err != nil || k != "Authorization" || v != "Bearer x:y" {
		t.Fatalf("got %q %q %v", k, v, err)
	}
	for _, bad := range []string{"NoColon", ": v", "Bad Name: v", "mcp-session-id: 1", "Accept: */*", "Host: x"} {
		if _, _, err := ParseHeader(bad); err == nil {
			t.Errorf("ParseHeader(%q) accepted", bad)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := DefaultConfig()
	ok.Mix = DefaultMix(ok.Protocol)
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"empty url", func(c *Config) { c.URL = "" }, "--url is empty"},
		{"url scheme", func(c *Config) { c.URL = "ftp://x/mcp" }, "scheme"},
		{"url host", func(c *Config) { c.URL = "http:///mcp" }, "no host"},
		{"sessions", func(c *Config) { c.Sessions = 0 }, "--sessions"},
		{"concurrency", func(c *Config) { c.Concurrency = 0 }, "--concurrency"},
		{"concurrency above sessions", func(c *Config) { c.Concurrency = 32 }, "above --sessions"},
		{"rate", func(c *Config) { c.Rate = -1 }, "--rate"},
		{"duration zero", func(c *Config) { c.Duration = 0 }, "--duration"},
		{"duration huge", func(c *Config) { c.Duration = 48 * time.Hour }, "--duration"},
		{"ramp", func(c *Config) { c.Ramp = time.Hour }, "--ramp"},
		{"timeout", func(c *Config) { c.Timeout = 0 }, "--timeout"},
		{"max requests", func(c *Config) { c.MaxRequests = -1 }, "--max-requests"},
		{"empty mix", func(c *Config) { c.Mix = Mix{} }, "--mix"},
		{"protocol", func(c *Config) { c.Protocol = "2024-11-05" }, "--protocol"},
		{"sessionless counter", func(c *Config) { c.Protocol = Protocol20260728 }, "counter needs sessions"},
		{"sse without tool", func(c *Config) { c.Mix = Mix{OpSSE: 1} }, "--sse-tool"},
		{"sse args", func(c *Config) { c.SSETool = "slow"; c.SSEArgs = json.RawMessage(`[1]`) }, "--sse-args"},
		{"errors pct", func(c *Config) { c.Budgets.MaxErrorsPct = 101 }, "--max-errors-pct"},
		{"sessions lost", func(c *Config) { c.Budgets.MaxSessionsLost = -1 }, "--max-sessions-lost"},
		{"writes lost", func(c *Config) { c.Budgets.MaxWritesLost = -1 }, "--max-writes-lost"},
		{"failover", func(c *Config) { c.Budgets.MaxFailover = -time.Second }, "--max-failover"},
		{"p95", func(c *Config) { c.Budgets.MaxP95 = -time.Second }, "--max-p95"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.change(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	sl := ok
	sl.Protocol = Protocol20260728
	sl.Mix = DefaultMix(sl.Protocol)
	if err := sl.Validate(); err != nil {
		t.Fatalf("sessionless default mix: %v", err)
	}
}

func TestExpectedOps(t *testing.T) {
	if got := expectedOps(100, 0, 2*time.Second); got != 200 {
		t.Errorf("no ramp: %v", got)
	}
	// ramp 0 -> 100/s over 2 s: 100 ops during the ramp, then 100/s
	if got := expectedOps(100, 2*time.Second, 2*time.Second); got != 100 {
		t.Errorf("end of ramp: %v", got)
	}
	if got := expectedOps(100, 2*time.Second, time.Second); got != 25 {
		t.Errorf("half ramp: %v", got)
	}
	if got := expectedOps(100, 2*time.Second, 3*time.Second); got != 200 {
		t.Errorf("after ramp: %v", got)
	}
}
