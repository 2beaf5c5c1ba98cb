package controlplane

import (
	"context"
	"fmt"
	"time"

	"github.com/erlmcp/erlmcp/internal/etcdclient"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// campaignPoll bounds how long a candidate trusts one watch while it waits
// for its turn: then it reads the election prefix again.
const campaignPoll = 500 * time.Millisecond

// campaign is concurrency.Election's Campaign with the same keys and rule
// (a candidate's key is <prefix>/<lease id in hex>, bound to its lease; the
// oldest key leads), made to survive an etcd member that stops answering
// without closing its connections (SIGSTOP, a frozen VM; the usual way a
// whole region fails). Campaign waits on one watch with no deadline, and
// clientv3 multiplexes all of a client's watches over one gRPC stream: when
// that stream sits on the frozen member nothing arrives until gRPC
// keepalive closes the connection, 12 s later (see internal/etcdclient).
// Here each request has its own timeout and the wait re-reads the prefix
// every campaignPoll, so a re-read goes round robin to a live member.
//
// It blocks until this candidate leads or ctx ends. The returned key and
// its create revision are the term: they fence the leader's writes. On
// error the candidate's key is left to its lease, which the caller
// revokes.
func campaign(ctx context.Context, cli *clientv3.Client, lease clientv3.LeaseID, prefix, val string) (key string, rev int64, err error) {
	pfx := prefix + "/"
	key = fmt.Sprintf("%s%x", pfx, lease)
	for rev == 0 {
		tctx, cancel := etcdclient.RequestTimeout(ctx)
		resp, err := cli.Txn(tctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, val, clientv3.WithLease(lease))).
			Else(clientv3.OpGet(key)).Commit()
		cancel()
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return "", 0, ctx.Err()
			}
			sleep(ctx, 100*time.Millisecond)
		case resp.Succeeded:
			rev = resp.Header.Revision
		default:
			// A retried put that had in fact committed: the key is ours
			// (it carries our lease) and keeps its first revision.
			rev = resp.Responses[0].GetResponseRange().Kvs[0].CreateRevision
		}
	}
	if err := waitTurn(ctx, cli, pfx, rev, campaignPoll); err != nil {
		return "", 0, err
	}
	return key, rev, nil
}

// waitTurn blocks until no key under pfx was created before rev, or ctx
// ends. It watches the next older key (as Campaign does, so a deletion is
// seen at once) but for at most poll before reading again.
func waitTurn(ctx context.Context, cli *clientv3.Client, pfx string, rev int64, poll time.Duration) error {
	for {
		gctx, cancel := etcdclient.RequestTimeout(ctx)
		opts := append([]clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithMaxCreateRev(rev - 1)}, clientv3.WithLastCreate()...)
		resp, err := etcdclient.Hedge(gctx, etcdclient.DefaultHedgeAfter, func(c context.Context) (*clientv3.GetResponse, error) {
			return cli.Get(c, pfx, opts...)
		})
		cancel()
		if err == nil && len(resp.Kvs) == 0 {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wctx, wcancel := context.WithTimeout(ctx, poll)
		if err == nil {
			wch := cli.Watch(clientv3.WithRequireLeader(wctx), string(resp.Kvs[0].Key), clientv3.WithRev(resp.Header.Revision+1))
		wait:
			for wr := range wch {
				for _, ev := range wr.Events {
					if ev.Type == clientv3.EventTypeDelete {
						break wait
					}
				}
			}
		} else {
			<-wctx.Done()
		}
		wcancel()
	}
}
