package multiraft

import (
	"testing"
	"time"
)

// Partitions between single pairs of nodes never stop a group of three:
// with the two followers cut from each other the leader still commits, and
// with the leader cut from one follower the leader and the other follower
// still form a quorum. Every acknowledged write is seen after healing.
func TestPairPartitionKeepsQuorum(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1)
	c.mustPut(1, "k", "0")
	lead := c.leader(1, 5*time.Second)
	var followers []StoreID
	for _, s := range c.stores() {
		if s != lead {
			followers = append(followers, s)
		}
	}
	c.partition(followers[0], followers[1])
	c.mustPut(1, "k", "1")
	c.heal()

	c.partition(lead, followers[0])
	c.mustPut(1, "k", "2")
	c.heal()
	c.waitValue(1, "k", "2", 5*time.Second)
}
