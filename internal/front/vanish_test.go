package front

import (
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/membership"
)

func memberIDs(ms []membership.Member) []string {
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.ID)
	}
	sort.Strings(ids)
	return ids
}

func TestVanishGrace(t *testing.T) {
	now := time.Unix(1000, 0)
	g := newVanishGrace(5*time.Second, func() time.Time { return now })
	w := func(id string, draining bool) membership.Member {
		return membership.Member{Role: membership.RoleWorker, ID: id, Addr: id + ":1", Draining: draining}
	}
	check := func(step string, ms []membership.Member, want []string, wantNext time.Duration) {
		t.Helper()
		out, next, _ := g.apply(ms)
		if got := memberIDs(out); !slices.Equal(got, want) {
			t.Errorf("%s: routed to %v, want %v", step, got, want)
		}
		if next != wantNext {
			t.Errorf("%s: next %s, want %s", step, next, wantNext)
		}
	}
	check("all registered", []membership.Member{w("a", false), w("b", false), w("c", false)}, []string{"a", "b", "c"}, 0)
	// Every key revoked at once (a resumed etcd leader): all kept.
	check("keys vanished", nil, []string{"a", "b", "c"}, 5*time.Second)
	now = now.Add(time.Second)
	// a and b registered again; c has not: kept for what is left.
	check("two back", []membership.Member{w("a", false), w("b", false)}, []string{"a", "b", "c"}, 4*time.Second)
	now = now.Add(4 * time.Second)
	check("grace over", []membership.Member{w("a", false), w("b", false)}, []string{"a", "b"}, 0)
	// A worker that drains, then leaves, gets no grace.
	check("b drains", []membership.Member{w("a", false), w("b", true)}, []string{"a", "b"}, 0)
	check("b left", []membership.Member{w("a", false)}, []string{"a"}, 0)
	// A vanished worker that comes back is no longer counted as vanished.
	check("a vanished", nil, []string{"a"}, 5*time.Second)
	check("a back", []membership.Member{w("a", false)}, []string{"a"}, 0)
	now = now.Add(10 * time.Second)
	check("a vanished again", nil, []string{"a"}, 5*time.Second)
}

func TestVanishGraceZeroDropsAtOnce(t *testing.T) {
	g := newVanishGrace(0, time.Now)
	g.apply([]membership.Member{{Role: membership.RoleWorker, ID: "a", Addr: "a:1"}})
	if out, next, _ := g.apply(nil); len(out) != 0 || next != 0 {
		t.Fatalf("grace 0 kept %v (next %s)", memberIDs(out), next)
	}
}
