package kinesissink

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/awserr"
	"github.com/shardflow/shardflow/internal/retry"
)

// run sends a job's entries, re-sending only the entries that failed with a
// retryable error, after a backoff, until each has an outcome. The loop is
// the engine's own (retry.NewBackOff), not retry.Do, because a request can
// fail in part: each entry has its own outcome and its own budget. What is
// worth retrying is awserr's to say, for a whole request; per-entry error
// codes are Kinesis' own (retryableEntry). Ordered schedulers keep the job's
// shard busy meanwhile, so its retries go before any newer record of the
// shard.
//
// Metrics are recorded here, per call: the call's latency and entries, its
// failure or its refused entries, and the entries it sends again; complete
// records the records' outcomes.
func (e *engine) run(j job, wk *worker) {
	pending := j.wires
	e.encode(pending, &wk.agg)
	m := e.metrics()
	var b interface{ NextBackOff() time.Duration }
	// complete reports outcomes, then keeps the slice for the next round,
	// cleared so that it holds no record.
	complete := func(comps []completion) {
		e.complete(comps, wk.silent)
		clear(comps)
		clear(wk.silent)
		wk.comps, wk.silent = comps[:0], wk.silent[:0]
	}
	for round := 0; len(pending) > 0; round++ {
		comps := wk.comps[:0]
		if cause := e.life.Err(); cause != nil {
			comps = e.failAll(comps, pending, "", "", closedCause(e.life))
			complete(comps)
			break
		}
		if round > 0 {
			m.resent(len(pending))
			e.chargeRetry(pending)
		}
		sentAt := time.Now()
		out, err := e.putRecords(pending)
		took := time.Since(sentAt).Seconds()
		var retryable []wire
		var mismatch []int      // indexes of entries that landed on an unexpected shard
		var misrouted []*record // members of misrouted aggregates, to send again
		var aggregates int      // the misrouted aggregates they came in
		switch {
		case err != nil && e.life.Err() != nil:
			// The call carried these entries: count it before they fail.
			// It failed because Close gave up, not as a PutRecords error.
			m.call(len(pending), took, nil)
			for i := range pending {
				pending[i].attempts++
			}
			comps = e.failAll(comps, pending, "", "", closedCause(e.life))
		case retry.IsPermanent(err):
			// Refused credentials (wrapping shardflow.ErrCredentials) and
			// bad requests: no retry can fix them.
			m.call(len(pending), took, err)
			for i := range pending {
				pending[i].attempts++
			}
			comps = e.failAll(comps, pending, "", "", err)
		case err != nil:
			m.call(len(pending), took, err)
			e.logger().Warn("put records failed; retrying", "records", len(pending), "err", err)
			for _, w := range pending {
				w.attempts++
				if gave := e.giveUp(&w, sentAt, err); gave != nil {
					comps = e.fail(comps, &w, "", "", gave)
				} else {
					retryable = append(retryable, w)
				}
			}
		default:
			m.call(len(pending), took, nil)
			throttled := 0
			var refused []codeCount
			for i, w := range pending {
				w.attempts++
				res := out.Records[i]
				code := aws.ToString(res.ErrorCode)
				switch {
				case code == "":
					shard := aws.ToString(res.ShardId)
					if w.routed && shard != w.shard {
						mismatch = append(mismatch, i)
						pending[i] = w
						continue
					}
					comps = e.succeed(comps, &wk.silent, &w, shard, aws.ToString(res.SequenceNumber))
				case retryableEntry(code):
					throttled++
					refused = addCode(refused, code)
					ee := &EntryError{Code: code, Message: aws.ToString(res.ErrorMessage)}
					if gave := e.giveUp(&w, sentAt, ee); gave != nil {
						comps = e.fail(comps, &w, code, ee.Message, gave)
					} else {
						retryable = append(retryable, w)
					}
				default:
					refused = addCode(refused, code)
					ee := &EntryError{Code: code, Message: aws.ToString(res.ErrorMessage)}
					comps = e.fail(comps, &w, code, ee.Message, ee)
				}
			}
			m.refused(refused)
			if throttled > 0 {
				e.logger().Warn("put records: entries failed; retrying them", "failed", throttled, "records", len(pending))
			}
			if len(mismatch) > 0 {
				comps, misrouted, aggregates = e.resolveMismatch(comps, pending, mismatch, out, sentAt)
			}
		}
		complete(comps)
		if len(misrouted) > 0 && e.resend(misrouted) {
			m.resent(aggregates)
		}
		pending = retryable
		if len(pending) == 0 {
			break
		}
		if b == nil {
			b = retry.NewBackOff(e.o.retry)
		}
		t := time.NewTimer(b.NextBackOff())
		select {
		case <-t.C:
		case <-e.life.Done():
			t.Stop()
		}
	}
	e.reclaim(j.wires, &wk.agg)
	e.mu.Lock()
	e.sched.release(j)
	e.kickLocked()
	e.mu.Unlock()
}

