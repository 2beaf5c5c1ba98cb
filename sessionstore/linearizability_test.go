package sessionstore_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/erlmcp/erlmcp/sessionstore"
	"github.com/erlmcp/erlmcp/sessionstore/client"
)

var longChaos = flag.Bool("long", false, "run the long version of the chaos tests (also ERLMCP_CHAOS_LONG=1)")

// sessState is the model of one session: its record and one event stream.
type sessState struct {
	Ver    uint64
	Data   string
	Events string // event data joined by ","
}

type sessInput struct {
	ID   string
	Op   string // get, cas, append, read
	Exp  uint64
	Data string
}

type sessOutput struct {
	OK       bool // cas: applied; append: applied
	Conflict bool // cas: VERSION_CONFLICT
	Unknown  bool // the outcome of a cas or append is unknown
	Ver      uint64
	Data     string
	Seq      uint64
	Events   string
}

func appendEv(evs, d string) string {
	if evs == "" {
		return d
	}
	return evs + "," + d
}

// streamWindow is what a stream keeps and a read from its start returns:
// the newest DefaultEventRetention events (DefaultReadLimit is as large).
// A long run appends more than that to a session.
const streamWindow = sessionstore.DefaultEventRetention

// lastEv is the newest n events of evs.
func lastEv(evs string, n int) string {
	if countEv(evs) <= uint64(n) {
		return evs
	}
	all := strings.Split(evs, ",")
	return strings.Join(all[len(all)-n:], ",")
}

func countEv(evs string) uint64 {
	if evs == "" {
		return 0
	}
	return uint64(strings.Count(evs, ",") + 1)
}

// sessionModel: per session, GetSession returns the latest record,
// CompareAndSetSession applies iff the version matches, AppendEvents
// appends at the next sequence number, ReadEvents returns the newest
// streamWindow events (the stream keeps no more). An
// operation with an unknown outcome has an infinite return time, so it
// may take effect anywhere after its call, or never.
var sessionModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(sessInput).ID
			if _, ok := by[k]; !ok {
				keys = append(keys, k)
			}
			by[k] = append(by[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() any { return sessState{Ver: 1, Data: "init"} },
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(sessState), input.(sessInput), output.(sessOutput)
		switch in.Op {
		case "get":
			return out.Ver == s.Ver && out.Data == s.Data, s
		case "read":
			return out.Events == lastEv(s.Events, streamWindow), s
		case "cas":
			next := s
			next.Ver, next.Data = s.Ver+1, in.Data
			switch {
			case out.Unknown:
				if s.Ver == in.Exp {
					return true, next
				}
				return true, s
			case out.Conflict:
				return s.Ver != in.Exp, s
			default:
				return s.Ver == in.Exp && out.Ver == s.Ver+1, next
			}
		case "append":
			next := s
			next.Events = appendEv(s.Events, in.Data)
			if out.Unknown {
				return true, next
			}
			return out.Seq == countEv(s.Events)+1, next
		}
		return false, s
	},
	DescribeOperation: func(input, output any) string {
		return fmt.Sprintf("%+v -> %+v", input, output)
	},
}

func chaosSeed(t *testing.T) uint64 {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("ERLMCP_CHAOS_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("ERLMCP_CHAOS_SEED=%q: %v", v, err)
		}
		seed = s
	}
	t.Logf("seed %d (replay the fault schedule with ERLMCP_CHAOS_SEED=%d)", seed, seed)
	return seed
}

