package shardflow

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/shardflow/shardflow/internal/retry"
)

// DeadLetter is the error a dead-letter handler receives (see
// [Stream.DeadLetter]): the stage's error, with where the value came from
// and how it failed. Its Error is the stage's error's and it unwraps to it,
// so a handler that logs err or tests it with errors.Is works as if it got
// the stage's error itself; errors.AsType[*shardflow.DeadLetter](err) gives
// the provenance, for a dead-letter destination that keeps it (such as
// kinesissink.DeadLetterTo).
type DeadLetter struct {
	// Stage is the name of the stage the value failed.
	Stage string
	// Stream and ShardID say where the value's record(s) were read from.
	Stream, ShardID string
	// Position is the record's sequence and sub-sequence number (the first
	// record's, for a batch).
	Position Position
	// Records are the positions of every record the value came from, in
	// order: one for a value of one record, one per record for a batch.
	Records []Position
	// Arrival is when the record (a batch's first) arrived in its stream,
	// as the source gave it with [Lane.EmitArrived] (the Kinesis source:
	// ApproximateArrivalTimestamp); zero when it did not.
	Arrival time.Time
	// Attempts is how many handler calls (Sink.Write calls, for a sink)
	// held the value, the first included: those of its retries, and with
	// [RetryPolicy].Bisect, the calls of its batch and of the parts of it
	// that held the value. A value a sink took and then failed through its
	// Ack counts the Write that took it.
	Attempts int
	// FirstErr is the error of the first call.
	FirstErr error
	// Err is the last error: the one the stage failed the value with.
	Err error
}

func (d *DeadLetter) Error() string { return d.Err.Error() }

func (d *DeadLetter) Unwrap() error { return d.Err }

// failedCalls is how a value failed a stage for good, for its dead letter:
// the error of its first call and of its last, and how many calls held it.
// It is an error only to travel where errors do; settleFailure unpacks it.
type failedCalls struct {
	first, last error
	attempts    int
}

func (f *failedCalls) Error() string { return f.last.Error() }

func (f *failedCalls) Unwrap() error { return f.last }

// callsOf returns how err, the error a value failed a stage with, came
// about: as retryCall reported it, or one call's error.
func callsOf(err error) *failedCalls {
	if fc, ok := err.(*failedCalls); ok {
		return fc
	}
	return &failedCalls{first: err, last: err, attempts: 1}
}

// tooOld reports whether the record(s) of tok arrived longer ago than the
// stage's MaxRecordAge.
func (st *stage) tooOld(tok token) bool {
	if st.maxAge <= 0 {
		return false
	}
	at := tok.arrival()
	return at != 0 && time.Since(time.Unix(0, at)) > st.maxAge
}

// retryCall retries a call whose first attempt failed with err, under the
// stage's retry policy: it returns nil once an attempt succeeds, else a
// *failedCalls. Panics are not retried, and neither are records older than
// the stage's MaxRecordAge. call is one more attempt. what names the call
// in the log ("handler", "sink write").
func retryCall(ctx context.Context, st *stage, env *laneEnv, c *nodeStats, tok token, err error, what string, call func() error) error {
	fc := &failedCalls{first: err, last: err, attempts: 1}
	if _, isPanic := err.(*PanicError); isPanic {
		return fc
	}
	if st.tooOld(tok) {
		fc.last = fmt.Errorf("%w (not retried: the record is older than MaxRecordAge %v)", err, st.maxAge)
		return fc
	}
	last := err
	err = retry.Do(ctx, st.retry, err, func() error {
		if st.tooOld(tok) {
			return retry.Permanent(fmt.Errorf("%w (retries stopped after %d attempts: the record is older than MaxRecordAge %v)",
				last, fc.attempts, st.maxAge))
		}
		fc.attempts++
		e := call()
		if _, isPanic := e.(*PanicError); isPanic {
			return retry.Permanent(e)
		}
		if e != nil {
			last = e
		}
		return e
	}, func(attempt int, err error, wait time.Duration) {
		env.metrics.retries.Add(context.Background(), 1, c.attrs)
		env.log.Warn(what+" failed; retrying", "stage", st.name, "attempt", attempt, "wait", wait, "err", err)
	})
	if err == nil {
		return nil
	}
	fc.last = err
	return fc
}

