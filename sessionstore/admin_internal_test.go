package sessionstore

import (
	"slices"
	"testing"

	"github.com/erlmcp/erlmcp/sessionstore/multiraft"
)

// replicaUpToDate is the removal guard's test of a voter: a voter the
// leader has not heard from in this term (Match 0, as every follower
// starts under a new leader) is not up to date, even on a log short enough
// for the lag test to pass.
func TestReplicaUpToDate(t *testing.T) {
	st := multiraft.ShardStatus{Replica: 1, Commit: 40, Progress: []multiraft.ReplicaStatus{
		{ID: 1, Match: 40, RecentActive: true},
		{ID: 2, Match: 0, RecentActive: true},
		{ID: 3, Match: 39, RecentActive: true},
		{ID: 4, Match: 40, RecentActive: false},
		{ID: 5, Match: 40, RecentActive: true, Learner: true},
	}}
	for id, want := range map[multiraft.ReplicaID]bool{1: true, 2: false, 3: true, 4: false, 5: false, 6: false} {
		if got := replicaUpToDate(st, id); got != want {
			t.Errorf("replica %d up to date: %v, want %v", id, got, want)
		}
	}
}

// handoffTarget: a voter whose log is within the lag of the commit index,
// on a store the caller accepts, preferring one heard from recently, then
// the longest log; never the leader itself, a learner, a voter far behind
// or one never heard from in this term (Match 0), or a voter on a store
// that is not registered.
func TestHandoffTarget(t *testing.T) {
	id := func(store uint32) multiraft.ReplicaID { return multiraft.ReplicaID(1<<32 | uint64(store)) }
	st := multiraft.ShardStatus{Replica: id(1), Commit: 400, Progress: []multiraft.ReplicaStatus{
		{ID: id(1), Match: 400, RecentActive: true},
		{ID: id(2), Match: 380, RecentActive: true},
		{ID: id(3), Match: 400, RecentActive: true},
		{ID: id(4), Match: 400, RecentActive: false},
		{ID: id(5), Match: 400, RecentActive: true, Learner: true},
		{ID: id(6), Match: 0, RecentActive: true},
		{ID: id(7), Match: 100, RecentActive: true},
	}}
	for _, c := range []struct {
		allowed []multiraft.StoreID
		want    multiraft.ReplicaID
	}{
		{[]multiraft.StoreID{1, 2, 3, 4, 5, 6, 7}, id(3)}, // active, longest log
		{[]multiraft.StoreID{1, 2, 4, 5, 6, 7}, id(2)},    // active beats a longer log
		{[]multiraft.StoreID{1, 4, 5, 6, 7}, id(4)},       // inactive but up to date
		{[]multiraft.StoreID{1, 5, 6, 7}, 0},
	} {
		got := handoffTarget(st, func(s multiraft.StoreID) bool { return slices.Contains(c.allowed, s) })
		if got != c.want {
			t.Errorf("stores %v: target %v, want %v", c.allowed, got, c.want)
		}
	}
}
