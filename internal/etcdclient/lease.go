package etcdclient

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Renewal is one successful renewal of a lease.
type Renewal struct {
	// Sent is when the request that renewed the lease was sent. etcd's
	// leader renewed it after that, so the lease lives at least until
	// Sent + TTL (by a clock running at etcd's rate), however late the
	// answer came back: the bound a holder may act on (Expiry).
	Sent time.Time
	TTL  time.Duration
}

// Expiry is the earliest the renewed lease can expire at etcd, less
// margin for clocks that run at different rates.
func (r Renewal) Expiry(margin time.Duration) time.Time {
	return r.Sent.Add(r.TTL - margin)
}

// KeepAlive keeps lease id alive until ctx ends or the lease is gone, like
// clientv3's Lease.KeepAlive, and delivers each renewal on the returned
// channel (the latest one; a slow reader misses older ones). The channel is
// closed when ctx ends, the lease is not found (revoked or expired), or no
// renewal succeeded before the lease could have expired (a TTL after the
// last renewal was sent; before the first renewal: firstRenewalWithin, as
// clientv3 does).
//
// Unlike clientv3's, which renews over one stream pinned to one member, each
// renewal here is its own request with a short timeout, so a frozen member
// delays a renewal by one timeout: the retry goes round robin to another
// member.
func KeepAlive(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID) <-chan Renewal {
	ch := make(chan Renewal, 1)
	go func() {
		defer close(ch)
		deadline := time.Now().Add(firstRenewalWithin)
		var wait time.Duration
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			r, err := renewUntil(ctx, cli, id, deadline)
			if err != nil {
				return
			}
			deadline, wait = r.Expiry(0), max(r.TTL/3, 100*time.Millisecond)
			select { // keep only the newest renewal for a slow reader
			case <-ch:
			default:
			}
			ch <- r
		}
	}()
	return ch
}

// firstRenewalWithin bounds the wait for the first renewal (clientv3's
// default TTL, which it uses the same way).
const firstRenewalWithin = 5 * time.Second

// renewUntil renews the lease once, until one attempt succeeds, the lease
// is gone, ctx ends or deadline passes. The attempts are hedged (Hedge):
// one that has not answered within renewTimeout is not abandoned, another
// starts beside it and the first answer wins. A member that does not
// answer is so skipped after one timeout (the next attempt goes round
// robin to another member), while on a starved machine, where every
// answer is slow, a slow answer still counts instead of being cancelled
// and retried for ever.
func renewUntil(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID, deadline time.Time) (Renewal, error) {
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	r, err := Hedge(dctx, renewTimeout(deadline), func(actx context.Context) (Renewal, error) {
		return RenewOnce(actx, cli, id)
	})
	if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return Renewal{}, fmt.Errorf("no renewal before the lease could expire: %w", err)
	}
	return r, err
}

// RenewOnce is one renewal attempt; a lease that is gone is an error
// wrapping rpctypes.ErrLeaseNotFound (marked Final for Hedge). It blocks
// until etcd answers or ctx ends. It requires the member to have a
// leader: one that lost it (cut off from a quorum of the others) answers
// "no leader" at once, so Hedge tries the next member 50 ms later,
// instead of holding the renewal until etcd's own request timeout (5 s,
// as long as a default lease) while it waits for a leader to forward it
// to.
func RenewOnce(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID) (Renewal, error) {
	sent := time.Now()
	r, err := cli.KeepAliveOnce(clientv3.WithRequireLeader(ctx), id)
	switch {
	case err == nil && r.TTL > 0:
		return Renewal{Sent: sent, TTL: time.Duration(r.TTL) * time.Second}, nil
	case err == nil:
		return Renewal{}, Final(fmt.Errorf("lease %x: %w", int64(id), rpctypes.ErrLeaseNotFound))
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return Renewal{}, Final(err)
	}
	return Renewal{}, err
}

// renewTimeout is one renewal attempt's timeout: short enough that several
// attempts (on different members) fit before the lease expires.
func renewTimeout(deadline time.Time) time.Duration {
	return min(max(time.Until(deadline)/4, 250*time.Millisecond), 2*time.Second)
}
