package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/erlmcp/erlmcp/controlplane"
)

func TestCtlPlacementActions(t *testing.T) {
	cp, _ := startTestControlPlane(t)
	env := adminEnv(cp)
	code, out, errs := ctl(t, env, "placement", "pause", "--json")
	var st controlplane.PlacementState
	if code != exitOK || json.Unmarshal([]byte(out), &st) != nil || !st.Paused {
		t.Fatalf("placement pause: exit %d %s %s", code, out, errs)
	}
	if code, out, errs = ctl(t, env, "placement"); code != exitOK || !strings.HasPrefix(out, "placement paused") {
		t.Fatalf("placement: exit %d %q %s", code, out, errs)
	}
	if code, out, errs = ctl(t, env, "placement", "resume"); code != exitOK || !strings.HasPrefix(out, "placement acting") {
		t.Fatalf("placement resume: exit %d %q %s", code, out, errs)
	}
	// No store is registered: an unknown node is a 404 naming the stores (none).
	if code, _, errs = ctl(t, env, "drain", "store-9"); code != exitFailure || !strings.Contains(errs, `no live node "store-9"`) {
		t.Fatalf("drain unknown: exit %d %s", code, errs)
	}
	// No shard map yet (no stores placed): shard 0 is unknown.
	if code, _, errs = ctl(t, env, "move-leader", "0", "store-1"); code != exitFailure || !strings.Contains(errs, "no shard 0") {
		t.Fatalf("move-leader: exit %d %s", code, errs)
	}
	for _, args := range [][]string{{"placement", "explode"}, {"drain"}, {"undrain", "a", "b"}, {"move-leader", "1"}, {"move-leader", "x", "s"}} {
		if code, _, errs := ctl(t, env, args...); code != exitUsage {
			t.Errorf("ctl %q: exit %d, want %d (%s)", args, code, exitUsage, errs)
		}
	}
}
