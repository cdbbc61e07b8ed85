package kinesissink

import (
	"context"
	"fmt"
)

// flush sends everything accepted before the call at once, ignoring the
// linger, and waits until each of those records has its outcome (reported
// through its ack or callback), or ctx ends.
func (e *engine) flush(ctx context.Context) error {
	e.mu.Lock()
	if e.closed && e.closing != nil {
		e.mu.Unlock()
		return ErrClosed
	}
	err := e.flushLocked(ctx)
	e.mu.Unlock()
	return err
}

// flushLocked is flush with mu held (it is released while waiting).
func (e *engine) flushLocked(ctx context.Context) error {
	mine := e.epoch
	e.epoch++
	e.flushing++
	defer func() { e.flushing-- }()
	e.sched.flushOpen()
	e.kickLocked()
	for e.pendingUpToLocked(mine) {
		w := e.waitChanLocked()
		e.mu.Unlock()
		select {
		case <-w:
			e.mu.Lock()
		case <-ctx.Done():
			e.mu.Lock()
			return fmt.Errorf("flush: %w", context.Cause(ctx))
		}
		// Records that arrived while waiting, or were put back after a
		// shard map refresh, are sent at once as well.
		e.sched.flushOpen()
		e.kickLocked()
	}
	return nil
}

func (e *engine) pendingUpToLocked(epoch uint64) bool {
	for ep := range e.outstanding {
		if ep <= epoch {
			return true
		}
	}
	return false
}

// close stops accepting records, flushes, and waits for every record's
// outcome until ctx ends; then it gives up on the rest (each gets a
// *PutError wrapping ErrClosed) and waits for the request goroutines to
// stop. A second close waits for the first and returns its result.
func (e *engine) close(ctx context.Context) error {
	e.mu.Lock()
	if e.closing != nil {
		ch := e.closing
		e.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("close: %w", context.Cause(ctx))
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.closeErr
	}
	e.closed = true
	e.closing = make(chan struct{})
	e.notifyLocked() // writers waiting for space get ErrClosed
	e.logger().Info("closing", "records", e.bufRecords)
	err := e.flushLocked(ctx)
	var comps []completion
	if err != nil {
		n := e.bufRecords
		cause := fmt.Errorf("%w before the record was written: %w", ErrClosed, context.Cause(ctx))
		e.aborted = cause
		e.abort(cause)
		comps = e.drainLocked(cause)
		err = fmt.Errorf("close %q: %d record(s) not written: %w", e.stream, n, cause)
	}
	e.mu.Unlock()
	e.complete(comps, nil)
	e.wg.Wait()     // the request goroutines fail what they hold and stop
	e.stopMetrics() // no record is left: the buffered gauges end
	e.mu.Lock()
	if e.timer != nil {
		e.timer.Stop()
	}
	e.abort(ErrClosed)
	e.closeErr = err
	close(e.closing)
	e.mu.Unlock()
	if err == nil {
		e.logger().Info("closed")
	}
	return err
}

// drainLocked takes every record not in a request and fails it.
func (e *engine) drainLocked(cause error) []completion {
	recs := e.sched.drain()
	comps := make([]completion, len(recs))
	for i, r := range recs {
		comps[i] = failed(r, &PutError{Stream: e.stream, PartitionKey: r.e.PartitionKey, Err: cause})
	}
	return comps
}