// settleFailure applies the stage's failure policy to a value that failed
// for good with err (a *failedCalls, or one call's error): the dead-letter
// handler when there is one, handed a *DeadLetter, else the failure of its
// record(s), which stops the pipeline.
//
// c counts the outcome; onLane says whether this runs on the goroutine of
// c's chain (which alone may touch c's plain counts).
func settleFailure[In any](ctx context.Context, st *stage, env *laneEnv, c *nodeStats, onLane bool, dl func(context.Context, In, error) error, v In, tok token, err error) {
	fc := callsOf(err)
	if dl != nil {
		letter := &DeadLetter{Stage: st.name, Stream: env.stream, ShardID: env.shard, Records: tok.positions(nil),
			Attempts: fc.attempts, FirstErr: fc.first, Err: fc.last}
		if len(letter.Records) > 0 {
			letter.Position = letter.Records[0]
		}
		if at := tok.arrival(); at != 0 {
			letter.Arrival = time.Unix(0, at).UTC()
		}
		_, dlErr := protect(ctx, func(ctx context.Context, v In) (struct{}, error) { return struct{}{}, dl(ctx, v, letter) }, v)
		if dlErr == nil {
			env.log.Warn("record sent to the dead-letter handler", "stage", st.name,
				"sequence_number", letter.Position.SequenceNumber, "attempts", fc.attempts, "err", fc.last)
			env.metrics.recordsDeadLettered.Add(context.Background(), 1, c.attrs)
			if onLane {
				c.failedOnLane(true)
			}
			tok.done(nil)
			return
		}
		err = fmt.Errorf("%w; dead-letter handler failed too: %w", fc.last, dlErr)
	} else {
		err = fc.last
	}
	env.metrics.recordsFailed.Add(context.Background(), 1, c.attrs)
	if onLane {
		c.failedOnLane(false)
	}
	tok.done(&StageError{Stage: st.name, Stream: env.stream, ShardID: env.shard, Position: tok.position(), Err: err})
}

// bisect isolates the values of a failed batch that fail on their own
// (RetryPolicy.Bisect). v is the batch, tok its group token, with one
// record token per value; err is how it failed (see callsOf). try calls
// the handler once on a part of the batch, with the part's token, and
// passes what it gives on, returning the call's error; settle applies the
// failure policy to a part.
//
// The search, step by step, for the part known to fail (at first the
// batch):
//  1. Call the handler on its first half. If that fails, the first half is
//     the part known to fail, and the second half waits (deferred); if it
//     succeeds, the second half is known to fail, without a call.
//  2. Repeat until the part known to fail is one value: it goes to the
//     failure policy.
//  3. Call the handler once on every deferred value together, in order. If
//     that fails, search it from step 1.
//
// So one failing value among n costs at most ⌈log2 n⌉+1 calls. The parts
// go on in the batch's order. It returns how many parts went on or were
// settled (1 when v was not split), and false when v cannot be split (it is
// not a slice of one value per record of tok, or tok is shared with other
// values, as after a FlatMap): the caller then settles v whole.
func bisect[In any](ctx context.Context, v In, tok token, err error, try func(In, token) error, settle func(In, token, error)) (parts int, ok bool) {
	g := tok.g
	if g == nil {
		return 0, false
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Slice || rv.Len() < 2 || rv.Len() != len(g.toks) {
		return 0, false
	}
	g.mu.Lock()
	sole := g.pending == 1 && !g.failed
	g.mu.Unlock()
	if !sole {
		return 0, false
	}
	// The batch's group is never completed: its records complete through
	// the groups of the parts.
	fc := callsOf(err)
	n := rv.Len()
	calls := make([]int, n)     // failed calls of parts holding each value
	lastErr := make([]error, n) // the last of them
	pick := func(idx []int) (In, token) {
		part := reflect.MakeSlice(rv.Type(), len(idx), len(idx))
		for i, j := range idx {
			part.Index(i).Set(rv.Index(j))
		}
		t := g.toks[idx[0]]
		if len(idx) > 1 {
			toks := make([]token, len(idx))
			for i, j := range idx {
				toks[i] = g.toks[j]
			}
			t = token{g: newGroup(toks)}
		}
		return part.Interface().(In), t
	}
	succeeds := func(idx []int) bool {
		part, t := pick(idx)
		if err := try(part, t); err != nil {
			for _, j := range idx {
				calls[j]++
				lastErr[j] = err
			}
			return false
		}
		parts++
		return true
	}
	failing := make([]int, n)
	for i := range failing {
		failing[i] = i
	}
	var deferred []int
	for {
		for len(failing) > 1 {
			if ctx.Err() != nil {
				// Stopping: what is left fails together, as the batch would.
				part, t := pick(slices.Concat(failing, deferred))
				settle(part, t, &failedCalls{first: fc.first, last: fmt.Errorf("%w (bisect stopped: %w)", fc.last, context.Cause(ctx)), attempts: fc.attempts})
				return parts + 1, true
			}
			h := len(failing) / 2
			if succeeds(failing[:h]) {
				failing = failing[h:]
			} else {
				deferred = slices.Concat(failing[h:], deferred)
				failing = failing[:h]
			}
		}
		j := failing[0]
		last := lastErr[j]
		if last == nil { // known to fail by its other half, never alone
			last = fc.last
		}
		part, t := pick(failing)
		settle(part, t, &failedCalls{first: fc.first, last: last, attempts: fc.attempts + calls[j]})
		parts++
		if len(deferred) == 0 || succeeds(deferred) {
			return parts, true
		}
		failing, deferred = deferred, nil
	}
}
