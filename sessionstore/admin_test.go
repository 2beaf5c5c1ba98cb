package sessionstore_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"github.com/erlmcp/erlmcp/sessionstore"
	"github.com/erlmcp/erlmcp/sessionstore/multiraft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestAdminMembershipRPCs: with the nodes' own membership reconciliation
// off, RemoveReplica, AddLearner and PromoteLearner carry out a replica
// replacement one step at a time, each only once the shard map asks for
// it (FAILED_PRECONDITION quoting the map before), idempotently, only on
// the leader (a follower answers with a hint), and RemoveReplica refuses
// while fewer than two up-to-date voters would remain.
func TestAdminMembershipRPCs(t *testing.T) {
	stores := []string{"a", "b", "c", "d"}
	c := newRCluster(t, 1, stores...)
	for _, s := range stores {
		cfg := c.cfgs[s]
		sessionstore.ManualMembership(&cfg)
		c.cfgs[s] = cfg
	}
	c.place(0, 1, []string{"a", "b", "c"}, nil, nil)
	c.start(stores...)
	cl := c.client()
	if _, err := cl.Create(ctxT(t), "g", nil, 0); err != nil {
		t.Fatal(err)
	}
	// Leadership may move under a loaded machine: every call goes to the
	// shard's leader of the moment, and each expectation is waited for.
	leaderAdmin := func() (string, pb.StoreAdminServiceClient) {
		l := c.leader(0)
		return l, adminClient(t, c.node(l).Addr())
	}
	// refused waits until call answers FAILED_PRECONDITION saying every
	// part; an OK answer fails the test at once.
	refused := func(what string, call func(pb.StoreAdminServiceClient) error, parts ...string) {
		t.Helper()
		testcluster.WaitFor(t, raftWait, what+" refused", func() error {
			_, adm := leaderAdmin()
			err := call(adm)
			if err == nil {
				t.Fatalf("%s: accepted", what)
			}
			st := status.Convert(err)
			if st.Code() != codes.FailedPrecondition {
				return err
			}
			for _, p := range parts {
				if !strings.Contains(st.Message(), p) {
					return err
				}
			}
			return nil
		})
	}
	// done waits until call succeeds with changed = true.
	done := func(what string, call func(pb.StoreAdminServiceClient) (bool, error)) {
		t.Helper()
		testcluster.WaitFor(t, raftWait, what, func() error {
			_, adm := leaderAdmin()
			changed, err := call(adm)
			if err != nil {
				return err
			}
			if !changed {
				return errors.New("answered OK but changed nothing")
			}
			return nil
		})
		_, adm := leaderAdmin()
		if changed, err := call(adm); err != nil || changed {
			t.Fatalf("%s again: changed %v, %v; want OK unchanged", what, changed, err)
		}
	}
	addLearner := func(store string) func(pb.StoreAdminServiceClient) (bool, error) {
		return func(adm pb.StoreAdminServiceClient) (bool, error) {
			r, err := adm.AddLearner(ctxT(t), &pb.AddLearnerRequest{Shard: 0, Store: store})
			return r.GetChanged(), err
		}
	}
	promote := func(store string) func(pb.StoreAdminServiceClient) (bool, error) {
		return func(adm pb.StoreAdminServiceClient) (bool, error) {
			r, err := adm.PromoteLearner(ctxT(t), &pb.PromoteLearnerRequest{Shard: 0, Store: store})
			return r.GetChanged(), err
		}
	}
	remove := func(store string) func(pb.StoreAdminServiceClient) (bool, error) {
		return func(adm pb.StoreAdminServiceClient) (bool, error) {
			r, err := adm.RemoveReplica(ctxT(t), &pb.RemoveReplicaRequest{Shard: 0, Store: store})
			return r.GetChanged(), err
		}
	}
	errOf := func(f func(pb.StoreAdminServiceClient) (bool, error)) func(pb.StoreAdminServiceClient) error {
		return func(adm pb.StoreAdminServiceClient) error { _, err := f(adm); return err }
	}

	// A follower answers with a hint naming the leader.
	lead := c.leader(0)
	var follower string
	for _, s := range []string{"a", "b", "c"} {
		if s != lead {
			follower = s
			break
		}
	}
	_, err := adminClient(t, c.node(follower).Addr()).AddLearner(ctxT(t), &pb.AddLearnerRequest{Shard: 0, Store: "d"})
	if status.Code(err) != codes.FailedPrecondition || hintOf(err) == nil {
		t.Fatalf("AddLearner on follower %s: %v (hint %v), want FAILED_PRECONDITION with a leader hint", follower, err, hintOf(err))
	}
	refused("AddLearner d before the map lists it", errOf(addLearner("d")), "conf epoch 1", `will not add store "d"`)
	refused("RemoveReplica of a listed store", errOf(remove(follower)), "conf epoch 1", "take it out of the map")

	// The map drops one follower; with the other one down, only the leader
	// would stay up to date: refused until it is back.
	var others []string
	for _, s := range []string{"a", "b", "c"} {
		if s != lead {
			others = append(others, s)
		}
	}
	drop, down := others[0], others[1]
	c.place(0, 2, []string{lead, down}, nil, nil)
	c.kill(down)
	downID := multiraft.ReplicaID(clusterstate.ReplicaID(down, 1))
	testcluster.WaitFor(t, raftWait, down+" seen inactive by the leader", func() error {
		st, err := c.status(c.leader(0), 0)
		if err != nil {
			return err
		}
		for _, p := range st.Progress {
			if p.ID == downID && !p.RecentActive {
				return nil
			}
		}
		return errors.New("still active")
	})
	refused("RemoveReplica leaving one up-to-date voter", errOf(remove(drop)), "at least 2 must remain")
	c.start(down)
	// drop may have become the leader meanwhile: it must hand over first.
	testcluster.WaitFor(t, raftWait, "a leader other than "+drop, func() error {
		l, adm := leaderAdmin()
		if l != drop {
			return nil
		}
		_, err := adm.TransferLeader(ctxT(t), &pb.TransferLeaderRequest{Shard: 0, ToStore: down})
		return fmt.Errorf("%s leads (transfer: %v)", drop, err)
	})
	done("RemoveReplica "+drop+" once "+down+" is back", remove(drop))
	dropID := multiraft.ReplicaID(clusterstate.ReplicaID(drop, 1))
	testcluster.WaitFor(t, raftWait, drop+" out of the group and its replica destroyed", func() error {
		st, err := c.status(c.leader(0), 0)
		if err != nil || slices.Contains(st.Voters, dropID) || len(st.Voters) != 2 {
			return fmt.Errorf("voters %v, %v", st.Voters, err)
		}
		if shards := c.node(drop).RaftShards(); len(shards) != 0 {
			return fmt.Errorf("%s still hosts %v", drop, shards)
		}
		return nil
	})

	// A new replica on d: learner, then voter, each when the map says.
	dID := clusterstate.ReplicaID("d", 3)
	ids := map[string]uint64{"d": dID}
	c.place(0, 3, []string{lead, down}, []string{"d"}, ids)
	done("AddLearner d once the map lists it", addLearner("d"))
	if st, err := c.status(c.leader(0), 0); err != nil || !slices.Contains(st.Learners, multiraft.ReplicaID(dID)) {
		t.Fatalf("learners %v (%v), want d's replica %v", st.Learners, err, multiraft.ReplicaID(dID))
	}
	refused("PromoteLearner while the map lists d as a learner", errOf(promote("d")), "conf epoch 3", "d (learner")
	c.place(0, 4, []string{lead, down, "d"}, nil, ids)
	done("PromoteLearner d", promote("d"))
	if st, err := c.status(c.leader(0), 0); err != nil || !slices.Contains(st.Voters, multiraft.ReplicaID(dID)) || len(st.Voters) != 3 {
		t.Fatalf("voters %v (%v), want 3 with d's replica", st.Voters, err)
	}
	if _, err := cl.CompareAndSet(ctxT(t), "g", 1, []byte("after")); err != nil {
		t.Fatalf("write after the replacement: %v", err)
	}
}
