package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestJSONWithFields(t *testing.T) {
	var buf bytes.Buffer
	// A buffer is not a terminal, so auto means JSON.
	log, err := New(&buf, "auto", "info", "worker", "w1", "us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("hidden")
	log.WithField("shard", 3).Info("hello")
	var m map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(buf.Bytes()), &m); err != nil {
		t.Fatalf("not one JSON line: %q", buf.String())
	}
	for k, v := range map[string]any{"role": "worker", "node": "w1", "region": "us-east-1", "msg": "hello", "shard": 3.0} {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
}

func TestTextAndErrors(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "text", "debug", "store", "s1", "eu-west-1")
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("visible")
	if !strings.Contains(buf.String(), "visible") || !strings.Contains(buf.String(), "role=store") {
		t.Fatalf("text output: %q", buf.String())
	}
	if _, err := New(&buf, "xml", "info", "", "", ""); err == nil {
		t.Error("bad format accepted")
	}
	if _, err := New(&buf, "text", "loud", "", "", ""); err == nil || !strings.Contains(err.Error(), "loud") {
		t.Errorf("bad level: %v", err)
	}
	Discard().Info("nothing")
}
