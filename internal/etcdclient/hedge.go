package etcdclient

import (
	"context"
	"errors"
	"time"
)

// DefaultHedgeAfter is how long Hedge waits for an attempt before it
// starts another beside it.
const DefaultHedgeAfter = 500 * time.Millisecond

// hedgeAttempts bounds the attempts Hedge runs at once.
const hedgeAttempts = 3

// Hedge runs call (an idempotent etcd read) and, while no attempt has
// answered, starts another every after, at most hedgeAttempts at a time;
// the first answer wins and the others are cancelled. The client balances
// requests round robin over its members, so a later attempt goes to
// another member: one that stopped answering (SIGSTOP, a frozen VM) costs
// after, not a whole request timeout. A failed attempt is retried after
// 50 ms, unless its error is marked Final (an answer no other attempt can
// change), which is returned at once; the last error is returned when ctx
// ends first.
//
// It blocks until an attempt succeeds or ctx ends; bound ctx
// (RequestTimeout) in background loops.
func Hedge[T any](ctx context.Context, after time.Duration, call func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		v   T
		err error
	}
	results := make(chan result, hedgeAttempts) // never blocks an attempt
	running := 0
	var lastErr error
	start := func() {
		running++
		go func() {
			v, err := call(ctx)
			results <- result{v, err}
		}()
	}
	start()
	t := time.NewTimer(after)
	defer t.Stop()
	for {
		select {
		case res := <-results:
			running--
			if res.err == nil {
				return res.v, nil
			}
			var f finalError
			if errors.As(res.err, &f) {
				var zero T
				return zero, f.err
			}
			lastErr = res.err
			// A quick failure (no leader, connection refused): another
			// attempt soon, not after a whole hedge delay.
			t.Reset(min(after, 50*time.Millisecond))
		case <-t.C:
			if running < hedgeAttempts {
				start()
			}
			t.Reset(after)
		case <-ctx.Done():
			var zero T
			if lastErr == nil {
				lastErr = ctx.Err()
			}
			return zero, lastErr
		}
	}
}

// Final marks an attempt's error as an answer rather than a failure
// (say, the key or lease does not exist): Hedge returns it at once,
// unwrapped, instead of trying again.
func Final(err error) error { return finalError{err} }

type finalError struct{ err error }

func (e finalError) Error() string { return e.err.Error() }
func (e finalError) Unwrap() error { return e.err }
