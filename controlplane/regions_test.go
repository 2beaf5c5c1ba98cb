package controlplane

import (
	"strings"
	"testing"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
)

// rounds parses "ok"/"x" probe rounds, oldest first: "oox" = ok, ok, fail.
func rounds(s string) []bool {
	out := make([]bool, len(s))
	for i, c := range s {
		out[i] = c == 'o'
	}
	return out
}

func TestDetectRegionFailed(t *testing.T) {
	cfg := DefaultDetectorConfig() // 4 of 5 fail; 3 good in a row recover
	tests := []struct {
		name   string
		probes string
		failed bool
		want   bool
	}{
		{"healthy", "ooooo", false, false},
		{"one miss", "ooxoo", false, false},
		{"flapping never fails", "oxoxoxoxoxox", false, false},
		{"flapping with a double miss", "xoxxoxo", false, false},
		{"three of five", "xxxoo", false, false},
		{"four of five", "oxxxx", false, true},
		{"four of the last five among more", "ooooooxxoxx", false, true},
		{"old failures slide out", "xxxxooooo", false, false},
		{"too few rounds yet", "xxx", false, false},
		{"failed stays failed on flapping", "xxxxoxoxo", true, true},
		{"failed stays failed after two good", "xxxxxoo", true, true},
		{"failed recovers after three good", "xxxxxooo", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DetectRegionFailed(rounds(tt.probes), tt.failed, cfg); got != tt.want {
				t.Fatalf("DetectRegionFailed(%s, failed=%v) = %v, want %v", tt.probes, tt.failed, got, tt.want)
			}
		})
	}
	// Fed round by round, as the loop does, flapping never fails a region.
	failed := false
	var seen []bool
	for i := range 100 {
		seen = append(seen, i%2 == 0 || i%7 == 0)
		failed = DetectRegionFailed(seen, failed, cfg)
		if failed {
			t.Fatalf("flapping failed the region after round %d", i)
		}
	}
}

func TestRoundOK(t *testing.T) {
	for _, tt := range []struct {
		healthy, total int
		want           bool
	}{{0, 0, false}, {0, 3, false}, {1, 3, false}, {2, 3, true}, {1, 2, true}, {3, 3, true}} {
		if got := roundOK(tt.healthy, tt.total); got != tt.want {
			t.Errorf("roundOK(%d, %d) = %v", tt.healthy, tt.total, got)
		}
	}
}

func TestFailoverTarget(t *testing.T) {
	rs := []RegionDoc{
		{Name: "eu", Role: RegionPrimary, State: RegionActive, Weight: 1},
		{Name: "us", Role: RegionSecondary, State: RegionStandby, Weight: 1},
		{Name: "ap", Role: RegionSecondary, State: RegionStandby, Weight: 5},
		{Name: "dr", Role: RegionDR, State: RegionStandby, Weight: 9},
		{Name: "sa", Role: RegionSecondary, State: RegionFailed, Weight: 10},
	}
	tests := []struct {
		name    string
		from    string
		healthy map[string]bool
		want    string
	}{
		{"secondary with most weight", "eu", nil, "ap"},
		{"unhealthy skipped", "eu", map[string]bool{"ap": false}, "us"},
		{"dr last", "eu", map[string]bool{"ap": false, "us": false}, "dr"},
		{"primary first", "ap", nil, "eu"},
		{"nothing left", "eu", map[string]bool{"ap": false, "us": false, "dr": false}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := FailoverTarget(rs, tt.from, tt.healthy); got != tt.want {
				t.Fatalf("FailoverTarget(from %s) = %q, want %q", tt.from, got, tt.want)
			}
		})
	}
}

func TestShardStateFromStatus(t *testing.T) {
	d := ShardDoc{Shard: clusterstate.Shard{Shard: 3, ConfEpoch: 5, Leader: "old", Replicas: []clusterstate.Replica{
		{Store: "a", Role: clusterstate.RoleVoter}, {Store: "b", Role: clusterstate.RoleVoter}, {Store: "c", Role: clusterstate.RoleLearner}, {Store: "d", Role: clusterstate.RoleVoter}}}}
	st := map[string]ReplicaStatus{
		"a": {Role: "voter", AppliedIndex: 100, MatchLag: 0, Leader: "a", Term: 3},
		"b": {Role: "voter", AppliedIndex: 90, MatchLag: 2, Leader: "a", Term: 3},
		"c": {Role: "learner", AppliedIndex: 0, MatchLag: -1, Leader: "b", Term: 2}, // stale belief
	}
	s := shardState(d, st)
	if s.Leader != "a" || s.ConfEpoch != 5 {
		t.Fatalf("leader %q epoch %d", s.Leader, s.ConfEpoch)
	}
	var got []string
	for _, r := range s.Replicas {
		got = append(got, r.Store+":"+r.ReportedRole+":"+itoa(r.Lag))
	}
	if strings.Join(got, " ") != "a:voter:0 b:voter:10 c:learner:-1 d::-1" {
		t.Fatalf("replicas %v", got)
	}
}

func itoa(n int64) string {
	if n < 0 {
		return "-" + itoa(-n)
	}
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

func TestStatusKeyRoundTrip(t *testing.T) {
	k := StatusKey("/p/", 7, "store-a")
	if k != "/p/status/shards/007/store-a" {
		t.Fatalf("key %q", k)
	}
	n, s, ok := ParseStatusKey("/p/", k)
	if !ok || n != 7 || s != "store-a" {
		t.Fatalf("parse %d %q %v", n, s, ok)
	}
	if _, _, ok := ParseStatusKey("/p/", "/p/status/shards/x/y"); ok {
		t.Fatal("parsed a bad key")
	}
}
