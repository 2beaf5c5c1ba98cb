package sessionstore

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/membership"
	bolt "go.etcd.io/bbolt"
)

func TestProposedFormat(t *testing.T) {
	newest := membership.Member{CommandFormat: maxCommandFormat}
	shardsOf := func(stores ...string) []clusterstate.Shard {
		var reps []clusterstate.Replica
		for _, s := range stores {
			reps = append(reps, clusterstate.Replica{Store: s, Role: clusterstate.RoleVoter})
		}
		return []clusterstate.Shard{{Shard: 0, Replicas: reps}}
	}
	for _, tc := range []struct {
		name        string
		stores      map[string]membership.Member
		shards      []clusterstate.Shard
		want        byte
		wantHoldout string
	}{
		{"every store advertises the newest", map[string]membership.Member{"a": newest, "b": newest}, shardsOf("a", "b"), maxCommandFormat, ""},
		{"a store of an older build (no field)", map[string]membership.Member{"a": newest, "b": {}}, shardsOf("a", "b"), commandFormatJSON, "b"},
		{"an older store not in the shard map still counts", map[string]membership.Member{"a": newest, "z": {}}, shardsOf("a"), commandFormatJSON, "z"},
		{"a shard-map store that is not registered", map[string]membership.Member{"a": newest}, shardsOf("a", "down"), commandFormatJSON, "down"},
		{"a store advertising the binary form only", map[string]membership.Member{"a": newest, "b": {CommandFormat: commandFormatBinary}}, shardsOf("a", "b"), commandFormatBinary, "b"},
		{"a store newer than this build", map[string]membership.Member{"a": newest, "b": {CommandFormat: maxCommandFormat + 5}}, shardsOf("a", "b"), maxCommandFormat, ""},
		{"no store at all", nil, nil, maxCommandFormat, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, holdout := proposedFormat(tc.stores, tc.shards)
			if got != tc.want || holdout != tc.wantHoldout {
				t.Fatalf("proposedFormat = %d, held back by %q; want %d, %q", got, holdout, tc.want, tc.wantHoldout)
			}
		})
	}
}

func TestCommandFormatBeforeRouting(t *testing.T) {
	var n *Node
	if f := n.commandFormat(); f != commandFormatJSON {
		t.Fatalf("nil node proposes %d; want JSON", f)
	}
	if f := (&Node{}).commandFormat(); f != commandFormatJSON {
		t.Fatalf("node without a routing view proposes %d; want JSON", f)
	}
}

// An entry in a format newer than this build stops the replica (an error
// from Apply) instead of being refused where newer replicas apply it; a
// malformed entry of a known format is refused the same way everywhere.
func TestApplyUnknownFormatStops(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "sm.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sm := stateMachine{rs: &raftStorage{clocks: map[uint32]int64{}, wakes: map[uint32][]func(){}}}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("shard"))
		if err != nil {
			return err
		}
		if _, err := sm.Apply(b, 0, 1, []byte{maxCommandFormat + 1, 1, 2, 3}); !errors.Is(err, errUnknownFormat) {
			t.Errorf("Apply of format %d = %v; want errUnknownFormat", maxCommandFormat+1, err)
		}
		res, err := sm.Apply(b, 0, 2, []byte{commandFormatJSON, '{'})
		if err != nil {
			t.Errorf("Apply of a malformed JSON entry = %v; want a refusal, not an error", err)
		}
		out, derr := decodeOutcome(res)
		if derr != nil || out.Status == nil {
			t.Errorf("malformed entry answered %v, %v; want a refusal", out, derr)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestUniformTiming(t *testing.T) {
	same := membership.Member{RaftTickMs: 50, RaftElectionTicks: 10}
	shards := []clusterstate.Shard{{Shard: 0, Replicas: []clusterstate.Replica{{Store: "a"}, {Store: "b"}}}}
	for _, tc := range []struct {
		name    string
		stores  map[string]membership.Member
		wantOK  bool
		wantOdd string
	}{
		{"every store the same", map[string]membership.Member{"a": same, "b": same}, true, ""},
		{"a shorter tick", map[string]membership.Member{"a": same, "b": {RaftTickMs: 10, RaftElectionTicks: 10}}, false, "b"},
		{"other election ticks", map[string]membership.Member{"a": same, "b": {RaftTickMs: 50, RaftElectionTicks: 20}}, false, "b"},
		{"an older build (unknown)", map[string]membership.Member{"a": same, "b": {}}, false, "b"},
		{"a shard-map store not registered", map[string]membership.Member{"a": same}, false, "b"},
		{"a registered store outside the map", map[string]membership.Member{"a": same, "b": same, "c": {RaftTickMs: 100, RaftElectionTicks: 10}}, false, "c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, odd := uniformTiming(tc.stores, shards, 50, 10)
			if ok != tc.wantOK || odd != tc.wantOdd {
				t.Fatalf("uniformTiming = %v, %q; want %v, %q", ok, odd, tc.wantOK, tc.wantOdd)
			}
		})
	}
}
