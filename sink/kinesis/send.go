package kinesissink

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow/internal/awserr"
	"github.com/shardflow/shardflow/internal/retry"
)

// run sends a job's entries, re-sending only the entries that failed with a
// retryable error, after a backoff, until each has an outcome. In ordered
// mode the job's shard stays busy meanwhile, so its retries go before any
// newer record of the shard.
func (e *engine) run(j job) {
	pending := j.wires
	var b interface{ NextBackOff() time.Duration }
	for len(pending) > 0 {
		var comps []completion
		if cause := e.life.Err(); cause != nil {
			comps = e.failAll(comps, pending, "", "", closedCause(e.life))
			e.complete(comps)
			break
		}
		sentAt := time.Now()
		out, err := e.putRecords(pending)
		var retryable []wire
		var mismatch []int // indexes of entries that landed on an unexpected shard
		switch {
		case err != nil && e.life.Err() != nil:
			// The call carried these entries: count it before they fail.
			for i := range pending {
				pending[i].attempts++
			}
			comps = e.failAll(comps, pending, "", "", closedCause(e.life))
		case err != nil && !awserr.Classify(err).Retryable():
			// Refused credentials (wrapping shardflow.ErrCredentials) and
			// bad requests: no retry can fix them.
			for i := range pending {
				pending[i].attempts++
			}
			comps = e.failAll(comps, pending, "", "", err)
		case err != nil:
			e.log.Warn("put records failed; retrying", "records", len(pending), "err", err)
			for _, w := range pending {
				w.attempts++
				if gave := e.giveUp(&w, sentAt, err); gave != nil {
					comps = e.fail(comps, &w, "", "", gave)
				} else {
					retryable = append(retryable, w)
				}
			}
		default:
			throttled := 0
			for i, w := range pending {
				w.attempts++
				res := out.Records[i]
				code := aws.ToString(res.ErrorCode)
				switch {
				case code == "":
					shard := aws.ToString(res.ShardId)
					if e.mode != modePlain && shard != w.shard {
						mismatch = append(mismatch, i)
						pending[i] = w
						continue
					}
					comps = e.succeed(comps, &w, shard, aws.ToString(res.SequenceNumber))
				case retryableEntry(code):
					throttled++
					ee := &EntryError{Code: code, Message: aws.ToString(res.ErrorMessage)}
					if gave := e.giveUp(&w, sentAt, ee); gave != nil {
						comps = e.fail(comps, &w, code, ee.Message, gave)
					} else {
						retryable = append(retryable, w)
					}
				default:
					ee := &EntryError{Code: code, Message: aws.ToString(res.ErrorMessage)}
					comps = e.fail(comps, &w, code, ee.Message, ee)
				}
			}
			if throttled > 0 {
				e.log.Warn("put records: entries failed; retrying them", "failed", throttled, "records", len(pending))
			}
			if len(mismatch) > 0 {
				comps = e.resolveMismatch(comps, pending, mismatch, out, sentAt)
			}
		}
		e.complete(comps)
		pending = retryable
		if len(pending) == 0 {
			break
		}
		if b == nil {
			b = retry.NewBackOff(e.backoffPolicy())
		}
		t := time.NewTimer(b.NextBackOff())
		select {
		case <-t.C:
		case <-e.life.Done():
			t.Stop()
		}
	}
	if j.q != nil {
		e.release(j)
	}
}

func (e *engine) backoffPolicy() retry.Policy {
	return retry.Policy{MaxElapsed: e.o.RetryTimeout, InitialInterval: e.o.InitialBackoff, MaxInterval: e.o.MaxBackoff, Multiplier: 2}
}

