package config

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestEnvName(t *testing.T) {
	if got := EnvName("etcd-endpoints"); got != "ERLMCP_ETCD_ENDPOINTS" {
		t.Fatalf("EnvName = %q", got)
	}
}

func TestParsePrecedence(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		env      map[string]string
		wantID   string
		wantTTL  time.Duration
		wantRegn string
	}{
		{"defaults", nil, nil, "node", 5 * time.Second, "local"},
		{"env fills unset flags", nil, map[string]string{"ERLMCP_ID": "w1", "ERLMCP_LEASE_TTL": "7s", "ERLMCP_REGION": "eu-west-1"}, "w1", 7 * time.Second, "eu-west-1"},
		{"flag beats env", []string{"--id", "w2"}, map[string]string{"ERLMCP_ID": "w1"}, "w2", 5 * time.Second, "local"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultCommon()
			c.ID = "node"
			fs := NewFlagSet("worker", "test", &bytes.Buffer{})
			c.Register(fs)
			if err := Parse(fs, tc.args, env(tc.env)); err != nil {
				t.Fatal(err)
			}
			if c.ID != tc.wantID || c.LeaseTTL != tc.wantTTL || c.Region != tc.wantRegn {
				t.Fatalf("got id=%q ttl=%s region=%q", c.ID, c.LeaseTTL, c.Region)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	c := DefaultCommon()
	fs := NewFlagSet("worker", "test", &bytes.Buffer{})
	c.Register(fs)
	err := Parse(fs, nil, env(map[string]string{"ERLMCP_LEASE_TTL": "soon"}))
	if err == nil || !strings.Contains(err.Error(), "ERLMCP_LEASE_TTL") {
		t.Fatalf("bad env value: err = %v, want one naming the variable", err)
	}

	fs = NewFlagSet("worker", "test", &bytes.Buffer{})
	c.Register(fs)
	if err := Parse(fs, []string{"stray"}, env(nil)); err == nil || !strings.Contains(err.Error(), "stray") {
		t.Fatalf("stray argument: err = %v", err)
	}

	var out bytes.Buffer
	fs = NewFlagSet("worker", "Runs a worker.", &out)
	c.Register(fs)
	if err := Parse(fs, []string{"--help"}, env(nil)); !errors.Is(err, ErrHelp) {
		t.Fatalf("--help: err = %v, want ErrHelp", err)
	}
	for _, want := range []string{"Usage: erlmcp worker", "Runs a worker.", "--etcd-endpoints", "ERLMCP_ETCD_ENDPOINTS", "default http://127.0.0.1:2379"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help text lacks %q:\n%s", want, out.String())
		}
	}
}

func TestValidate(t *testing.T) {
	ok := DefaultCommon()
	ok.ID = "w1"
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Common)
		want   string
	}{
		{"empty id", func(c *Common) { c.ID = "" }, "--id is empty"},
		{"slash in id", func(c *Common) { c.ID = "a/b" }, "must not contain"},
		{"no endpoints", func(c *Common) { c.EtcdEndpoints = " , " }, "--etcd-endpoints is empty"},
		{"prefix", func(c *Common) { c.Prefix = "erlmcp" }, "--etcd-prefix"},
		{"region", func(c *Common) { c.Region = "" }, "--region"},
		{"short ttl", func(c *Common) { c.LeaseTTL = time.Second }, "at least 2s"},
		{"log format", func(c *Common) { c.LogFormat = "xml" }, "--log-format"},
		{"log level", func(c *Common) { c.LogLevel = "loud" }, "--log-level"},
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
}

func TestEndpoints(t *testing.T) {
	c := Common{EtcdEndpoints: "http://a:1, http://b:2,,"}
	got := c.Endpoints()
	if len(got) != 2 || got[0] != "http://a:1" || got[1] != "http://b:2" {
		t.Fatalf("Endpoints = %q", got)
	}
}