// reclaim keeps the buffers of a done job's aggregates for the next ones,
// when the client is the SDK's: a *kinesis.Client is done with a request's
// data once PutRecords returns (it copied it into the request body), while
// another implementation of API may keep it.
func (e *engine) reclaim(ws []wire, a *aggEncoder) {
	if !e.sdkClient {
		return
	}
	for i := range ws {
		if w := &ws[i]; w.many != nil && w.data != nil {
			a.reuse(w.data)
			w.data = nil
		}
	}
}

// encode encodes the KPL aggregates of a job, which the scheduler packed
// (members and exact size) but left unencoded, with a, outside the
// engine's lock.
func (e *engine) encode(ws []wire, a *aggEncoder) {
	for i := range ws {
		w := &ws[i]
		if w.many == nil || w.data != nil {
			continue
		}
		w.data = a.encode(w.many)
		// At most the size it was packed with (aggBound), and now exact.
		w.size = len(w.data) + len(w.pk)
	}
}

// chargeRetry charges entries sent again to their shards' budgets: they
// are not held back (they waited once, and Kinesis or the network refused
// them), but newer records of their shards wait for them.
func (e *engine) chargeRetry(ws []wire) {
	if e.lim == nil {
		return
	}
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	for i := range ws {
		if ws[i].routed {
			e.lim.charge(ws[i].shard, 1, ws[i].size, now)
		}
	}
}

// putRecords sends one PutRecords request. Its error is marked by
// awserr.Mark: permanent when no retry can fix it.
func (e *engine) putRecords(ws []wire) (*kinesis.PutRecordsOutput, error) {
	in := &kinesis.PutRecordsInput{Records: make([]types.PutRecordsRequestEntry, len(ws))}
	setStream(e.stream, &in.StreamName, &in.StreamARN)
	bytes := 0
	for i := range ws {
		w := &ws[i]
		in.Records[i] = types.PutRecordsRequestEntry{Data: w.data, PartitionKey: &w.pk}
		if w.ehk != "" {
			in.Records[i].ExplicitHashKey = &w.ehk
		}
		bytes += w.size
	}
	ctx := e.life
	if e.o.requestTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.o.requestTimeout)
		defer cancel()
	}
	e.logger().Debug("put records", "entries", len(ws), "bytes", bytes)
	out, err := e.client.PutRecords(ctx, in)
	if err != nil {
		op := fmt.Sprintf("put records to %q", e.stream)
		if err = awserr.Mark(op, err); errors.Is(err, shardflow.ErrCredentials) {
			return nil, err // it names op already
		}
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if len(out.Records) != len(ws) {
		return nil, fmt.Errorf("put records to %q: %d results for %d entries", e.stream, len(out.Records), len(ws))
	}
	return out, nil
}

// giveUp returns why a wire entry that just failed with a retryable error,
// in the attempt sent at sentAt, may not be tried again, or nil. The outage
// budget (Options.Retry.Timeout) counts from each record's first failed
// attempt, which the record keeps across re-aggregation.
func (e *engine) giveUp(w *wire, sentAt time.Time, last error) error {
	first := sentAt
	for _, r := range w.members() {
		if r.failedSince.IsZero() {
			r.failedSince = sentAt
		}
		if r.failedSince.Before(first) {
			first = r.failedSince
		}
	}
	p := e.o.retry
	switch {
	case p.MaxAttempts > 0 && w.attempts >= p.MaxAttempts:
		return &ExhaustedError{Limit: "Retry.MaxAttempts", Attempts: w.attempts, Err: last}
	case e.o.RecordTTL > 0 && sentAt.Sub(w.oldest()) >= e.o.RecordTTL:
		return &ExhaustedError{Limit: "RecordTTL", Budget: e.o.RecordTTL, Attempts: w.attempts, Err: last}
	case time.Since(first) >= p.MaxElapsed:
		return &ExhaustedError{Limit: "Retry.Timeout", Budget: p.MaxElapsed, Attempts: w.attempts, Err: last}
	}
	return nil
}

