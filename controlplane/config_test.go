package controlplane

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	goodFile := filepath.Join(dir, "token")
	if err := os.WriteFile(goodFile, []byte("  s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(dir, "empty")
	if err := os.WriteFile(emptyFile, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := func() Config {
		c := DefaultConfig()
		c.Common.ID = "cp-1"
		c.AdminToken = "t"
		return c
	}
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string // "" = valid
	}{
		{"defaults with token", func(*Config) {}, ""},
		{"token file", func(c *Config) { c.AdminToken = ""; c.AdminTokenFile = goodFile }, ""},
		{"no token", func(c *Config) { c.AdminToken = "" }, "no admin token"},
		{"both token and file", func(c *Config) { c.AdminTokenFile = goodFile }, "only one"},
		{"missing token file", func(c *Config) { c.AdminToken = ""; c.AdminTokenFile = filepath.Join(dir, "nope") }, "cannot read the admin token"},
		{"empty token file", func(c *Config) { c.AdminToken = ""; c.AdminTokenFile = emptyFile }, "is empty"},
		{"empty listen", func(c *Config) { c.AdminListen = "" }, "--admin-listen is empty"},
		{"listen without port", func(c *Config) { c.AdminListen = "localhost" }, "want host:port"},
		{"bad advertise", func(c *Config) { c.AdminAdvertise = "host:0" }, "--admin-advertise"},
		{"zero shards", func(c *Config) { c.ShardCount = 0 }, "--shard-count 0"},
		{"too many shards", func(c *Config) { c.ShardCount = 5000 }, "--shard-count 5000"},
		{"bad replication", func(c *Config) { c.ReplicationFactor = 0 }, "--replication-factor"},
		{"short election ttl", func(c *Config) { c.ElectionTTL = 500 * time.Millisecond }, "--election-ttl"},
		{"negative settle", func(c *Config) { c.PlacementSettle = -time.Second }, "--placement-settle"},
		{"common checked", func(c *Config) { c.Common.ID = "" }, "--id is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mutate(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
	c := base()
	c.AdminToken, c.AdminTokenFile = "", goodFile
	if tok, err := c.token(); err != nil || tok != "s3cret" {
		t.Fatalf("token() = %q, %v; want s3cret", tok, err)
	}
	c.ElectionTTL = 1500 * time.Millisecond
	if got := c.electionTTLSeconds(); got != 2 {
		t.Fatalf("electionTTLSeconds(1.5s) = %d, want 2", got)
	}
}
