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
