package etcdclient

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestHedgeSkipsAnAttemptThatNeverAnswers(t *testing.T) {
	var calls atomic.Int32
	v, err := Hedge(context.Background(), 20*time.Millisecond, func(ctx context.Context) (int, error) {
		if calls.Add(1) == 1 {
			<-ctx.Done() // the frozen member: answers nothing until cancelled
			return 0, ctx.Err()
		}
		return 42, nil
	})
	if err != nil || v != 42 || calls.Load() != 2 {
		t.Fatalf("got %d, %v after %d calls; want 42 from the second", v, err, calls.Load())
	}
}

func TestHedgeRetriesFailuresUntilCtxEnds(t *testing.T) {
	boom := errors.New("boom")
	var calls atomic.Int32
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := Hedge(ctx, time.Second, func(context.Context) (int, error) {
		calls.Add(1)
		return 0, boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err %v, want the last attempt's", err)
	}
	// Retried every 50 ms, not in a hot loop and not once.
	if n := calls.Load(); n < 2 || n > 10 {
		t.Fatalf("%d attempts in 300 ms", n)
	}
}

func TestHedgeBoundsAttemptsInFlight(t *testing.T) {
	var running, most atomic.Int32
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := Hedge(ctx, 5*time.Millisecond, func(ctx context.Context) (int, error) {
		n := running.Add(1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		<-ctx.Done()
		running.Add(-1)
		return 0, ctx.Err()
	})
	if err == nil || most.Load() != hedgeAttempts {
		t.Fatalf("err %v, at most %d attempts at once; want an error and %d", err, most.Load(), hedgeAttempts)
	}
}

// An error marked Final is an answer: Hedge returns it at once, unwrapped,
// without another attempt.
func TestHedgeFinalErrorEndsAtOnce(t *testing.T) {
	errGone := errors.New("gone")
	var calls atomic.Int32
	// No hedge during the test (after an hour): without Final the 50 ms
	// retries would run until ctx ends.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := Hedge(ctx, time.Hour, func(context.Context) (int, error) {
		calls.Add(1)
		return 0, Final(errGone)
	})
	if err != errGone {
		t.Fatalf("err %v, want the unwrapped final error", err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d attempts, want 1", n)
	}
}
