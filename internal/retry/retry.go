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

// DefaultOutageBudget is how long shardflow keeps retrying an operation, or
// a record, that fails with transient errors (throttling, server errors,
// network errors) before it gives up: the default Retry.Timeout of the
// Kinesis source, sink and stores alike, so an outage one of them survives,
// the others survive too.
const DefaultOutageBudget = 5 * time.Minute

// Policy bounds the retries of one operation. Zero fields take the defaults
// documented on shardflow.RetryPolicy; the caller resolves them.
type Policy struct {
	// MaxAttempts is the most calls, the first included. With MaxElapsed
	// set, 0 means no count limit; without, 0 and 1 mean no retry.
	MaxAttempts int
	// MaxElapsed, when positive, stops the retries once it has passed
	// since the first failure: the outage budget.
	MaxElapsed      time.Duration
	InitialInterval time.Duration
	MaxInterval     time.Duration
	Multiplier      float64
}

// WithDefaults returns p with its zero fields taken from d, and with
// MaxInterval at least InitialInterval.
func (p Policy) WithDefaults(d Policy) Policy {
	if p.MaxAttempts == 0 {
		p.MaxAttempts = d.MaxAttempts
	}
	if p.MaxElapsed == 0 {
		p.MaxElapsed = d.MaxElapsed
	}
	if p.InitialInterval == 0 {
		p.InitialInterval = d.InitialInterval
	}
	if p.MaxInterval == 0 {
		p.MaxInterval = d.MaxInterval
	}
	if p.Multiplier == 0 {
		p.Multiplier = d.Multiplier
	}
	p.MaxInterval = max(p.MaxInterval, p.InitialInterval)
	return p
}

// AWSDefaults are the documented defaults of the retry policy of AWS calls
// (the Retry option of the Kinesis source and sink and of the stores): no
// count limit, waits from 100ms doubling up to 5s, and DefaultOutageBudget.
var AWSDefaults = Policy{InitialInterval: 100 * time.Millisecond, MaxInterval: 5 * time.Second, Multiplier: 2, MaxElapsed: DefaultOutageBudget}

// ForAWS resolves a shardflow.RetryPolicy, passed field by field, for AWS
// calls: its zero fields take AWSDefaults. The caller validated the fields
// (none negative).
func ForAWS(maxAttempts int, initial, maxInterval time.Duration, multiplier float64, timeout time.Duration) Policy {
	return Policy{MaxAttempts: maxAttempts, InitialInterval: initial, MaxInterval: maxInterval, Multiplier: multiplier, MaxElapsed: timeout}.
		WithDefaults(AWSDefaults)
}

// ErrOutOfTime is wrapped by the error of Do when the operation still failed
// once Policy.MaxElapsed had passed.
var ErrOutOfTime = errors.New("retry time budget spent")

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
// returns the last error together with the context's cause. With
// p.MaxElapsed set, Do also stops at the first failure after MaxElapsed has
// passed since it was called, and returns that error wrapped with
// [ErrOutOfTime]; the wait before the last call is cut short so that call
// comes when the budget ends, and the budget is spent to its end without an
// overrun of a backoff interval. notify, if not
// nil, is called before each wait. Taking the first error from the caller
// keeps the successful path free of closures and allocations.
func Do(ctx context.Context, p Policy, err error, op func() error, notify func(attempt int, err error, wait time.Duration)) error {
	if err == nil || IsPermanent(err) || (p.MaxElapsed <= 0 && p.MaxAttempts <= 1) || p.MaxAttempts == 1 {
		return err
	}
	start := time.Now()
	b := NewBackOff(p)
	for attempt := 2; ; attempt++ {
		wait := b.NextBackOff()
		if p.MaxElapsed > 0 {
			// The last wait ends with the budget: one more call then, and
			// no overrun of up to a whole backoff interval.
			wait = max(min(wait, p.MaxElapsed-time.Since(start)), 0)
		}
		if ctx.Err() != nil {
			// The call failed as the context ended (a shutdown cut it
			// short): nothing to retry, nor to report as a retry.
			return fmt.Errorf("%w (retries stopped: %w)", err, context.Cause(ctx))
		}
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
		if p.MaxAttempts > 0 && attempt >= p.MaxAttempts {
			return fmt.Errorf("after %d attempts: %w", attempt, err)
		}
		if p.MaxElapsed > 0 && time.Since(start) >= p.MaxElapsed {
			return fmt.Errorf("%w (%v) after %d attempts: %w", ErrOutOfTime, p.MaxElapsed, attempt, err)
		}
	}
}
