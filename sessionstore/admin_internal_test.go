package sessionstore

import (
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

// handoffTarget: the up-to-date voter with the longest log, on a store the
// caller accepts; never the leader itself, a learner, a voter not heard
// from, or a voter on a store that is not registered.
func TestHandoffTarget(t *testing.T) {
	id := func(store uint32) multiraft.ReplicaID { return multiraft.ReplicaID(1<<32 | uint64(store)) }
	st := multiraft.ShardStatus{Replica: id(1), Commit: 40, Progress: []multiraft.ReplicaStatus{
		{ID: id(1), Match: 40, RecentActive: true},
		{ID: id(2), Match: 38, RecentActive: true},
		{ID: id(3), Match: 40, RecentActive: true},
		{ID: id(4), Match: 40, RecentActive: false},
		{ID: id(5), Match: 40, RecentActive: true, Learner: true},
	}}
	all := func(multiraft.StoreID) bool { return true }
	if got := handoffTarget(st, all); got != id(3) {
		t.Fatalf("target %v, want %v (longest log)", got, id(3))
	}
	not3 := func(s multiraft.StoreID) bool { return s != 3 }
	if got := handoffTarget(st, not3); got != id(2) {
		t.Fatalf("target with store 3 unregistered %v, want %v", got, id(2))
	}
	none := func(s multiraft.StoreID) bool { return s == 1 || s == 4 || s == 5 }
	if got := handoffTarget(st, none); got != 0 {
		t.Fatalf("target %v, want none", got)
	}
}
