package kinesissink

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
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
		if err != nil && (e.life.Err() != nil || !retryableRequest(err)) {
			// The call carried these entries: count it before they fail.
			for i := range pending {
				pending[i].attempts++
			}
		}
		switch {
		case err != nil && e.life.Err() != nil:
			comps = e.failAll(comps, pending, "", "", closedCause(e.life))
		case err != nil && !retryableRequest(err):
			comps = e.failAll(comps, pending, "", "", err)
		case err != nil:
			e.log.Warn("put records failed; retrying", "records", len(pending), "err", err)
			for _, w := range pending {
				w.attempts++
				if e.exhausted(&w, sentAt) {
					comps = e.fail(comps, &w, "", "", fmt.Errorf("%w: %w", ErrAttemptsExhausted, err))
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
					if w.shard != "" && shard != w.shard {
						mismatch = append(mismatch, i)
						pending[i] = w
						continue
					}
					comps = e.succeed(comps, &w, shard, aws.ToString(res.SequenceNumber))
				case retryableEntry(code):
					throttled++
					ee := &EntryError{Code: code, Message: aws.ToString(res.ErrorMessage)}
					if e.exhausted(&w, sentAt) {
						comps = e.fail(comps, &w, code, ee.Message, fmt.Errorf("%w: %w", ErrAttemptsExhausted, ee))
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
			b = retry.NewBackOff(retry.Policy{InitialInterval: e.o.InitialBackoff, MaxInterval: e.o.MaxBackoff, Multiplier: 2})
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
		return nil, fmt.Errorf("put records to %q: %w", e.stream, err)
	}
	if len(out.Records) != len(ws) {
		return nil, fmt.Errorf("put records to %q: %d results for %d entries", e.stream, len(out.Records), len(ws))
	}
	return out, nil
}

// exhausted reports whether a wire entry that just failed may not be tried
// again.
func (e *engine) exhausted(w *wire, now time.Time) bool {
	if w.attempts >= e.o.MaxAttempts {
		return true
	}
	return e.o.RecordTTL > 0 && now.Sub(w.oldest()) >= e.o.RecordTTL
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
// reloaded. A plain record is where Kinesis routed it, so it is done. An
// aggregate is done only for the members whose hash key lies in the range of
// the shard it landed on: a KCL reader drops the others, so they are queued
// again to be sent on their own way.
func (e *engine) resolveMismatch(comps []completion, pending []wire, idx []int, out *kinesis.PutRecordsOutput, sentAt time.Time) []completion {
	m, err := e.refreshShardMap(sentAt)
	if err != nil {
		e.log.Warn("shard map refresh failed", "err", err)
	}
	var again []*record
	for _, i := range idx {
		w := &pending[i]
		shard, seq := aws.ToString(out.Records[i].ShardId), aws.ToString(out.Records[i].SequenceNumber)
		if w.many == nil {
			comps = e.succeed(comps, w, shard, seq)
			continue
		}
		for n, r := range w.many {
			if m != nil {
				if in, known := m.holds(shard, r.hash); known && in {
					comps = append(comps, completion{r: r, res: Result{Entry: r.e, ShardID: shard, SequenceNumber: seq, SubSequenceNumber: uint64(n), Aggregated: true}})
					continue
				}
			}
			again = append(again, r)
		}
	}
	if len(again) > 0 {
		e.log.Warn("aggregate landed on an unexpected shard; re-sending the records outside its range",
			"records", len(again))
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
	m, err := loadShardMap(ctx, e.client, e.stream)
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
	m, err := loadShardMap(e.life, e.client, e.stream)
	if err != nil {
		return e.currentMap(), err
	}
	e.mu.Lock()
	e.installLocked(m, time.Now())
	e.mu.Unlock()
	e.log.Info("shard map refreshed", "open_shards", len(m.open))
	return m, nil
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

type apiError interface {
	error
	ErrorCode() string
}

type statusError interface {
	error
	HTTPStatusCode() int
}

// retryableRequest reports whether a failed PutRecords call is worth
// retrying: throttling, server errors, timeouts and network errors are;
// InvalidArgument, ValidationException, ResourceNotFound, AccessDenied and
// KMS errors other than throttling are not.
func retryableRequest(err error) bool {
	if ae, ok := errors.AsType[apiError](err); ok {
		code := ae.ErrorCode()
		switch code {
		case "ProvisionedThroughputExceededException", "LimitExceededException", "KMSThrottlingException",
			"InternalFailure", "InternalFailureException", "InternalServerError", "ServiceUnavailable",
			"ServiceUnavailableException", "ThrottlingException", "Throttling", "ThrottledException",
			"RequestLimitExceeded", "TooManyRequestsException", "RequestTimeout", "RequestTimeoutException",
			"SlowDown", "RequestThrottled", "RequestThrottledException", "PriorRequestNotComplete",
			"ResourceInUseException": // the stream is being created or updated

			return true
		case "InvalidArgumentException", "ValidationException", "ResourceNotFoundException",
			"AccessDeniedException", "UnrecognizedClientException",
			"InvalidSignatureException", "MissingAuthenticationToken", "ExpiredTokenException":
			return false
		}
		if strings.HasPrefix(code, "KMS") {
			return false
		}
	}
	if se, ok := errors.AsType[statusError](err); ok {
		s := se.HTTPStatusCode()
		// 0: no response at all (a reset connection, a send that
		// failed), which the SDK reports as a response error too.
		return s == 0 || s >= 500 || s == 429
	}
	if _, ok := errors.AsType[apiError](err); ok {
		return false // an unknown client-side error code
	}
	return true // transport errors and timeouts
}
