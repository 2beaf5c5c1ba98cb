package sessionstore

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/erlmcp/erlmcp/sessionstore/multiraft"
)

// leaderHandoffTimeout bounds how long a stopping node spends handing its
// shards' leadership to peers. A transfer takes a round trip and an
// election without timeouts (tens of milliseconds); raft itself gives one
// up after an election timeout, so this only bounds a stuck one.
const leaderHandoffTimeout = 3 * time.Second

// handOffLeadership transfers the leadership of every shard this node
// leads to another up-to-date voter on a registered store, all shards at
// once, and returns when each transfer finished or ctx ended.
//
// Why: a node that stops while leading leaves its shards leaderless until
// the followers' election timeout (0.5–1 s at the defaults, longer under
// load), and every write to those shards waits or fails meanwhile. A
// transfer instead hands the shard over in one round trip, the way etcd
// does on shutdown. Writes proposed during a transfer are dropped by raft
// (UNAVAILABLE, retry) and reads are answered by the new leader, so
// nothing is lost by it. A shard whose transfer does not finish is left to
// an election, as without the handoff.
//
// Only registered stores are targets: a store that is not registered is
// stopping too (it deregisters first), and handing it a shard would make
// that shard wait for an election all the same.
func (n *Node) handOffLeadership(ctx context.Context) {
	if n.raft == nil {
		return
	}
	mr := n.raft.mr
	r := n.route.Load()
	if r == nil {
		return
	}
	ok := func(store multiraft.StoreID) bool {
		r := n.route.Load() // the latest: peers may stop meanwhile
		member, known := r.raftStores[uint32(store)]
		return known && member != n.ID() && r.registered(member)
	}
	start := time.Now()
	var (
		wg              sync.WaitGroup
		mu              sync.Mutex
		moved, failed   int
		noTarget, total int
		why             []string
	)
	for _, shard := range mr.Shards() {
		st, err := mr.Status(shard)
		if err != nil || st.Role != "leader" {
			continue
		}
		total++
		to := handoffTarget(st, ok)
		if to == 0 {
			noTarget++
			if len(why) < 4 {
				why = append(why, describeProgress(st, r.raftStores))
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := n.transferShard(ctx, shard, to, ok)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				n.log.WithError(err).WithField("shard", shard).Debug("leadership handoff did not finish; the shard elects a leader")
				return
			}
			moved++
		}()
	}
	wg.Wait()
	if total == 0 {
		return
	}
	l := n.log.WithField("handed_off", moved).WithField("not_finished", failed).WithField("no_target", noTarget)
	if len(why) > 0 {
		l = l.WithField("no_target_examples", strings.Join(why, "; "))
	}
	l.
		WithField("took", time.Since(start).Round(time.Millisecond).String()).
		Info("shard leadership handed to peers before stopping")
}

// transferAttempt bounds one transfer of a handoff. raft gives a transfer
// up after an election timeout (0.5 s at the defaults) without telling the
// caller, so the wait ends here and the handoff tries once more.
const transferAttempt = time.Second

// transferShard hands shard to to, and if that has not finished within
// transferAttempt while this replica still leads, once more to the target
// the leader's status then gives (another voter when to is still behind
// or did not take over). Blocks until done or ctx ends.
func (n *Node) transferShard(ctx context.Context, shard uint32, to multiraft.ReplicaID, ok func(multiraft.StoreID) bool) error {
	mr := n.raft.mr
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		actx, cancel := context.WithTimeout(ctx, transferAttempt)
		err = mr.TransferLeader(actx, shard, to)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		st, serr := mr.Status(shard)
		if serr != nil || st.Role != "leader" {
			return nil // led elsewhere now (a late transfer or an election)
		}
		next := handoffTarget(st, func(s multiraft.StoreID) bool { return ok(s) && s != to.Store() })
		if next != 0 {
			to = next
		}
	}
	return err
}

// handoffTarget picks, from the leader's status st, the voter other than
// itself whose durable log is within upToDateLag of the commit index, on a
// store ok accepts; among them it prefers one heard from in the last
// election timeout, then the longest log (the transfer then needs no
// catch-up first). 0 when there is none.
//
// RecentActive alone is not the test: with CheckQuorum raft clears it for
// every follower at each election timeout, so for a heartbeat interval
// after that even healthy followers read inactive. A transfer to a voter
// that is in fact down just ends at raft's own transfer timeout.
func handoffTarget(st multiraft.ShardStatus, ok func(multiraft.StoreID) bool) multiraft.ReplicaID {
	var best *multiraft.ReplicaStatus
	for i := range st.Progress {
		p := &st.Progress[i]
		if p.ID == st.Replica || !logCaughtUp(*p, st.Commit) || !ok(p.ID.Store()) {
			continue
		}
		if best == nil || (p.RecentActive && !best.RecentActive) ||
			(p.RecentActive == best.RecentActive && p.Match > best.Match) {
			best = p
		}
	}
	if best == nil {
		return 0
	}
	return best.ID
}

// registered reports whether store member was registered in membership
// when r was published (every membership change publishes a new routing).
func (r *routing) registered(member string) bool {
	_, ok := r.stores[member]
	return ok
}

// describeProgress is the leader's view of the other members of a shard,
// for the log: why none of them could take the shard over.
func describeProgress(st multiraft.ShardStatus, stores map[uint32]string) string {
	parts := make([]string, 0, len(st.Progress))
	for _, p := range st.Progress {
		if p.ID == st.Replica {
			continue
		}
		store := stores[uint32(p.ID.Store())]
		parts = append(parts, fmt.Sprintf("%s match %d learner %v active %v", store, p.Match, p.Learner, p.RecentActive))
	}
	return fmt.Sprintf("shard %d commit %d: %s", st.Shard, st.Commit, strings.Join(parts, ", "))
}
