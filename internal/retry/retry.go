// Package retry runs an operation again with exponential backoff and jitter.
// It is the one importer of github.com/cenkalti/backoff/v4 in shardflow.
package retry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Policy bounds the retries of one operation. Zero fields take the defaults
// documented on shardflow.RetryPolicy; the caller resolves them.
type Policy struct {
	MaxAttempts     int
	InitialInterval time.Duration
	MaxInterval     time.Duration
	Multiplier      float64
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as not to be retried. A nil err stays nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// IsPermanent reports whether err, or an error it wraps, was marked Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// NewBackOff returns a fresh exponential backoff for p, with 50% jitter and no
// elapsed-time limit: the attempt count bounds the retries.
func NewBackOff(p Policy) *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = p.InitialInterval
	b.MaxInterval = p.MaxInterval
	b.Multiplier = p.Multiplier
	b.RandomizationFactor = 0.5
	b.MaxElapsedTime = 0
	b.Reset()
	return b
}

// Do retries an operation whose first call already failed with err. It
// calls op again, waiting a backoff interval before each call, until op
// succeeds, returns a permanent error, or the operation was called
// p.MaxAttempts times in all. A wait ends early when ctx is done; Do then
// returns the last error together with the context's cause. notify, if not
// nil, is called before each wait. Taking the first error from the caller
// keeps the successful path free of closures and allocations.
func Do(ctx context.Context, p Policy, err error, op func() error, notify func(attempt int, err error, wait time.Duration)) error {
	if err == nil || p.MaxAttempts <= 1 || IsPermanent(err) {
		return err
	}
	b := NewBackOff(p)
	for attempt := 2; ; attempt++ {
		wait := b.NextBackOff()
		if notify != nil {
			notify(attempt-1, err, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (retries stopped: %w)", err, context.Cause(ctx))
		case <-t.C:
		}
		err = op()
		if err == nil || IsPermanent(err) {
			return err
		}
		if attempt >= p.MaxAttempts {
			return fmt.Errorf("after %d attempts: %w", attempt, err)
		}
	}
}
