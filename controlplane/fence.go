package controlplane

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/erlmcp/erlmcp/internal/etcdclient"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrNotLeader means a fenced write was refused because the leadership it
// was made under is over: the election key it was won with is gone or was
// created again. Nothing was written.
var ErrNotLeader = errors.New("controlplane: leadership lost (election key gone or replaced); nothing written")

// leadership is one won election term: the election key and its create
// revision, which grows strictly from one leader to the next.
type leadership struct {
	cli *clientv3.Client
	key string
	rev int64
	// since is when this instance saw itself elected (logs and tests).
	since time.Time
}

// fence is the comparison that holds only while this term lasts.
func (l leadership) fence() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.rev)
}

// txn is the only way the leader writes to etcd. It commits, in one Txn
// fenced on the leadership, an inner Txn If(guard...) Then(then...)
// Else(els...). It returns ErrNotLeader when the fence failed (and then
// nothing was written), otherwise whether guard held and the inner
// response. An empty guard always holds.
//
// etcd checks the op limit (default 128) per Txn level; callers keep
// len(guard) and len(then) at most maxTxnOps-1.
func (l leadership) txn(ctx context.Context, guard []clientv3.Cmp, then, els []clientv3.Op) (bool, *pb.TxnResponse, error) {
	ok, in, _, err := l.do(ctx, guard, then, els)
	return ok, in, err
}

// txnRev is txn returning the revision of the store after the Txn instead
// of the inner response.
func (l leadership) txnRev(ctx context.Context, guard []clientv3.Cmp, then, els []clientv3.Op) (bool, int64, error) {
	ok, _, rev, err := l.do(ctx, guard, then, els)
	return ok, rev, err
}

func (l leadership) do(ctx context.Context, guard []clientv3.Cmp, then, els []clientv3.Op) (bool, *pb.TxnResponse, int64, error) {
	inner := clientv3.OpTxn(guard, then, els)
	// A per-request timeout: a Txn sent to an etcd member that stopped
	// answering (SIGSTOP, a frozen VM) would otherwise hang its loop until
	// gRPC keepalive closes the connection (12 s); the loop's retry goes
	// round robin to another member. Every caller re-reads and retries
	// (level-triggered), and its writes are guarded or idempotent, so a
	// Txn that committed although its answer was lost does no harm when
	// retried.
	tctx, cancel := etcdclient.RequestTimeout(ctx)
	defer cancel()
	resp, err := l.cli.Txn(tctx).If(l.fence()).Then(inner).Commit()
	if err != nil {
		return false, nil, 0, fmt.Errorf("fenced txn: %w", err)
	}
	if !resp.Succeeded {
		return false, nil, 0, ErrNotLeader
	}
	if len(resp.Responses) != 1 || resp.Responses[0].GetResponseTxn() == nil {
		return false, nil, 0, errors.New("fenced txn: etcd answered without the inner txn's response")
	}
	in := resp.Responses[0].GetResponseTxn()
	return in.Succeeded, in, resp.Header.Revision, nil
}

// maxTxnOps bounds the ops (comparisons or requests) one Txn level holds,
// the fence comparison included; etcd's default limit is 128.
const maxTxnOps = 100
