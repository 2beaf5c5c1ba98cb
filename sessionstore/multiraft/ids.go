package multiraft

import "fmt"

// StoreID names a store node (one process, one Node). It must not be 0.
type StoreID uint32

// ReplicaID is the Raft node id of one replica of one shard.
//
// Raft ids only have to be unique inside one Raft group, but they must never
// be reused for a different replica of the same group: a replica that was
// removed and later re-added on the same store with the same id could carry
// a stale log and vote as if it were the old member. So a ReplicaID is
// derived from the store and an incarnation number chosen by the placement
// driver:
//
//	ReplicaID = incarnation<<32 | store
//
// The initial replicas of a shard use incarnation 0; the placement driver
// bumps the incarnation whenever it places the shard on a store that hosted
// it before (it keeps the shard's conf epoch in etcd anyway). Because the
// store is encoded in the id, routing a Raft message needs no lookup table:
// the destination store is ReplicaID(m.To).Store().
type ReplicaID uint64

// NewReplicaID returns the replica id of the given incarnation of a shard's
// replica on store.
func NewReplicaID(store StoreID, incarnation uint32) ReplicaID {
	return ReplicaID(uint64(incarnation)<<32 | uint64(store))
}

// Store is the store that hosts the replica.
func (r ReplicaID) Store() StoreID { return StoreID(uint32(r)) }

// Incarnation is the replica's incarnation number.
func (r ReplicaID) Incarnation() uint32 { return uint32(r >> 32) }

func (r ReplicaID) String() string {
	if r.Incarnation() == 0 {
		return fmt.Sprintf("s%d", r.Store())
	}
	return fmt.Sprintf("s%d.%d", r.Store(), r.Incarnation())
}
