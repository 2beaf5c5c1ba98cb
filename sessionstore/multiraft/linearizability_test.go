package multiraft

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	bolt "go.etcd.io/bbolt"
)

type regInput struct {
	Key      string
	Op       string // read, write, cas
	Old, Val string
}

type regOutput struct {
	OK      bool
	Val     string
	Unknown bool // the outcome of a write or cas is unknown
}

// registerModel: one register per key, with write, compare-and-set and
// read. An operation whose outcome is unknown (timed out, node died) is
// recorded with an infinite return time: it may be linearized anywhere
// after its call, including after everything else (= never happened).
var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(regInput).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(string), input.(regInput), output.(regOutput)
		switch in.Op {
		case "read":
			return out.Val == s, s
		case "write":
			return true, in.Val
		case "cas":
			if out.Unknown {
				if s == in.Old {
					return true, in.Val
				}
				return true, s
			}
			if out.OK {
				return s == in.Old, in.Val
			}
			return s != in.Old && out.Val == s, s
		}
		return false, s
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(regInput), output.(regOutput)
		return fmt.Sprintf("%s %s(%q,%q) -> %v", in.Key, in.Op, in.Old, in.Val, out)
	},
}

// Concurrent clients write, compare-and-set and read (lease reads on
// leaders, ReadIndex on followers) three keys on three shards while a
// nemesis kills and restarts leaders, isolates nodes, pauses them, fails
// their disks (failed writes, failed fsyncs) and transfers leadership
// (sometimes with its TimeoutNow held back); the recorded history must be
// linearizable. Fault choices are seeded (the seed is
// logged; set MULTIRAFT_SEED to replay the same fault schedule, though
// thread timing still varies).
func TestLinearizableUnderFaults(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := testSeed(); s != 0 {
		seed = s
	}
	t.Logf("seed %d", seed)
	c := newTestCluster(t, 3, nil)
	shards := []uint32{1, 2, 3}
	keys := map[string]uint32{"a": 1, "b": 2, "c": 3}
	c.bootstrap(shards...)
	for _, sh := range shards {
		c.leader(sh, 5*time.Second)
	}

	var (
		hmu     sync.Mutex
		history []porcupine.Operation
		stop    atomic.Bool
		wg      sync.WaitGroup
		t0      = time.Now()
		counts  [3]atomic.Int64 // ok, unknown, failed
	)
	now := func() int64 { return int64(time.Since(t0)) }
	record := func(op porcupine.Operation) {
		hmu.Lock()
		history = append(history, op)
		hmu.Unlock()
	}
	const clients = 6
	for cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(cl)+1))
			guess := map[uint32]StoreID{}
			for i := 0; !stop.Load(); i++ {
				key := []string{"a", "b", "c"}[rng.IntN(3)]
				sh := keys[key]
				s := guess[sh]
				if s == 0 {
					s = StoreID(rng.IntN(3) + 1)
				}
				n := c.node(s)
				if n == nil {
					guess[sh] = 0
					continue
				}
				in := regInput{Key: key}
				switch r := rng.IntN(10); {
				case r < 4:
					in.Op = "read"
				case r < 7:
					in.Op, in.Val = "write", fmt.Sprintf("c%d-%d", cl, i)
				default:
					// cas from the value we last saw or a fresh guess
					in.Op, in.Val = "cas", fmt.Sprintf("c%d-%d", cl, i)
					in.Old, _ = value(n, sh, key) // possibly stale: some CAS fail
				}
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				call := now()
				var out regOutput
				var err error
				if in.Op == "read" {
					// reads go to any replica: ReadIndex works on followers
					err = n.Read(ctx, sh, func(b *bolt.Bucket) error { out.Val = string(b.Get([]byte(key))); return nil })
				} else {
					var cmd []byte
					if in.Op == "write" {
						cmd = putCmd(key, in.Val)
					} else {
						cmd = casCmd(key, in.Old, in.Val)
					}
					var res []byte
					res, err = n.Propose(ctx, sh, cmd)
					if err == nil {
						var r kvResult
						if jerr := json.Unmarshal(res, &r); jerr != nil {
							t.Errorf("bad result %q", res)
						}
						out = regOutput{OK: r.OK, Val: r.Val}
					}
				}
				ret := now()
				cancel()
				var nl *NotLeaderError
				switch {
				case err == nil:
					counts[0].Add(1)
					record(porcupine.Operation{ClientId: cl, Input: in, Call: call, Output: out, Return: ret})
				case in.Op == "read" || errors.As(err, &nl) || errors.Is(err, ErrProposalDropped) || errors.Is(err, ErrShardNotFound) ||
					(errors.Is(err, ErrStorageUnavailable) && !errors.Is(err, ErrResultUnknown)):
					// no effect: a read, or a proposal that never entered the
					// log (refused up front by a node with a failed disk)
					counts[2].Add(1)
					if errors.As(err, &nl) && nl.Leader != 0 {
						guess[sh] = nl.Leader.Store()
					} else {
						guess[sh] = 0
					}
				default:
					// timed out, stopped, result unknown: may have happened
					counts[1].Add(1)
					guess[sh] = 0
					record(porcupine.Operation{ClientId: cl, Input: in, Call: call, Output: regOutput{Unknown: true}, Return: math.MaxInt64})
				}
			}
		}()
	}

	// nemesis
	rng := rand.New(rand.NewPCG(seed, 0))
	hold := func(d time.Duration) { <-time.After(d) }
	deadline := time.Now().Add(6 * time.Second)
	var faults []string
	for time.Now().Before(deadline) {
		switch rng.IntN(5) {
		case 0:
			sh := shards[rng.IntN(len(shards))]
			s := c.leader(sh, 10*time.Second)
			faults = append(faults, fmt.Sprintf("kill leader %d of shard %d", s, sh))
			c.kill(s)
			hold(time.Duration(200+rng.IntN(300)) * time.Millisecond)
			c.restart(s)
		case 1:
			s := StoreID(rng.IntN(3) + 1)
			faults = append(faults, fmt.Sprintf("isolate %d", s))
			c.isolate(s)
			hold(time.Duration(200+rng.IntN(400)) * time.Millisecond)
			c.heal()
		case 2:
			s := StoreID(rng.IntN(3) + 1)
			faults = append(faults, fmt.Sprintf("pause %d", s))
			c.pause(s)
			hold(time.Duration(100+rng.IntN(300)) * time.Millisecond)
			c.unpause(s)
		case 3:
			// A failing disk: the node refuses work, then restarts its
			// groups from disk. A failed fsync leaves the data in the file
			// (as a page cache would), the nastiest case.
			s := StoreID(rng.IntN(3) + 1)
			if rng.IntN(2) == 0 {
				faults = append(faults, fmt.Sprintf("fail writes on %d", s))
				c.disk(s).set(errInjectedENOSPC, nil, 0)
			} else {
				faults = append(faults, fmt.Sprintf("fail fsyncs on %d", s))
				c.disk(s).set(nil, errInjectedEIO, 0)
			}
			hold(time.Duration(200+rng.IntN(400)) * time.Millisecond)
			c.disk(s).set(nil, nil, 0)
		case 4:
			// A leadership transfer, half the time with its TimeoutNow
			// held back until after raft may have given it up (leases
			// must not survive it: lease.go).
			sh := shards[rng.IntN(len(shards))]
			s := c.leader(sh, 10*time.Second)
			to := StoreID((int(s)+rng.IntN(2))%3 + 1)
			held := rng.IntN(2) == 0
			if held {
				c.mu.Lock()
				c.blocked[[2]StoreID{s, to}] = true
				c.mu.Unlock()
			}
			faults = append(faults, fmt.Sprintf("transfer shard %d from %d to %d (held %v)", sh, s, to, held))
			if n := c.node(s); n != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				_ = n.TransferLeader(ctx, sh, ReplicaID(to))
				cancel()
			}
			hold(time.Duration(200+rng.IntN(400)) * time.Millisecond)
			c.heal()
		}
		hold(time.Duration(100+rng.IntN(200)) * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("faults: %v", faults)
	t.Logf("ops: %d ok, %d unknown, %d failed without effect; %d recorded", counts[0].Load(), counts[1].Load(), counts[2].Load(), len(history))
	if counts[0].Load() < 50 {
		t.Fatalf("too few successful operations (%d) to mean anything", counts[0].Load())
	}
	res := porcupine.CheckOperationsTimeout(registerModel, history, 30*time.Second)
	switch res {
	case porcupine.Ok:
	case porcupine.Unknown:
		t.Fatalf("linearizability check timed out")
	default:
		t.Fatalf("history is NOT linearizable (seed %d)", seed)
	}
}
