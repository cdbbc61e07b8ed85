package retry_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow/internal/retry"
)

var policy = retry.Policy{MaxAttempts: 5, InitialInterval: time.Second, MaxInterval: 4 * time.Second, Multiplier: 2}

func TestDoStopsWaitingWhenTheContextEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancelCause(t.Context())
		stopped := errors.New("pipeline stopping")
		time.AfterFunc(300*time.Millisecond, func() { cancel(stopped) })
		first := errors.New("first")
		calls := 0
		start := time.Now()
		err := retry.Do(ctx, policy, first, func() error { calls++; return first }, nil)
		if !errors.Is(err, first) || !errors.Is(err, stopped) {
			t.Errorf("Do = %v; want the last error and the context's cause", err)
		}
		if calls != 0 || time.Since(start) != 300*time.Millisecond {
			t.Errorf("%d calls after %v; want none, returning at the cancel (300ms)", calls, time.Since(start))
		}
	})
}

func TestDoRetriesUntilSuccessOrTheAttemptLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fail := errors.New("fail")
		calls := 0
		var notified []int
		err := retry.Do(t.Context(), policy, fail, func() error {
			calls++
			if calls < 2 {
				return fail
			}
			return nil
		}, func(attempt int, _ error, _ time.Duration) { notified = append(notified, attempt) })
		if err != nil || calls != 2 || len(notified) != 2 {
			t.Errorf("Do = %v after %d more calls, %d notifications; want nil, 2, 2", err, calls, len(notified))
		}

		calls = 0
		err = retry.Do(t.Context(), policy, fail, func() error { calls++; return fail }, nil)
		if !errors.Is(err, fail) || calls != policy.MaxAttempts-1 {
			t.Errorf("Do = %v after %d more calls; want fail after %d", err, calls, policy.MaxAttempts-1)
		}
	})
}

func TestPermanentErrorsAreNotRetried(t *testing.T) {
	calls := 0
	perm := retry.Permanent(errors.New("bad input"))
	if err := retry.Do(t.Context(), policy, perm, func() error { calls++; return nil }, nil); err != perm || calls != 0 {
		t.Errorf("Do = %v after %d calls; want the permanent error at once", err, calls)
	}
	if retry.Permanent(nil) != nil {
		t.Errorf("Permanent(nil) is not nil")
	}
}

func TestDoWithATimeBudgetRetriesUntilTheBudgetIsSpent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fail := errors.New("fail")
		p := retry.Policy{MaxElapsed: time.Minute, InitialInterval: time.Second, MaxInterval: 4 * time.Second, Multiplier: 2}
		start := time.Now()
		calls := 0
		err := retry.Do(t.Context(), p, fail, func() error { calls++; return fail }, nil)
		if !errors.Is(err, fail) || !errors.Is(err, retry.ErrOutOfTime) {
			t.Errorf("Do = %v; want the last error wrapped with ErrOutOfTime", err)
		}
		// Waits are at most 6s (4s with 50% jitter): the budget is spent
		// after many more calls than a count limit of 5 would make.
		if elapsed := time.Since(start); elapsed < time.Minute || elapsed > time.Minute+6*time.Second || calls < 10 {
			t.Errorf("gave up after %v and %d more calls; want just past the 1m budget, after at least 10", elapsed, calls)
		}

		calls = 0
		err = retry.Do(t.Context(), p, fail, func() error {
			if calls++; time.Since(start) < 90*time.Second {
				return fail
			}
			return nil
		}, nil)
		if err != nil {
			t.Errorf("Do = %v; want success within the budget counted from its own first failure", err)
		}
	})
}

func TestTheLastCallComesWhenTheBudgetEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fail := errors.New("fail")
		// Waits of 20s to 30s (jitter) against a 45s budget: without the
		// cut, the last call would come up to 15s after the budget's end.
		p := retry.Policy{MaxElapsed: 45 * time.Second, InitialInterval: 20 * time.Second, MaxInterval: 20 * time.Second, Multiplier: 1}
		start := time.Now()
		var last time.Duration
		err := retry.Do(t.Context(), p, fail, func() error { last = time.Since(start); return fail }, nil)
		if !errors.Is(err, retry.ErrOutOfTime) {
			t.Fatalf("Do = %v; want ErrOutOfTime", err)
		}
		if last != p.MaxElapsed {
			t.Errorf("last call %v after the first failure; want it when the %v budget ends", last, p.MaxElapsed)
		}
	})
}

// A call that failed because the context ended (a shutdown cut it short)
// is not a failure to retry or to report: Do returns at once, without
// telling notify, which logs "retrying".
func TestAFailureAfterTheContextEndedIsNeitherRetriedNorReported(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		calls, notified := 0, 0
		err := retry.Do(ctx, policy, errors.New("first"), func() error {
			calls++
			cancel() // the shutdown comes while the call runs
			return context.Canceled
		}, func(int, error, time.Duration) { notified++ })
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Do = %v; want the call's context.Canceled", err)
		}
		if calls != 1 || notified != 1 {
			t.Errorf("%d calls, %d notifications; want 1 call, notified only of the first failure", calls, notified)
		}
		notified = 0
		err = retry.Do(ctx, policy, context.Canceled, func() error { calls++; return nil }, func(int, error, time.Duration) { notified++ })
		if err == nil || notified != 0 {
			t.Errorf("Do with the context already ended = %v, %d notifications; want its error and none", err, notified)
		}
	})
}