func closedCause(life context.Context) error {
	cause := context.Cause(life)
	if errors.Is(cause, ErrClosed) {
		return cause
	}
	return fmt.Errorf("%w: %w", ErrClosed, cause)
}

// succeed adds the outcomes of a wire entry written. With silent not nil,
// the records nobody is told about (a Producer's, put without a callback,
// which reports failures only) go there, with no Result to make.
func (e *engine) succeed(comps []completion, silent *[]*record, w *wire, shard, seq string) []completion {
	quiet := silent != nil && e.collect != nil
	if w.many == nil {
		if quiet && w.one.done == nil {
			*silent = append(*silent, w.one)
			return comps
		}
		return append(comps, completion{r: w.one, shard: shard, seq: seq})
	}
	for i, r := range w.many {
		if quiet && r.done == nil {
			*silent = append(*silent, r)
			continue
		}
		comps = append(comps, completion{r: r, shard: shard, seq: seq, sub: uint64(i), aggregated: true})
	}
	return comps
}

func (e *engine) fail(comps []completion, w *wire, code, msg string, err error) []completion {
	for _, r := range w.members() {
		pe := &PutError{Stream: e.stream, PartitionKey: r.e.PartitionKey, ErrorCode: code, ErrorMessage: msg, Attempts: w.attempts, Err: err}
		comps = append(comps, failed(r, pe))
	}
	return comps
}

func (e *engine) failAll(comps []completion, ws []wire, code, msg string, err error) []completion {
	for i := range ws {
		comps = e.fail(comps, &ws[i], code, msg, err)
	}
	return comps
}

// complete reports outcomes, counts them in the metrics, then frees their
// buffer space: comps, and silent, records written that report to nobody
// (see succeed). Callbacks and metrics come before a Flush waiting for
// these records returns.
func (e *engine) complete(comps []completion, silent []*record) {
	if len(comps) == 0 && len(silent) == 0 {
		return
	}
	written, bytes := len(silent), 0
	for _, r := range silent {
		bytes += r.size
	}
	var lost []codeCount
	for i := range comps {
		c := &comps[i]
		if c.err == nil {
			written++
			bytes += c.r.size
		} else {
			lost = addCode(lost, givenUpCode(c.err))
		}
		switch {
		case c.r.done != nil:
			c.r.done(c.result())
		case e.collect != nil:
			if c.err != nil {
				e.collect(c.result())
			}
		default:
			c.r.ack.Done(c.err)
		}
	}
	e.metrics().settled(written, bytes, lost)
	e.mu.Lock()
	e.bufRecords -= len(comps) + len(silent)
	e.bufBytes -= bytes
	for _, c := range comps {
		if c.err != nil {
			e.bufBytes -= c.r.size
		}
	}
	// Records of one request share their Flush epoch but for the few put
	// while a Flush began: count them off by runs, not one map update each.
	var epoch uint64
	n := 0
	count := func(r *record) {
		if n > 0 && r.epoch != epoch {
			e.settleEpochLocked(epoch, n)
			n = 0
		}
		epoch = r.epoch
		n++
	}
	for i := range comps {
		count(comps[i].r)
	}
	for _, r := range silent {
		count(r)
	}
	e.settleEpochLocked(epoch, n)
	e.notifyLocked()
	e.mu.Unlock()
}

// settleEpochLocked counts n records of a Flush epoch done.
func (e *engine) settleEpochLocked(epoch uint64, n int) {
	if left := e.outstanding[epoch] - n; left > 0 {
		e.outstanding[epoch] = left
	} else {
		delete(e.outstanding, epoch)
	}
}

