// Package etcdwatch keeps a local copy of an etcd key prefix up to date:
// a full list, then a watch from the next revision, a fresh full list when
// the watch is compacted or broken, and a periodic full re-list as a
// safety net. Consumers see whole snapshots, never individual events, so
// their logic is level-triggered.
package etcdwatch

import (
	"context"
	"errors"
	"maps"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Snapshot is the prefix's content at Revision: key → value.
type Snapshot struct {
	Revision int64
	KVs      map[string][]byte
}

// Options tune Run. Zero values take defaults.
type Options struct {
	// Resync is how often to re-list even when the watch looks healthy.
	Resync time.Duration
	// RetryBackoff is the wait after a failed list before the next try.
	RetryBackoff time.Duration
	// OnError, if set, is told about list and watch failures (for logs).
	OnError func(error)
}

// Run lists prefix, calls onChange with the snapshot, then calls it again
// after every batch of changes. It blocks until ctx is done and then
// returns ctx.Err(). onChange runs on Run's goroutine; it must not block for
// long, and must not keep the map it is given past the call's return unless
// it copies it (Run passes a fresh copy each time, so keeping it is safe).
func Run(ctx context.Context, cli *clientv3.Client, prefix string, opts Options, onChange func(Snapshot)) error {
	if opts.Resync <= 0 {
		opts.Resync = 30 * time.Second
	}
	if opts.RetryBackoff <= 0 {
		opts.RetryBackoff = 500 * time.Millisecond
	}
	report := func(err error) {
		if opts.OnError != nil && err != nil && ctx.Err() == nil {
			opts.OnError(err)
		}
	}
	for ctx.Err() == nil {
		resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
		if err != nil {
			report(err)
			sleep(ctx, opts.RetryBackoff)
			continue
		}
		kvs := make(map[string][]byte, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			kvs[string(kv.Key)] = kv.Value
		}
		rev := resp.Header.Revision
		onChange(Snapshot{Revision: rev, KVs: maps.Clone(kvs)})
		if err := watch(ctx, cli, prefix, rev, kvs, opts.Resync, onChange); !errors.Is(err, errResync) {
			report(err)
		}
	}
	return ctx.Err()
}

var errResync = errors.New("periodic resync")

// watch applies events to kvs until the watch breaks, ctx ends, or resync
// elapses; the caller then lists again.
func watch(ctx context.Context, cli *clientv3.Client, prefix string, rev int64, kvs map[string][]byte, resync time.Duration, onChange func(Snapshot)) error {
	wctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), resync)
	defer cancel()
	wch := cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return err // includes ErrCompacted: the caller re-lists.
		}
		if len(resp.Events) == 0 {
			continue
		}
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypeDelete {
				delete(kvs, string(ev.Kv.Key))
			} else {
				kvs[string(ev.Kv.Key)] = ev.Kv.Value
			}
		}
		onChange(Snapshot{Revision: resp.Header.Revision, KVs: maps.Clone(kvs)})
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errResync
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
