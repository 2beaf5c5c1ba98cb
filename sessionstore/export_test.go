package sessionstore

import (
	"github.com/erlmcp/erlmcp/sessionstore/multiraft"
	bolt "go.etcd.io/bbolt"
)

// Waiting counts the (session, stream) pairs that ReadEvents long-polls
// wait on.
func (n *Node) Waiting() int { return n.waiters.len() }

// WrapRaftTransport makes the node built from cfg send and receive its Raft
// messages through wrap (fault injection).
func WrapRaftTransport(cfg *Config, wrap func(multiraft.Transport) multiraft.Transport) {
	cfg.wrapTransport = wrap
}

// RaftStatus reports the node's replica of shard.
func (n *Node) RaftStatus(shard uint32) (multiraft.ShardStatus, error) {
	return n.raft.mr.Status(shard)
}

// RaftShards lists the shards the node hosts a replica of.
func (n *Node) RaftShards() []uint32 { return n.raft.mr.Shards() }

// HasLocalSession reports whether this node's replica of shard holds a
// record of id (a local read, not linearizable).
func (n *Node) HasLocalSession(shard uint32, id string) (bool, error) {
	var found bool
	err := n.raft.mr.View(shard, func(b *bolt.Bucket) error {
		if s := b.Bucket([]byte(bkSessions)); s != nil {
			found = s.Get([]byte(id)) != nil
		}
		return nil
	})
	return found, err
}

// ManualMembership keeps the node built from cfg from changing Raft
// membership on its own: only StoreAdminService's membership RPCs do.
func ManualMembership(cfg *Config) { cfg.manualMembership = true }

// RaftStats are the node's Raft engine counters.
func (n *Node) RaftStats() multiraft.Stats { return n.raft.mr.Stats() }

// CommandFormat is the command format the node proposes now.
func (n *Node) CommandFormat() byte { return n.commandFormat() }

// MaxCommandFormat is the newest command format this build applies.
const MaxCommandFormat = maxCommandFormat

// LeaseReads counts the reads the node's shard leaders answered from their
// lease.
func (n *Node) LeaseReads() uint64 { return n.raft.mr.Stats().LeaseReads }
