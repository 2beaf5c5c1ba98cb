package controlplane

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/membership"
)

func stores(ids ...string) []membership.Member {
	var out []membership.Member
	for _, id := range ids {
		out = append(out, membership.Member{Role: membership.RoleStore, ID: id, Addr: id + ":1"})
	}
	return out
}

func emptyShards(n int) []clusterstate.Shard {
	out := make([]clusterstate.Shard, n)
	for i := range out {
		out[i].Shard = i
	}
	return out
}

func voter(shard int, store string, epoch uint64) clusterstate.Shard {
	return clusterstate.Shard{Shard: shard, Replicas: []clusterstate.Replica{{Store: store, Role: clusterstate.RoleVoter}}, ConfEpoch: epoch}
}

func TestPlaceInitial(t *testing.T) {
	placed := emptyShards(4)
	placed[1] = voter(1, "gone", 3)
	draining := stores("a", "b")
	draining[0].Draining = true
	emptyWithEpoch := emptyShards(2)
	emptyWithEpoch[1].ConfEpoch = 4

	tests := []struct {
		name   string
		shards []clusterstate.Shard
		stores []membership.Member
		want   []clusterstate.Shard
	}{
		{"no stores", emptyShards(3), nil, nil},
		{"one store takes all", emptyShards(3), stores("s1"), []clusterstate.Shard{voter(0, "s1", 1), voter(1, "s1", 1), voter(2, "s1", 1)}},
		{"round robin over sorted ids", emptyShards(4), stores("c", "a", "b"), []clusterstate.Shard{voter(0, "a", 1), voter(1, "b", 1), voter(2, "c", 1), voter(3, "a", 1)}},
		{"placed shard never moves", placed, stores("a", "b"), []clusterstate.Shard{voter(0, "a", 1), voter(2, "a", 1), voter(3, "b", 1)}},
		{"all placed", []clusterstate.Shard{voter(0, "x", 1)}, stores("a"), nil},
		{"draining store skipped", emptyShards(2), draining, []clusterstate.Shard{voter(0, "b", 1), voter(1, "b", 1)}},
		{"duplicate ids count once", emptyShards(2), stores("a", "a", "b"), []clusterstate.Shard{voter(0, "a", 1), voter(1, "b", 1)}},
		{"epoch grows from the old one", emptyWithEpoch, stores("a"), []clusterstate.Shard{voter(0, "a", 1), voter(1, "a", 5)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := append([]clusterstate.Shard(nil), tt.shards...)
			got := PlaceInitial(tt.shards, tt.stores)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("PlaceInitial =\n %+v\nwant\n %+v", got, tt.want)
			}
			if !reflect.DeepEqual(before, tt.shards) {
				t.Fatalf("PlaceInitial modified its input")
			}
		})
	}
}

func TestPlacementReady(t *testing.T) {
	now := time.Now()
	settle := 10 * time.Second
	// stores lists one region per usable store; regions the registered
	// region docs ("name" or "name!" for a failed one; nil: none yet).
	tests := []struct {
		name       string
		stores     []string
		regions    []string
		rf         int
		firstStore time.Time
		want       bool
	}{
		{"no store", nil, []string{"r1"}, 3, now.Add(-time.Hour), false},
		{"enough stores for rf 3", []string{"r1", "r2", "r3"}, []string{"r1", "r2", "r3"}, 3, now, true},
		{"rf 5 needs only 3 stores", []string{"r1", "r2", "r3"}, []string{"r1", "r2", "r3"}, 5, now, true},
		{"rf 1 needs one", []string{"r1"}, []string{"r1"}, 1, now, true},
		{"rf 1, regions unknown", []string{"r1"}, nil, 1, now, true},
		{"two of three, settling", []string{"r1", "r2"}, []string{"r1", "r2"}, 3, now.Add(-time.Second), false},
		{"two of three, settled", []string{"r1", "r2"}, []string{"r1", "r2"}, 3, now.Add(-settle), true},
		{"one store, settled", []string{"r1"}, []string{"r1"}, 3, now.Add(-2 * settle), true},
		{"store seen but time unknown", []string{"r1"}, []string{"r1"}, 3, time.Time{}, false},
		{"single region places at once", []string{"r1", "r1", "r1"}, []string{"r1"}, 3, now, true},
		{"two regions of two", []string{"r1", "r1", "r2"}, []string{"r1", "r2"}, 3, now, true},
		// The HA run's case: three stores up, the third region's not yet.
		{"three stores in two of three regions waits", []string{"r1", "r2", "r1"}, []string{"r1", "r2", "r3"}, 3, now.Add(-time.Second), false},
		{"three stores in two of three regions, settled", []string{"r1", "r2", "r1"}, []string{"r1", "r2", "r3"}, 3, now.Add(-settle), true},
		{"four stores in three regions", []string{"r1", "r2", "r1", "r3"}, []string{"r1", "r2", "r3"}, 3, now, true},
		{"rf 2 needs two of three regions", []string{"r1", "r2"}, []string{"r1", "r2", "r3"}, 2, now, true},
		{"a store's region counts before its doc", []string{"r1", "r1", "r4"}, []string{"r1", "r2"}, 3, now, false},
		{"failed region not waited for", []string{"r1", "r2", "r2"}, []string{"r1", "r2", "r3!"}, 3, now, true},
		{"regions unknown, stores in fewer than rf wait", []string{"r1", "r1", "r2"}, nil, 3, now.Add(-time.Second), false},
		{"regions unknown, settled", []string{"r1", "r1", "r2"}, nil, 3, now.Add(-settle), true},
		{"regions unknown, stores in rf regions", []string{"r1", "r2", "r3"}, nil, 3, now, true},
	}
	cp := &ControlPlane{cfg: Config{PlacementSettle: settle}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stores []membership.Member
			for i, r := range tt.stores {
				stores = append(stores, membership.Member{Role: membership.RoleStore, ID: fmt.Sprint("s", i), Region: r})
			}
			var docs []RegionDoc
			for _, r := range tt.regions {
				d := RegionDoc{Name: strings.TrimSuffix(r, "!"), State: RegionStandby}
				if strings.HasSuffix(r, "!") {
					d.State = RegionFailed
				}
				docs = append(docs, d)
			}
			if got := cp.bootstrapReady(stores, stores, docs, tt.rf, tt.firstStore, now); got != tt.want {
				t.Fatalf("bootstrapReady(stores %v, regions %v, rf %d) = %v, want %v", tt.stores, tt.regions, tt.rf, got, tt.want)
			}
		})
	}
}
