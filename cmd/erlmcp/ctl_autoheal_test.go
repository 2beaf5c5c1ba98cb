package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/erlmcp/erlmcp/controlplane"
)

func TestCtlAutohealPauseResume(t *testing.T) {
	cp, _ := startTestControlPlane(t)
	base := []string{"--admin-url", cp.AdminURL(), "--token", "tok", "autoheal"}
	code, out, errs := ctl(t, nil, append(base, "pause", "--json")...)
	if code != exitOK {
		t.Fatalf("autoheal pause: exit %d, stderr %s", code, errs)
	}
	var v controlplane.AutohealView
	if err := json.Unmarshal([]byte(out), &v); err != nil || !v.Paused || v.Actuator != "none" {
		t.Fatalf("autoheal pause --json: %+v, %v\n%s", v, err, out)
	}
	code, out, errs = ctl(t, nil, base...)
	if code != exitOK || !strings.Contains(out, "autoheal: paused since") || !strings.Contains(out, "actuator: none") {
		t.Fatalf("autoheal status: exit %d, out %q, stderr %s", code, out, errs)
	}
	code, out, _ = ctl(t, nil, append(base, "resume")...)
	if code != exitOK || !strings.Contains(out, "autoheal: active") {
		t.Fatalf("autoheal resume: exit %d, out %q", code, out)
	}
	if code, _, _ := ctl(t, nil, append(base, "restart")...); code != exitUsage {
		t.Fatalf("autoheal restart: exit %d, want usage", code)
	}
	if code, _, errs := ctl(t, nil, "--admin-url", cp.AdminURL(), "--token", "bad", "autoheal", "pause"); code != exitFailure || !strings.Contains(errs, "rejected the token") {
		t.Fatalf("autoheal pause with a bad token: exit %d, stderr %s", code, errs)
	}
}
