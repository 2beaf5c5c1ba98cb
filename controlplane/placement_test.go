package controlplane

import (
	"reflect"
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
	tests := []struct {
		name       string
		n, rf      int
		firstStore time.Time
		want       bool
	}{
		{"no store", 0, 3, now.Add(-time.Hour), false},
		{"enough stores for rf 3", 3, 3, now, true},
		{"rf 5 needs only 3", 3, 5, now, true},
		{"rf 1 needs one", 1, 1, now, true},
		{"two of three, settling", 2, 3, now.Add(-time.Second), false},
		{"two of three, settled", 2, 3, now.Add(-settle), true},
		{"one store, settled", 1, 3, now.Add(-2 * settle), true},
		{"store seen but time unknown", 1, 3, time.Time{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := placementReady(tt.n, tt.rf, tt.firstStore, now, settle); got != tt.want {
				t.Fatalf("placementReady(%d, rf %d) = %v, want %v", tt.n, tt.rf, got, tt.want)
			}
		})
	}
}
