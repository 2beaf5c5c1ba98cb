package sessionstore

import (
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig()
	ok.Common.ID = "s1"
	ok.DataDir = "/tmp/x"
	cases := []struct {
		name   string
		change func(*Config)
		want   string // "" means valid
	}{
		{"defaults with id and data dir", func(*Config) {}, ""},
		{"port zero", func(c *Config) { c.Listen = "127.0.0.1:0" }, ""},
		{"all interfaces", func(c *Config) { c.Listen = ":9090" }, ""},
		{"empty listen", func(c *Config) { c.Listen = "" }, "--listen is empty"},
		{"listen without port", func(c *Config) { c.Listen = "localhost" }, "want host:port"},
		{"listen bad port", func(c *Config) { c.Listen = "localhost:http" }, "must be a number"},
		{"listen port too big", func(c *Config) { c.Listen = "localhost:70000" }, "must be a number"},
		{"empty data dir", func(c *Config) { c.DataDir = "" }, "--data-dir is empty"},
		{"http listen", func(c *Config) { c.HTTPListen = "127.0.0.1:0" }, ""},
		{"http listen without port", func(c *Config) { c.HTTPListen = "localhost" }, "--http-listen"},
		{"http listen bad port", func(c *Config) { c.HTTPListen = "localhost:99999" }, "--http-listen"},
		{"advertise", func(c *Config) { c.Advertise = "store-1.ns.svc:9090" }, ""},
		{"advertise without port", func(c *Config) { c.Advertise = "store-1" }, "--advertise"},
		{"advertise unspecified", func(c *Config) { c.Advertise = "0.0.0.0:9090" }, "not dialable"},
		{"advertise port zero", func(c *Config) { c.Advertise = "h:0" }, "1..65535"},
		{"advertise empty host", func(c *Config) { c.Advertise = ":9090" }, "host is empty"},
		{"zero retention", func(c *Config) { c.EventRetention = 0 }, "--event-retention 0"},
		{"zero streams", func(c *Config) { c.MaxStreamsPerSession = 0 }, "--max-streams-per-session 0"},
		{"zero max value", func(c *Config) { c.MaxValueBytes = 0 }, "--max-value-bytes 0"},
		{"zero gc percent", func(c *Config) { c.GCPercent = 0 }, "--gc-percent 0"},
		{"negative gc min heap", func(c *Config) { c.GCMinHeapMiB = -1 }, "--gc-min-heap-mib -1"},
		{"huge gc min heap", func(c *Config) { c.GCMinHeapMiB = 1<<20 + 1 }, "--gc-min-heap-mib 1048577"},
		{"huge max value", func(c *Config) { c.MaxValueBytes = MaxMaxValueBytes + 1 }, "--max-value-bytes"},
		{"common: empty id", func(c *Config) { c.Common.ID = "" }, "--id is empty"},
		{"common: no etcd", func(c *Config) { c.Common.EtcdEndpoints = " , " }, "--etcd-endpoints"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.change(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v; want an error containing %q", err, tc.want)
			}
		})
	}
	if d := DefaultConfig(); d.Listen != "127.0.0.1:9090" || d.MaxValueBytes != 1<<20 || d.EventRetention != 1000 || d.MaxStreamsPerSession != 1000 || d.Advertise != "" || d.HTTPListen != "" {
		t.Fatalf("defaults: %+v", DefaultConfig())
	}
}
