package sessionstore

import (
	"context"
	"fmt"
	"time"

	"github.com/erlmcp/erlmcp/internal/etcdclient"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// leaseMargin is how long before its membership lease could expire
// unrenewed the node stops serving (design §3: TTL − margin after the last
// renewal), so that it never serves after etcd has dropped its key. The
// renewal is counted from when it was sent (etcdclient.Renewal), which
// already bounds etcd's expiry however late the answer came, so the
// margin only covers clocks running at different rates.
func leaseMargin(ttl time.Duration) time.Duration {
	return ttl / 10
}

// servingUntil is the serving deadline after renewal r, cur being the
// deadline before it (nil: none yet). A renewal bounds the lease from when
// it was sent, less leaseMargin, and never moves the deadline back: a late
// answer to an earlier attempt bounds the lease less than the newest one.
func servingUntil(cur *time.Time, r etcdclient.Renewal) time.Time {
	until := r.Expiry(leaseMargin(r.TTL))
	if cur != nil && cur.After(until) {
		return *cur
	}
	return until
}

// leaseHeld reports whether the node may serve: its membership lease was
// renewed recently enough that it cannot have expired.
func (n *Node) leaseHeld() bool {
	until := n.leaseUntil.Load()
	return until == nil || time.Now().Before(*until)
}

// guardLease follows the keepalive acks of the node's membership lease
// (membership.Registration keeps it alive; this is a second listener on the
// same lease, since Registration has no loss hook). Each ack moves the
// serving deadline to ack + TTL − margin; when the acks stop, the deadline
// passes and the node answers UNAVAILABLE. When the lease is lost for good
// (the keepalive channel closes), it waits for Registration to register
// under a new lease and follows that one.
func (n *Node) guardLease(ctx context.Context) {
	timer := time.NewTimer(time.Until(*n.leaseUntil.Load()))
	defer timer.Stop()
	held := true
	set := func(now bool) {
		if now == held {
			return
		}
		held = now
		if now {
			n.log.Info("membership lease renewed; serving again")
		} else {
			n.log.Warn("membership lease lost or about to expire; refusing requests until registered again")
		}
		n.setHealth(now)
		if n.cfg.leaseHook != nil {
			n.cfg.leaseHook(now)
		}
	}
	renewed := func(r etcdclient.Renewal) {
		until := servingUntil(n.leaseUntil.Load(), r)
		n.leaseUntil.Store(&until)
		timer.Reset(time.Until(until))
		set(time.Now().Before(until))
	}
	keepAlive := etcdclient.KeepAlive
	if n.cfg.keepAlive != nil {
		keepAlive = n.cfg.keepAlive
	}
	for {
		lease := n.reg.LeaseID()
		kctx, kcancel := context.WithCancel(ctx)
		// One immediate renewal (KeepAliveOnce) so a new lease serves at
		// once, then the acks of the shared keepalive stream.
		octx, ocancel := etcdclient.RequestTimeout(kctx)
		if r, err := etcdclient.RenewOnce(octx, n.etcd, lease); err == nil {
			renewed(r)
		}
		ocancel()
		// Renewals with per-call timeouts, so a frozen etcd member does not
		// hold the node's serving deadline hostage.
		n.followAcks(ctx, keepAlive(kctx, n.etcd, lease), timer, renewed, func() { set(false) })
		kcancel()
		if ctx.Err() != nil {
			return
		}
		lost := time.Time{}
		n.leaseUntil.Store(&lost)
		set(false)
		if !n.awaitLease(ctx, lease) {
			return
		}
	}
}

// awaitLease blocks until membership holds a lease other than lease (it
// registers again after an expiry), or lease itself answers a renewal
// again: the keepalive gives up after a TTL without an answer, but the
// lease may have outlived that (etcd slow, or unreachable from this node
// for a while, while membership's own renewals got through), and then no
// new lease ever comes and the node must serve again under this one. It
// returns false when ctx ends.
func (n *Node) awaitLease(ctx context.Context, lease clientv3.LeaseID) bool {
	retry := time.NewTicker(leaseRetryEvery)
	defer retry.Stop()
	for n.reg.LeaseID() == lease {
		n.mu.Lock()
		ch := n.storesChanged
		n.mu.Unlock()
		if n.reg.LeaseID() != lease {
			break
		}
		select {
		case <-ctx.Done():
			return false
		case <-ch:
		case <-retry.C:
			octx, ocancel := etcdclient.RequestTimeout(ctx)
			_, err := etcdclient.RenewOnce(octx, n.etcd, lease)
			ocancel()
			if err == nil {
				n.log.WithField("lease", fmt.Sprintf("%x", int64(lease))).Info("membership lease answers renewals again")
				return true
			}
		}
	}
	return true
}

// leaseRetryEvery: how often a node that stopped serving for its lease
// tries that lease again.
const leaseRetryEvery = 500 * time.Millisecond

func (n *Node) followAcks(ctx context.Context, ka <-chan etcdclient.Renewal, timer *time.Timer, renewed func(etcdclient.Renewal), expired func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case r, ok := <-ka:
			if !ok {
				return
			}
			renewed(r)
		case <-timer.C:
			expired()
		}
	}
}

// setHealth reports SERVING once ready and while the lease is held.
func (n *Node) setHealth(serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	select {
	case <-n.ready:
		if serving {
			st = healthpb.HealthCheckResponse_SERVING
		}
	default:
	}
	n.health.SetServingStatus("", st)
	n.health.SetServingStatus(pb.SessionStoreService_ServiceDesc.ServiceName, st)
}