// putRecords sends one PutRecords request.
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
	if e.o.RequestTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.o.RequestTimeout)
		defer cancel()
	}
	e.log.Debug("put records", "entries", len(ws), "bytes", bytes)
	out, err := e.client.PutRecords(ctx, in)
	if err != nil {
		op := fmt.Sprintf("put records to %q", e.stream)
		if awserr.Classify(err) == awserr.Credentials {
			return nil, awserr.CredentialsError(op, err)
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
// budget counts from each record's first failed attempt, which the record
// keeps across re-aggregation.
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
	switch {
	case e.o.MaxAttempts > 0 && w.attempts >= e.o.MaxAttempts:
		return &ExhaustedError{Limit: "MaxAttempts", Attempts: w.attempts, Err: last}
	case e.o.RecordTTL > 0 && sentAt.Sub(w.oldest()) >= e.o.RecordTTL:
		return &ExhaustedError{Limit: "RecordTTL", Budget: e.o.RecordTTL, Attempts: w.attempts, Err: last}
	case time.Since(first) >= e.o.RetryTimeout:
		return &ExhaustedError{Limit: "RetryTimeout", Budget: e.o.RetryTimeout, Attempts: w.attempts, Err: last}
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

func (e *engine) succeed(comps []completion, w *wire, shard, seq string) []completion {
	if w.many == nil {
		return append(comps, completion{r: w.one, res: Result{Entry: w.one.e, ShardID: shard, SequenceNumber: seq}})
	}
	for i, r := range w.many {
		comps = append(comps, completion{r: r, res: Result{Entry: r.e, ShardID: shard, SequenceNumber: seq, SubSequenceNumber: uint64(i), Aggregated: true}})
	}
	return comps
}

func (e *engine) fail(comps []completion, w *wire, code, msg string, err error) []completion {
	for _, r := range w.members() {
		pe := &PutError{Stream: e.stream, PartitionKey: r.e.PartitionKey, ErrorCode: code, ErrorMessage: msg, Attempts: w.attempts, Err: err}
		comps = append(comps, completion{r: r, res: Result{Entry: r.e, Err: pe}})
	}
	return comps
}

func (e *engine) failAll(comps []completion, ws []wire, code, msg string, err error) []completion {
	for i := range ws {
		comps = e.fail(comps, &ws[i], code, msg, err)
	}
	return comps
}

// complete reports outcomes, then frees their buffer space. Callbacks run
// before a Flush waiting for these records returns.
func (e *engine) complete(comps []completion) {
	if len(comps) == 0 {
		return
	}
	for _, c := range comps {
		if c.r.done != nil {
			c.r.done(c.res)
		} else {
			c.r.ack.Done(c.res.Err)
		}
	}
	e.mu.Lock()
	for _, c := range comps {
		e.bufRecords--
		e.bufBytes -= c.r.size
		if n := e.outstanding[c.r.epoch] - 1; n > 0 {
			e.outstanding[c.r.epoch] = n
		} else {
			delete(e.outstanding, c.r.epoch)
		}
	}
	e.notifyLocked()
	e.mu.Unlock()
}

// release frees an ordered job's shard and keys, and lets the shard (and any
// shard that waited for these keys) send again.
func (e *engine) release(j job) {
	e.mu.Lock()
	defer e.mu.Unlock()
	j.q.busy = false
	for _, k := range j.keys {
		if n := e.keys[k] - 1; n > 0 {
			e.keys[k] = n
		} else {
			delete(e.keys, k)
		}
	}
	now := time.Now()
	if e.queues[j.q.id] == j.q {
		e.considerLocked(j.q, now)
	}
	for q := range e.blocked {
		delete(e.blocked, q)
		if e.queues[q.id] == q {
			e.considerLocked(q, now)
		}
	}
	e.kickLocked()
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
func (e *engine) resolveMismatch(comps []completion, pending []wire, idx []int, out *kinesis.PutRecordsOutput, sentAt time.Time) []completion {
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
	var again []*record
	for _, i := range idx {
		w := &pending[i]
		shard, seq := aws.ToString(out.Records[i].ShardId), aws.ToString(out.Records[i].SequenceNumber)
		if w.many == nil {
			comps = e.succeed(comps, w, shard, seq)
			continue
		}
		if err != nil {
			comps = e.fail(comps, w, "", "", fmt.Errorf("check an aggregate that landed on shard %s, not the predicted %q: %w", shard, w.shard, err))
			continue
		}
		if m.holdsAll(shard, w.many) {
			comps = e.succeed(comps, w, shard, seq)
			continue
		}
		again = append(again, w.many...)
	}
	if len(again) > 0 {
		e.log.Warn("aggregate landed on a shard that does not hold all its records; re-sending every one of them",
			"records", len(again))
		sortByAcceptance(again)
		e.requeue(again)
	}
	return comps
}

// requeue puts records back at the front of their (new) shard queues, in
// order, ahead of newer records.
func (e *engine) requeue(recs []*record) {
	e.mu.Lock()
	if e.aborted != nil {
		// Close gave up: nothing is sent any more.
		cause := e.aborted
		e.mu.Unlock()
		comps := make([]completion, len(recs))
		for i, r := range recs {
			comps[i] = completion{r: r, res: Result{Entry: r.e, Err: &PutError{Stream: e.stream, PartitionKey: r.e.PartitionKey, Err: cause}}}
		}
		e.complete(comps)
		return
	}
	defer e.mu.Unlock()
	byShard := make(map[string][]*record)
	var order []string
	for _, r := range recs {
		id := e.smap.shardOf(r.hash)
		if _, ok := byShard[id]; !ok {
			order = append(order, id)
		}
		byShard[id] = append(byShard[id], r)
	}
	now := time.Now()
	for _, id := range order {
		q := e.queueLocked(id)
		front := byShard[id]
		q.recs = append(front, q.recs...)
		for _, r := range front {
			q.bytes += r.size
		}
		if e.mode == modeAggregate {
			e.aggregateLocked(q, true)
			e.sealLocked()
		} else {
			e.considerLocked(q, now)
		}
	}
	e.kickLocked()
}

// shardMap returns the shard map, loading it on first use.
func (e *engine) shardMap(ctx context.Context) (*shardMap, error) {
	e.mu.Lock()
	m := e.smap
	e.mu.Unlock()
	if m != nil {
		return m, nil
	}
	select {
	case e.mapSem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for the shard map: %w", context.Cause(ctx))
	}
	defer func() { <-e.mapSem }()
	e.mu.Lock()
	m = e.smap
	e.mu.Unlock()
	if m != nil {
		return m, nil
	}
	m, err := e.loadShardMap(ctx)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.installLocked(m, time.Now())
	e.mu.Unlock()
	e.log.Info("shard map loaded", "open_shards", len(m.open))
	return m, nil
}

// refreshShardMap reloads the shard map unless it was loaded after since,
// and returns the current one.
func (e *engine) refreshShardMap(since time.Time) (*shardMap, error) {
	select {
	case e.mapSem <- struct{}{}:
	case <-e.life.Done():
		return e.currentMap(), context.Cause(e.life)
	}
	defer func() { <-e.mapSem }()
	e.mu.Lock()
	fresh := e.mapLoaded.After(since)
	m := e.smap
	e.mu.Unlock()
	if fresh {
		return m, nil
	}
	m, err := e.loadShardMap(e.life)
	if err != nil {
		return e.currentMap(), err
	}
	e.mu.Lock()
	e.installLocked(m, time.Now())
	e.mu.Unlock()
	e.log.Info("shard map refreshed", "open_shards", len(m.open))
	return m, nil
}

// loadShardMap lists the stream's shards, retrying throttling, server and
// network errors with backoff within the outage budget (RetryTimeout). Its
// errors, but for ctx ending, are marked permanent: refused credentials
// (wrapping shardflow.ErrCredentials), a missing stream, missing
// permissions, or a budget spent.
func (e *engine) loadShardMap(ctx context.Context) (*shardMap, error) {
	var m *shardMap
	load := func() error {
		var err error
		m, err = loadShardMap(ctx, e.client, e.stream)
		if err != nil && !awserr.Classify(err).Retryable() {
			return retry.Permanent(awserr.CredentialsError("load the shard map", err))
		}
		return err
	}
	err := retry.Do(ctx, e.backoffPolicy(), load(), load, func(attempt int, err error, wait time.Duration) {
		e.log.Warn("list shards failed; retrying", "attempt", attempt, "wait", wait, "err", err)
	})
	switch {
	case err == nil:
		return m, nil
	case ctx.Err() != nil || retry.IsPermanent(err):
		return nil, err
	}
	return nil, retry.Permanent(err) // the outage budget is spent
}

func (e *engine) currentMap() *shardMap {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.smap
}

// installLocked switches to a new shard map and moves queued records to the
// queues of their new shards, keeping their order. Busy shards stay busy
// through their job (the job holds the old queue); in ordered mode the keys
// in flight keep a moved record from overtaking an older one of its key.
func (e *engine) installLocked(m *shardMap, at time.Time) {
	old := e.smap
	e.smap, e.mapLoaded = m, at
	if old == nil || len(e.queues) == 0 {
		return
	}
	var recs []*record
	for _, q := range e.queues {
		recs = append(recs, q.recs...)
	}
	// Queues are keyed by shard; records of one key are all in one queue,
	// in order, so re-bucketing them by acceptance order keeps key order.
	sortByAcceptance(recs)
	e.queues = make(map[string]*queue)
	e.readyQ = nil
	clear(e.blocked)
	now := time.Now()
	for _, r := range recs {
		e.queueLocked(m.shardOf(r.hash)).push(r)
	}
	for _, q := range e.queues {
		if e.mode == modeOrdered {
			e.considerLocked(q, now)
		}
	}
	e.kickLocked()
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
