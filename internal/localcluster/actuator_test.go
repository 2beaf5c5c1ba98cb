package localcluster

import (
	"slices"
	"strings"
	"testing"
)

func TestWorkerSpecForScaling(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DataDir = "/tmp/x"
	cfg.Workers = 2
	p, err := cfg.Plan()
	if err != nil {
		t.Fatal(err)
	}
	spec := workerSpecFunc(p, cfg, "/bin/erlmcp", []string{"A=1"})
	s, err := spec("worker", 4)
	if err != nil {
		t.Fatal(err)
	}
	// worker-4 keeps the planned worker's flags with its own id, region,
	// zone and port (base+3, or a kernel-chosen one when that is taken).
	for _, want := range []string{"--id=worker-4", "--region=us-east-1", "--zone=us-east-1a"} {
		if !slices.Contains(s.Args, want) {
			t.Errorf("worker-4 args %q lack %s", s.Args, want)
		}
	}
	if !slices.Contains(s.Args, "--listen=127.0.0.1:8084") && !slices.Contains(s.Args, "--listen=127.0.0.1:0") {
		t.Errorf("worker-4 args %q: want --listen=127.0.0.1:8084 (or :0)", s.Args)
	}
	if s.Name != "worker-4" || s.Path != "/bin/erlmcp" || s.Args[0] != "worker" || !strings.HasSuffix(s.LogPath, "/tmp/x/logs/worker-4.log") {
		t.Errorf("spec %+v", s)
	}
	if _, err := spec("store", 4); err == nil {
		t.Error("the store pool was scalable")
	}
	if !p.actuatorUsable() || p.ActuatorSocketPath() != "/tmp/x/actuator.sock" {
		t.Errorf("socket %s usable=%v", p.ActuatorSocketPath(), p.actuatorUsable())
	}
	long := Plan{DataDir: "/" + strings.Repeat("d", 120)}
	if long.actuatorUsable() {
		t.Error("a socket path over 104 bytes was usable")
	}
}