// resolveMismatch handles entries that Kinesis wrote to another shard than
// predicted: the shard map is stale (the stream was resharded), so it is
// reloaded. A plain record is where Kinesis routed it, so it is written. An
// aggregate is written, for a KCL reader, only if every member's hash key
// lies in the range of the shard it landed on: AggregatorUtil.deaggregate
// drops the whole aggregate otherwise. Then, as the KPL does, every member
// is queued again, to be re-aggregated by its shard in the new map ahead of
// newer records of that shard; each member's one outcome is that of the
// re-send. A reader that does not filter by hash range reads those members
// twice, which at-least-once delivery allows.
func (e *engine) resolveMismatch(comps []completion, pending []wire, idx []int, out *kinesis.PutRecordsOutput, sentAt time.Time) (_ []completion, again []*record, aggregates int) {
	m, err := e.refreshShardMap(sentAt)
	if err == nil {
		// A map loaded while the request was in flight may predate the
		// shard the entry landed on: load it again then.
		for _, i := range idx {
			if _, known := m.all[aws.ToString(out.Records[i].ShardId)]; !known && pending[i].many != nil {
				m, err = e.refreshShardMap(time.Now())
				break
			}
		}
	}
	for _, i := range idx {
		w := &pending[i]
		shard, seq := aws.ToString(out.Records[i].ShardId), aws.ToString(out.Records[i].SequenceNumber)
		if w.many == nil {
			comps = e.succeed(comps, nil, w, shard, seq)
			continue
		}
		if err != nil {
			comps = e.fail(comps, w, "", "", fmt.Errorf("check an aggregate that landed on shard %s, not the predicted %q: %w", shard, w.shard, err))
			continue
		}
		if m.holdsAll(shard, w.many) {
			comps = e.succeed(comps, nil, w, shard, seq)
			continue
		}
		// Re-sending is a retry like any other: it spends the records'
		// retry budget, so a shard map that keeps lagging the stream
		// cannot make the sink re-send without end.
		misrouted := fmt.Errorf("aggregate landed on shard %s, which does not hold all its records", shard)
		if gErr := e.giveUp(w, sentAt, misrouted); gErr != nil {
			comps = e.fail(comps, w, "", "", gErr)
			continue
		}
		again = append(again, w.many...)
		aggregates++
	}
	if len(again) > 0 {
		e.logger().Warn("aggregate landed on a shard that does not hold all its records; re-sending every one of them",
			"records", len(again))
		sortByAcceptance(again)
	}
	return comps, again, aggregates
}

// resend queues the members of misrouted aggregates again. The first time,
// at once: the refreshed shard map routes them right. When a record comes
// back misrouted again (a shard map lagging the stream), it waits a backoff
// of the retry policy first, as any retry does. It reports whether they were
// queued (else Close gave up, and failed them).
func (e *engine) resend(recs []*record) bool {
	rounds := 0
	for _, r := range recs {
		r.misroutes++
		rounds = max(rounds, r.misroutes)
	}
	if rounds > 1 {
		b := retry.NewBackOff(e.o.retry)
		var d time.Duration
		for range rounds - 1 {
			d = b.NextBackOff()
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-e.life.Done():
			t.Stop()
		}
	}
	return e.requeue(recs)
}

// requeue puts records back at the front of their (new) shard queues, in
// order, ahead of newer records, and reports true; once Close gave up, it
// fails them and reports false.
func (e *engine) requeue(recs []*record) bool {
	e.mu.Lock()
	if e.aborted != nil {
		// Close gave up: nothing is sent any more.
		cause := e.aborted
		e.mu.Unlock()
		comps := make([]completion, len(recs))
		for i, r := range recs {
			comps[i] = failed(r, &PutError{Stream: e.stream, PartitionKey: r.e.PartitionKey, Err: cause})
		}
		e.complete(comps, nil)
		return false
	}
	defer e.mu.Unlock()
	e.sched.requeue(recs)
	e.kickLocked()
	return true
}

// retryableEntry reports whether a per-entry PutRecords error code is worth
// retrying.
func retryableEntry(code string) bool {
	switch code {
	case "ProvisionedThroughputExceededException", "InternalFailure", "KMSThrottlingException":
		return true
	}
	return false
}
