package multiraft

import (
	"context"
	"reflect"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
)

// A committed entry is handed to the applier, and its proposer answered,
// without waiting for the fsync of entries appended in the same loop
// iteration (applyEarly). The leader's disk takes 300ms per fsync: A's
// append takes one, and B, proposed once a follower has acknowledged A,
// is appended in the next iteration, the one that also commits A. A's
// answer must come before that iteration's fsync ends (the leader's
// Syncs count one more than before A, not two).
func TestAnswerDoesNotWaitForNextAppend(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) {
		// The loop stalls 300ms per fsync; slow ticks keep elections out
		// of it.
		cfg.TickInterval, cfg.ElectionTicks = 100*time.Millisecond, 30
	})
	c.bootstrap(1)
	lead := c.leader(1, 30*time.Second)
	c.mustPut(1, "warm", "1")
	n := c.node(lead)
	c.disk(lead).set(nil, nil, 300*time.Millisecond)
	defer c.disk(lead).set(nil, nil, 0)

	st, err := n.Status(1)
	if err != nil {
		t.Fatal(err)
	}
	idxA := st.Commit + 1
	syncs0 := n.Stats().Syncs
	type answer struct {
		syncs uint64
		err   error
	}
	aC := make(chan answer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := n.Propose(ctx, 1, putCmd("a", "1"))
		aC <- answer{n.Stats().Syncs, err}
	}()
	waitFor(t, 30*time.Second, "a follower's acknowledgement of A", func() bool {
		st, err := n.Status(1)
		if err != nil {
			return false
		}
		for _, p := range st.Progress {
			if p.ID != st.Replica && p.Match >= idxA {
				return true
			}
		}
		return false
	})
	bC := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := n.Propose(ctx, 1, putCmd("b", "1"))
		bC <- err
	}()
	a := <-aC
	if a.err != nil {
		t.Fatalf("A: %v", a.err)
	}
	if err := <-bC; err != nil {
		t.Fatalf("B: %v", err)
	}
	if d := a.syncs - syncs0; d > 1 {
		t.Fatalf("A was answered after %d WAL fsyncs of the leader: it waited for the append of B", d)
	}
}

// A periodic checkpoint's fsyncs do not hold up the applier: with a
// checkpoint stopped between its pin and its fsyncs, writes are still
// applied and answered. Released, the checkpoint completes, and a restart
// (rollback to it, then the WAL's replay) keeps every write.
func TestCheckpointDoesNotHoldUpApplies(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1)
	lead := c.leader(1, 30*time.Second)
	c.mustPut(1, "k", "0")
	n := c.node(lead)
	entered, release := make(chan struct{}), make(chan struct{})
	var hold, free sync.Once
	unblock := func() { free.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the cluster's shutdown, which waits for it
	c.disk(lead).setCheckpointHook(func() {
		hold.Do(func() {
			close(entered)
			<-release
		})
	})
	c.mustPut(1, "k", "1") // something for a checkpoint to take
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("no checkpoint started")
	}
	ck0 := n.Stats().Checkpoints
	for i := 2; i <= 5; i++ {
		c.mustPut(1, "k", string(rune('0'+i)))
	}
	// Applied on the leader while the checkpoint waits.
	c.waitValue(1, "k", "5", 30*time.Second, lead)
	if got := n.Stats().Checkpoints; got != ck0 {
		t.Fatalf("%d checkpoints completed while one was held", got-ck0)
	}
	unblock()
	waitFor(t, 30*time.Second, "the held checkpoint to complete", func() bool {
		return n.Stats().Checkpoints > ck0
	})
	c.kill(lead)
	c.restart(lead)
	c.waitValue(1, "k", "5", 30*time.Second, lead)
}

// durablePrefix: a committed entry counts as durable only when the WAL
// holds it, i.e. up to the WAL's last index and before the first entry
// the same Ready appends; a follower whose uncommitted tail a new leader
// replaces (entries 5.. of term 2 over the WAL's 5..7 of term 1) may see
// the new 5 and 6 committed in that Ready, and they are not durable yet.
func TestDurablePrefix(t *testing.T) {
	ents := func(term uint64, idx ...uint64) []*pb.Entry {
		var out []*pb.Entry
		for _, i := range idx {
			out = append(out, &pb.Entry{Index: new(i), Term: new(term)})
		}
		return out
	}
	for _, tc := range []struct {
		name      string
		committed []*pb.Entry
		last      uint64
		appended  []*pb.Entry
		want      int
	}{
		{"all in the WAL", ents(1, 3, 4, 5), 7, nil, 3},
		{"some past the WAL", ents(1, 6, 7, 8, 9), 7, ents(1, 8, 9), 2},
		{"none in the WAL", ents(1, 8), 7, ents(1, 8), 0},
		{"tail replaced by a new leader", ents(2, 4, 5, 6), 7, ents(2, 5, 6), 1},
		{"whole tail replaced", ents(2, 5, 6), 7, ents(2, 5, 6), 0},
	} {
		if got := durablePrefix(tc.committed, tc.last, tc.appended); got != tc.want {
			t.Errorf("%s: durablePrefix = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestStatsAddCoversEveryField: Stats.Add sums every counter, so a field
// added later is not silently left out of the benchmarks' sums.
func TestStatsAddCoversEveryField(t *testing.T) {
	var one Stats
	var fill func(v reflect.Value)
	fill = func(v reflect.Value) {
		for i := range v.NumField() {
			f := v.Field(i)
			switch f.Kind() {
			case reflect.Struct:
				fill(f)
			case reflect.Uint64, reflect.Int64:
				if f.Kind() == reflect.Uint64 {
					f.SetUint(1)
				} else {
					f.SetInt(1)
				}
			default:
				t.Fatalf("Stats field %s of kind %s: extend this test and Stats.Add", v.Type().Field(i).Name, f.Kind())
			}
		}
	}
	fill(reflect.ValueOf(&one).Elem())
	var check func(v reflect.Value, path string)
	check = func(v reflect.Value, path string) {
		for i := range v.NumField() {
			f, name := v.Field(i), path+v.Type().Field(i).Name
			switch f.Kind() {
			case reflect.Struct:
				check(f, name+".")
			case reflect.Uint64:
				if f.Uint() != 2 {
					t.Errorf("Stats.Add: %s = %d, want 2", name, f.Uint())
				}
			case reflect.Int64:
				if f.Int() != 2 {
					t.Errorf("Stats.Add: %s = %d, want 2", name, f.Int())
				}
			}
		}
	}
	check(reflect.ValueOf(one.Add(one)), "")
}
