package worker

import (
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	d := DefaultConfig()
	if d.Listen != "127.0.0.1:8081" || d.MaxBodyBytes != 4<<20 || d.SessionIdleTTL != 30*time.Minute || d.RequestTimeout <= 0 {
		t.Fatalf("defaults %+v", d)
	}
	tests := []struct {
		name   string
		change func(*Config)
		want   string // substring of the error; "" when valid
	}{
		{"any port", func(c *Config) { c.Listen = ":0" }, ""},
		{"ipv6 listen", func(c *Config) { c.Listen = "[::1]:8081" }, ""},
		{"origins", func(c *Config) { c.AllowedOrigins = []string{"https://a.example.com", "http://b:8080", "*"} }, ""},
		{"no port", func(c *Config) { c.Listen = "127.0.0.1" }, "--listen"},
		{"empty listen", func(c *Config) { c.Listen = "" }, "--listen"},
		{"tiny body", func(c *Config) { c.MaxBodyBytes = 10 }, "--max-body-bytes"},
		{"short ttl", func(c *Config) { c.SessionIdleTTL = time.Millisecond }, "--session-idle-ttl"},
		{"no timeout", func(c *Config) { c.RequestTimeout = 0 }, "request timeout"},
		{"in flight at once", func(c *Config) { c.InflightDelay = 0 }, ""},
		{"negative inflight delay", func(c *Config) { c.InflightDelay = -time.Millisecond }, "--inflight-delay"},
		{"origin with path", func(c *Config) { c.AllowedOrigins = []string{"https://a.example.com/x"} }, "--allowed-origins"},
		{"origin without scheme", func(c *Config) { c.AllowedOrigins = []string{"a.example.com"} }, "--allowed-origins"},
		{"common: empty id", func(c *Config) { c.Common.ID = "" }, "--id"},
		{"common: short lease", func(c *Config) { c.Common.LeaseTTL = time.Second }, "--lease-ttl"},
		{"no gc floor", func(c *Config) { c.GCMinHeapMiB = 0 }, ""},
		{"zero gc percent", func(c *Config) { c.GCPercent = 0 }, "--gc-percent 0"},
		{"negative gc floor", func(c *Config) { c.GCMinHeapMiB = -1 }, "--gc-min-heap-mib -1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Common.ID = "w1"
			tc.change(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestParseOrigins(t *testing.T) {
	got := ParseOrigins(" https://a.example.com, ,http://b:1 ,")
	if len(got) != 2 || got[0] != "https://a.example.com" || got[1] != "http://b:1" {
		t.Fatalf("ParseOrigins = %q", got)
	}
	if ParseOrigins("") != nil {
		t.Fatal("empty list")
	}
}
