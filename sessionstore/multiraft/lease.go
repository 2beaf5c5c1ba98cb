package multiraft

import (
	"bytes"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
)

// Leader leases for reads.
//
// A ReadIndex read costs a heartbeat round to a quorum: about half the
// CPU of a read and most of its latency in the store benchmark. A leader
// whose leadership a quorum confirmed recently can skip it, if no other
// replica can have become leader since. This is how:
//
//   - When a ReadIndex round the leader issued at time t (in term T)
//     completes, a quorum acknowledged a heartbeat of T sent after t. Each
//     of those followers then ignores vote requests for an election timeout
//     of ticks (raft's CheckQuorum, on in every group) and campaigns itself
//     no sooner. Ticks do not run faster than the ticker: a tick missed
//     while the loop was busy fires late, once, so the E-th tick after the
//     heartbeat comes at least (E-2) tick intervals later. So no other
//     replica can win an election before t + (ElectionTicks-2) ticks. The
//     lease runs to t + nine tenths of that, the tenth for clock-rate drift
//     between machines (durations only: wall clocks need not agree). This
//     needs every store to run the same tick and election timeout: a store
//     uses leases only while every store advertises the same (the store
//     layer checks it through etcd, Node.SetLeaseReads).
//   - A read arriving while the lease runs (checked with the monotonic
//     clock at that moment, so a leader that was paused or SIGSTOPped past
//     its lease sees it expired), in the same term, with no leadership
//     transfer under way, gets the leader's commit index at once, and
//     waits only until it is applied. That index holds every write
//     acknowledged before the read began: none can come from a newer
//     leader, and this one has committed an entry of its term (a completed
//     round in T proves it).
//   - A transfer forces the target's election through the followers'
//     lease. A TimeoutNow, once sent, may arrive late (after raft gave the
//     transfer up, or after a conf change dropped the target), so the
//     first Ready that sends one ends leases for the rest of the term
//     (noLeaseTerm): a TimeoutNow of term T cannot win once a quorum has
//     moved past T.
//   - A replica that restarts forgets when it last heard from the leader,
//     so one loaded from disk refuses vote requests for an election timeout
//     after it starts (voteGuard), as if it had just heard one.
//   - Renewal: a lease read in the second half of the lease has the loop
//     issue one ReadIndex round without readers.
//   - Not covered: a host whose monotonic clock stops while it is
//     suspended (a laptop's sleep, some VM pauses) resumes with its lease
//     seemingly intact. Stores on hosts that may be suspended should run
//     with --read-index-only.
//
// Config.ReadIndexOnly turns leases off for good, Node.SetLeaseReads
// while the cluster's stores disagree on timing: then every read takes a
// round. Reads on followers always take one (through the leader).

// campaignTransfer is the context raft gives the vote requests of a
// leadership transfer (raft's unexported campaignTransfer).
var campaignTransfer = []byte("CampaignTransfer")

// leaseDuration is how long a completed ReadIndex round leases
// leadership (0: no leases).
func (c *Config) leaseDuration() time.Duration {
	if c.ReadIndexOnly || c.ElectionTicks < 3 {
		return 0
	}
	return time.Duration(c.ElectionTicks-2) * c.TickInterval * 9 / 10
}

// leaseRound is a ReadIndex round a leader issued: when, in which term.
type leaseRound struct {
	at   time.Time
	term uint64
}

// leaseIndex returns the read index for a read arriving now if the lease
// holds, and asks for a renewal round when it is half spent. With r.mu.
func (r *replica) leaseIndex(now time.Time) (uint64, bool) {
	d := r.n.cfg.leaseDuration()
	if d == 0 || !now.Before(r.leaseUntil) {
		return 0, false
	}
	st := r.rn.BasicStatus()
	if st.RaftState != raft.StateLeader || st.GetTerm() != r.leaseTerm || st.LeadTransferee != raft.None ||
		st.GetTerm() == r.noLeaseTerm || !r.n.leasesOn.Load() {
		return 0, false
	}
	if r.leaseUntil.Sub(now) < d/2 && !r.renewWanted && now.Sub(r.renewIssued) > d/2 {
		r.renewWanted = true
		r.n.signalReplica(r)
	}
	return st.GetCommit(), true
}

// recordRound notes a ReadIndex round issued now as leader. With r.mu.
func (r *replica) recordRound(id uint64, now time.Time) {
	st := r.rn.BasicStatus()
	if r.n.cfg.leaseDuration() == 0 || st.RaftState != raft.StateLeader {
		return
	}
	if r.leaseRounds == nil {
		r.leaseRounds = map[uint64]leaseRound{}
	}
	// Rounds that never completed (lost messages) expire with their lease.
	for k, lr := range r.leaseRounds {
		if now.Sub(lr.at) > r.n.cfg.leaseDuration() {
			delete(r.leaseRounds, k)
		}
	}
	r.leaseRounds[id] = leaseRound{at: now, term: st.GetTerm()}
}

// roundDone extends the lease once a round id completed. With r.mu.
func (r *replica) roundDone(id uint64) {
	lr, ok := r.leaseRounds[id]
	if !ok {
		return
	}
	delete(r.leaseRounds, id)
	st := r.rn.BasicStatus()
	if st.RaftState != raft.StateLeader || st.GetTerm() != lr.term ||
		st.LeadTransferee != raft.None || lr.term == r.noLeaseTerm {
		return
	}
	if until := lr.at.Add(r.n.cfg.leaseDuration()); until.After(r.leaseUntil) || r.leaseTerm != lr.term {
		r.leaseUntil, r.leaseTerm = until, lr.term
	}
}

// noLeaseAfterTimeoutNow ends leases for the term if msgs (a Ready's,
// before they are sent) hold a transfer's TimeoutNow. With r.mu.
func (r *replica) noLeaseAfterTimeoutNow(msgs []*pb.Message) {
	for _, m := range msgs {
		if m.GetType() == pb.MsgTimeoutNow {
			r.noLeaseTerm = m.GetTerm()
			r.endLease()
			return
		}
	}
}

// endLease drops the lease and the rounds issued so far, which must not
// renew it. With r.mu.
func (r *replica) endLease() {
	r.leaseUntil = time.Time{}
	clear(r.leaseRounds)
}

// voteRefused: m is a vote request that a replica loaded from disk must
// ignore while its vote guard lasts. Transfer campaigns pass: the leader
// that sent TimeoutNow gave up its lease first. With r.mu.
func (r *replica) voteRefused(m *pb.Message) bool {
	if t := m.GetType(); t != pb.MsgVote && t != pb.MsgPreVote {
		return false
	}
	return time.Now().Before(r.voteGuard) && !bytes.Equal(m.GetContext(), campaignTransfer)
}

// SetLeaseReads turns lease reads on or off (on at Open unless
// ReadIndexOnly). The store layer turns them off while any store of the
// cluster runs another tick or election timeout than this one, or its
// timing is unknown: a lease is only as long as the followers' election
// timeout. Off takes effect for the next read; it does not block.
func (n *Node) SetLeaseReads(on bool) {
	n.leasesOn.Store(on && n.cfg.leaseDuration() > 0)
}