// TestSessionStoreLinearizable: concurrent clients compare-and-set session
// records, read them, append events and read the streams back through the
// session store client, while a nemesis kills and restarts the node that
// leads a shard and partitions a node's Raft traffic. The recorded history
// must be linearizable, and no acknowledged write may be lost. Short by
// default; -long (or ERLMCP_CHAOS_LONG=1) runs a minute of faults.
func TestSessionStoreLinearizable(t *testing.T) {
	seed := chaosSeed(t)
	dur := 6 * time.Second
	if *longChaos || os.Getenv("ERLMCP_CHAOS_LONG") == "1" {
		dur = 60 * time.Second
	}
	if sessionstore.DefaultReadLimit < streamWindow {
		t.Fatalf("a read from a stream's start returns %d events, fewer than the %d it keeps: the model needs both", sessionstore.DefaultReadLimit, streamWindow)
	}
	const shards = 2
	stores := []string{"a", "b", "c"}
	c := newRCluster(t, shards, stores...)
	for sh := range shards {
		c.place(sh, 1, stores, nil, nil)
	}
	c.start(stores...)
	setup := c.client()
	ctx := ctxT(t)
	var ids []string
	for sh := range shards {
		for i := range 3 {
			id := idInShard(sh, shards, fmt.Sprintf("lin%d", i))
			if _, err := setup.Create(ctx, id, []byte("init"), 0); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
	}

	var (
		hmu     sync.Mutex
		history []porcupine.Operation
		stop    atomic.Bool
		wg      sync.WaitGroup
		t0      = time.Now()
		ok, unk atomic.Int64
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
			cli := c.client()
			seen := map[string]uint64{}
			for i := 0; !stop.Load(); i++ {
				id := ids[rng.IntN(len(ids))]
				in := sessInput{ID: id}
				switch r := rng.IntN(10); {
				case r < 3:
					in.Op = "get"
				case r < 6:
					in.Op, in.Exp, in.Data = "cas", max(seen[id], 1), fmt.Sprintf("c%d-%d", cl, i)
				case r < 8:
					in.Op, in.Data = "append", fmt.Sprintf("e%d-%d", cl, i)
				default:
					in.Op = "read"
				}
				octx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				call := now()
				var out sessOutput
				var err error
				switch in.Op {
				case "get":
					var s client.Session
					s, err = cli.Get(octx, id, false)
					out.Ver, out.Data = s.Version, string(s.Data)
					if err == nil {
						seen[id] = s.Version
					}
				case "cas":
					var s client.Session
					s, err = cli.CompareAndSet(octx, id, in.Exp, []byte(in.Data))
					if err == nil {
						out.OK, out.Ver = true, s.Version
						seen[id] = s.Version
					} else if errors.Is(err, client.ErrVersionConflict) {
						out.Conflict, err = true, nil
					}
				case "append":
					var seqs []uint64
					seqs, err = cli.AppendEvents(octx, id, "s", []byte(in.Data))
					if err == nil {
						out.OK, out.Seq = true, seqs[0]
					}
				case "read":
					var r client.Events
					r, err = cli.ReadEvents(octx, id, "s", 0, 0, 0)
					if err == nil {
						var parts []string
						for _, e := range r.Events {
							parts = append(parts, string(e.Data))
						}
						out.Events = strings.Join(parts, ",")
					}
				}
				ret := now()
				cancel()
				switch {
				case err == nil:
					ok.Add(1)
					record(porcupine.Operation{ClientId: cl, Input: in, Call: call, Output: out, Return: ret})
				case in.Op == "get" || in.Op == "read":
					// a failed read has no effect
				default:
					unk.Add(1)
					record(porcupine.Operation{ClientId: cl, Input: in, Call: call, Output: sessOutput{Unknown: true}, Return: math.MaxInt64})
				}
			}
		}()
	}

	rng := rand.New(rand.NewPCG(seed, 0))
	var faults []string
	deadline := time.Now().Add(dur)
	for time.Now().Before(deadline) {
		sh := uint32(rng.IntN(shards))
		switch rng.IntN(2) {
		case 0:
			lead := c.leader(sh)
			faults = append(faults, fmt.Sprintf("kill %s (leader of %d)", lead, sh))
			c.kill(lead)
			<-time.After(time.Duration(300+rng.IntN(500)) * time.Millisecond)
			c.start(lead)
		case 1:
			s := stores[rng.IntN(3)]
			faults = append(faults, "partition "+s)
			c.net.isolate(s, true)
			<-time.After(time.Duration(300+rng.IntN(500)) * time.Millisecond)
			c.net.isolate(s, false)
		}
		<-time.After(time.Duration(200+rng.IntN(300)) * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("faults: %v", faults)

	// Final reads, after healing, join the history: every acknowledged
	// write must be visible in them (porcupine checks that too).
	final := c.client()
	for _, id := range ids {
		fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		call := now()
		s, err := final.Get(fctx, id, false)
		if err != nil {
			t.Fatalf("final read %s: %v", id, err)
		}
		r, err := final.ReadEvents(fctx, id, "s", 0, 0, 0)
		cancel()
		if err != nil {
			t.Fatalf("final events %s: %v", id, err)
		}
		var parts []string
		for _, e := range r.Events {
			parts = append(parts, string(e.Data))
		}
		ret := now()
		record(porcupine.Operation{ClientId: clients, Input: sessInput{ID: id, Op: "get"}, Call: call, Output: sessOutput{Ver: s.Version, Data: string(s.Data)}, Return: ret})
		record(porcupine.Operation{ClientId: clients, Input: sessInput{ID: id, Op: "read"}, Call: call, Output: sessOutput{Events: strings.Join(parts, ",")}, Return: ret})
		// Every acknowledged append is in the stream.
		for _, op := range history {
			in, out := op.Input.(sessInput), op.Output.(sessOutput)
			// (Unless retention dropped it: older than the stream keeps.)
			if in.ID == id && in.Op == "append" && out.OK && out.Seq >= r.FirstRetainedSeq &&
				!strings.Contains(","+strings.Join(parts, ",")+",", ","+in.Data+",") {
				t.Fatalf("acknowledged append %q to %s lost", in.Data, id)
			}
			if in.ID == id && in.Op == "cas" && out.OK && out.Ver > s.Version {
				t.Fatalf("acknowledged version %d of %s lost (now %d)", out.Ver, id, s.Version)
			}
		}
	}
	t.Logf("ops: %d acknowledged, %d unknown outcome; %d recorded", ok.Load(), unk.Load(), len(history))
	if ok.Load() < 100 {
		t.Fatalf("too few acknowledged operations (%d) to mean anything", ok.Load())
	}
	switch porcupine.CheckOperationsTimeout(sessionModel, history, 60*time.Second) {
	case porcupine.Ok:
	case porcupine.Unknown:
		t.Fatal("linearizability check timed out")
	default:
		t.Fatalf("history is NOT linearizable (seed %d)", seed)
	}
}
