package sessionstore

import (
	"sort"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/membership"
)

// proposedFormat is the command format a store proposes: the newest one
// every store of the cluster applies. Each store advertises the newest
// format its build applies in its membership record (CommandFormat); a
// store that advertises none (a build from before the field) applies only
// JSON, and so does a store the shard map names that is not registered
// now (down, or being replaced): its build is unknown, and it will replay
// the log when it comes back. So during a rolling upgrade every node keeps
// proposing what the oldest one reads, and the cluster moves to the new
// format by itself once the last store runs the new build.
//
// A replica that could not decode an entry would refuse it where its
// peers apply it (see stateMachine.Apply) and diverge, which is why the
// gate counts every store, not only a shard's replicas: placement may move
// a replica to any store, and a snapshot or log carries entries there.
// Downgrading a store below the format once proposed is not supported: it
// would meet entries it cannot apply in its logs.
//
// holdout names a store holding the format back ("" if none), for the log.
func proposedFormat(stores map[string]membership.Member, shards []clusterstate.Shard) (format byte, holdout string) {
	sorted := clusterStores(stores, shards)
	format = maxCommandFormat
	for _, id := range sorted {
		f := byte(commandFormatJSON)
		if m, ok := stores[id]; ok && m.CommandFormat > int(commandFormatJSON) {
			f = byte(min(m.CommandFormat, int(maxCommandFormat)))
		}
		if f < format {
			format, holdout = f, id
		}
	}
	return format, holdout
}

// commandFormat is the format to propose now: proposedFormat of the
// current routing view, JSON before the first view (or on a bare node of a
// test).
func (n *Node) commandFormat() byte {
	if n == nil {
		return commandFormatJSON
	}
	if r := n.route.Load(); r != nil {
		return r.format
	}
	return commandFormatJSON
}

// uniformTiming reports whether every store of the cluster runs Raft with
// tickMs and electionTicks, as this one does: leader leases (lease reads,
// multiraft/lease.go) last as long as the followers' election timeout
// allows, so a store whose timeout is shorter, or unknown (a build that
// does not advertise it, or a store the shard map names that is not
// registered now), turns them off. odd names one store that differs.
func uniformTiming(stores map[string]membership.Member, shards []clusterstate.Shard, tickMs, electionTicks int) (ok bool, odd string) {
	sorted := clusterStores(stores, shards)
	for _, id := range sorted {
		m, reg := stores[id]
		if !reg || m.RaftTickMs != tickMs || m.RaftElectionTicks != electionTicks {
			return false, id
		}
	}
	return true, ""
}

// clusterStores lists, sorted, the registered stores and the stores the
// shard map names.
func clusterStores(stores map[string]membership.Member, shards []clusterstate.Shard) []string {
	ids := map[string]bool{}
	for id := range stores {
		ids[id] = true
	}
	for _, s := range shards {
		for _, r := range s.Replicas {
			ids[r.Store] = true
		}
	}
	sorted := make([]string, 0, len(ids))
	for id := range ids {
		sorted = append(sorted, id)
	}
	sort.Strings(sorted)
	return sorted
}
