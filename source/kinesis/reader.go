package kinesissource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/awserr"
	"github.com/shardflow/shardflow/internal/kpl"
	"github.com/shardflow/shardflow/internal/retry"
)

// misroutedLogInterval spaces a shard's warnings about misrouted
// aggregates.
const misroutedLogInterval = time.Minute

// startSpec says where a reader starts, and what it knows of the shard.
type startSpec struct {
	checkpoint    shardflow.Checkpoint
	hasCheckpoint bool
	initial       StartingPosition
	hashRange     hashRange // from ListShards
}

// reader reads one shard into its lane.
type reader struct {
	src     *Source
	c       *coordinator
	st      *streamConf // the stream of the shard
	shardID string
	start   startSpec
	log     *slog.Logger
	met     shardMetrics

	stop     chan struct{} // closed to ask for a hand-over
	stopOnce sync.Once

	// Where the shard has been read to, to replace an expired iterator.
	lastSeq string
	// A checkpoint inside a KPL aggregate: skip its user records up to
	// skipSub when the aggregate is read again.
	skipSeq string
	skipSub uint64

	kplBuf []kpl.Record // reused by deaggregate

	// Warnings about misrouted aggregates: when the last was logged, and
	// how many were not logged since.
	misroutedLogged     time.Time
	misroutedSuppressed int
}

// fetcher is how a reader receives its shard's records: by polling with
// GetRecords (pollFetcher) or by enhanced fan-out's SubscribeToShard
// (fanOutFetcher). Everything else a reader does, checkpoints, lanes,
// de-aggregation, resharding, hand-over, heartbeats and metrics, is the
// same for both. A fetcher is used by its reader's goroutine only.
type fetcher interface {
	// open positions the fetcher where the reader starts (see
	// reader.startAt), and fails as polling's first GetShardIterator
	// does, a refused checkpoint included.
	open(ctx context.Context) error
	// next blocks until the next batch of records arrives (possibly
	// none: a poll at the tip, an event with nothing new), retrying what
	// fails under the source's Retry policy. It returns ctx's error when
	// ctx ends, and errStopRequested when the reader is asked to hand its
	// shard over.
	next(ctx context.Context) (batch, error)
	// close releases what the fetcher holds, such as an open
	// subscription. It may be called more than once.
	close()
}

// batch is what one GetRecords call or one SubscribeToShard event brought.
type batch struct {
	records      []types.Record
	millisBehind int64
	took         time.Duration // the call's duration, or the wait for the event
	ended        bool          // the shard is closed and read to its end
	children     []types.ChildShard
}

func (r *reader) run(ctx context.Context) error {
	s := r.src
	// Load the checkpoint now, not at discovery: with leases, another
	// instance may have moved it since.
	cp, hasCP, err := r.c.load(ctx, s.opts.Store, r.shardID)
	if err != nil {
		r.c.stopped(r)
		return r.exitErr(ctx, err)
	}
	if hasCP && cp.ShardEnd {
		r.c.markFinished(r.shardID, true)
		r.release(ctx)
		r.c.rediscover()
		return nil
	}
	r.start.checkpoint, r.start.hasCheckpoint = cp, hasCP
	lane, err := r.c.shards.Open(r.st.name, r.shardID, s.opts.Store)
	if err != nil {
		r.c.stopped(r)
		return r.exitErr(ctx, err)
	}
	f := r.c.reads.newFetcher(r)
	children, err := r.read(ctx, lane, f)
	// Close the subscription before the hand-over's wait for the records
	// in flight: the next owner may subscribe meanwhile.
	f.close()
	if err != nil || ctx.Err() != nil {
		if ctx.Err() != nil || errors.Is(err, errStopRequested) {
			err = nil // stopping or handing over: no error, no retry
		}
		return r.exit(ctx, lane, err)
	}
	return r.end(ctx, lane, children)
}

// read hands the shard's records to lane until the shard ends (it returns
// the shard's children) or reading stops (it returns why).
func (r *reader) read(ctx context.Context, lane *shardflow.Lane[shardflow.Record], f fetcher) ([]types.ChildShard, error) {
	if err := f.open(ctx); err != nil {
		return nil, err
	}
	// The watchdog watches the reader from now on (see Lane.Heartbeat).
	lane.Heartbeat()
	r.log.Info("reading shard", "from", r.describeStart())
	for {
		b, err := f.next(ctx)
		if err != nil {
			return nil, err
		}
		lane.Heartbeat() // a successful read, records or not
		ev := GetRecordsEvent{Stream: r.st.name, ShardID: r.shardID, Duration: b.took, Records: len(b.records),
			Bytes: r.recordLoad(b.records), MillisBehindLatest: b.millisBehind}
		for i := range b.records {
			if err := r.emit(ctx, lane, &b.records[i], &ev); err != nil {
				r.report(ctx, ev)
				return nil, err
			}
		}
		r.report(ctx, ev)
		if b.ended {
			return b.children, nil
		}
	}
}

// recordLoad returns the data bytes of the records of a successful read,
// and reports the read to a store that balances leases by load
// (shardflow.LoadRecorder). It runs on every read: it neither allocates
// nor locks.
func (r *reader) recordLoad(records []types.Record) (bytes int) {
	for i := range records {
		bytes += len(records[i].Data)
	}
	if r.c.loads != nil {
		r.c.loads.RecordLoad(r.st.name, r.shardID, len(records), bytes)
	}
	return bytes
}

// requestStop asks the reader to hand its shard over: it stops reading,
// closes its lane (final checkpoint) and releases the lease.
func (r *reader) requestStop() {
	r.stopOnce.Do(func() { close(r.stop) })
}

// errStopRequested ends a reader's wait when it is asked to stop.
var errStopRequested = errors.New("hand-over requested")

// sleep waits d, or until ctx is done or the reader is asked to stop.
func (r *reader) sleep(ctx context.Context, d time.Duration) error {
	return sleepOr(ctx, d, r.stop)
}

// emit hands the user records of one Kinesis record to the lane, and counts
// what it handed on in ev.
func (r *reader) emit(ctx context.Context, lane *shardflow.Lane[shardflow.Record], kr *types.Record, ev *GetRecordsEvent) error {
	seq := aws.ToString(kr.SequenceNumber)
	base := shardflow.Record{
		Stream:                      r.st.name,
		ShardID:                     r.shardID,
		PartitionKey:                aws.ToString(kr.PartitionKey),
		SequenceNumber:              seq,
		ApproximateArrivalTimestamp: aws.ToTime(kr.ApproximateArrivalTimestamp),
	}
	users, aggregated, corrupt := deaggregate(r.kplBuf, kr.Data)
	r.kplBuf = users
	if corrupt {
		r.log.Warn("corrupt KPL aggregate delivered as a plain record", "sequence_number", seq)
	}
	skipThrough := int64(-1)
	if r.skipSeq != "" && seq == r.skipSeq {
		skipThrough = int64(r.skipSub)
	}
	r.skipSeq = ""
	r.lastSeq = seq
	if !aggregated {
		if skipThrough >= 0 {
			return nil
		}
		base.Data = kr.Data // zero-copy: the SDK's slice, not reused by it
		if err := lane.EmitArrived(ctx, shardflow.Position{SequenceNumber: seq}, base.ApproximateArrivalTimestamp, base); err != nil {
			return err
		}
		ev.UserRecords++
		return nil
	}
	if len(users) == 0 {
		// A valid aggregate of no user records: nothing to deliver, but
		// the checkpoint may pass it.
		return lane.Skip(ctx, shardflow.Position{SequenceNumber: seq})
	}
	if out := r.start.hashRange.outOfRange(users); out > 0 {
		ev.MisroutedAggregates++
		drop := r.src.opts.DropMisroutedAggregates
		r.warnMisrouted(seq, len(users), out, drop)
		if drop {
			last := uint64(len(users) - 1)
			if skipThrough >= int64(last) {
				return nil // a checkpoint already covers it
			}
			ev.DroppedUserRecords += len(users) - int(skipThrough+1)
			return lane.Skip(ctx, shardflow.Position{SequenceNumber: seq, SubSequenceNumber: last})
		}
	}
	for i, u := range users {
		if int64(i) <= skipThrough {
			continue
		}
		rec := base
		rec.Data = u.Data
		rec.PartitionKey = u.PartitionKey
		rec.ExplicitHashKey = u.ExplicitHashKey
		rec.SubSequenceNumber = uint64(i)
		pos := shardflow.Position{SequenceNumber: seq, SubSequenceNumber: uint64(i), Partial: i < len(users)-1}
		if err := lane.EmitArrived(ctx, pos, rec.ApproximateArrivalTimestamp, rec); err != nil {
			return err
		}
		ev.UserRecords++
	}
	return nil
}

// warnMisrouted logs an aggregate with user records outside the shard's
// hash range, at most once per misroutedLogInterval per shard; the next
// warning says how many were not logged meanwhile.
func (r *reader) warnMisrouted(seq string, users, outOfRange int, dropped bool) {
	now := time.Now()
	if !r.misroutedLogged.IsZero() && now.Sub(r.misroutedLogged) < misroutedLogInterval {
		r.misroutedSuppressed++
		return
	}
	msg := "KPL aggregate has user records outside the shard's hash range; delivering all of them (a KCL application drops the whole aggregate)"
	if dropped {
		msg = "KPL aggregate has user records outside the shard's hash range; dropping the whole aggregate, as DropMisroutedAggregates asks"
	}
	r.log.Warn(msg, "sequence_number", seq, "user_records", users, "out_of_range", outOfRange,
		"suppressed", r.misroutedSuppressed)
	r.misroutedLogged, r.misroutedSuppressed = now, 0
}

// end finishes a closed shard: every record done, SHARD_END saved, then its
// children may start.
func (r *reader) end(ctx context.Context, lane *shardflow.Lane[shardflow.Record], children []types.ChildShard) error {
	if err := lane.End(ctx); err != nil {
		return r.exit(ctx, lane, fmt.Errorf("end shard %s: %w", r.shardID, err))
	}
	ids := make([]string, len(children))
	for i, c := range children {
		ids[i] = aws.ToString(c.ShardId)
	}
	r.log.Info("shard ended; starting its children", "children", ids)
	r.c.markFinished(r.shardID, true)
	r.release(ctx)
	r.c.rediscover()
	return nil
}

// exit ends the reader. When the source stops (ctx done) or hands the shard
// over, a leasing reader first closes its lane, which waits for the records
// in flight and saves the checkpoint, then releases the lease. It returns
// nil when stopping, and err otherwise.
func (r *reader) exit(ctx context.Context, lane *shardflow.Lane[shardflow.Record], err error) error {
	defer r.c.stopped(r)
	handover := ctx.Err() != nil || errors.Is(err, errStopRequested) || err == nil
	if r.c.leaser != nil && handover && !errors.Is(err, shardflow.ErrLeaseLost) {
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.src.opts.HandoffTimeout)
		defer cancel()
		if cerr := lane.Close(hctx); cerr != nil {
			// The lane is closed and saves nothing more, so the lease can
			// go now: the next owner reads again from the last checkpoint
			// at once, instead of after the lease expired.
			r.log.Warn("shard handed over without its final checkpoint; records since the last checkpoint will be read again", "err", cerr)
		}
		if r.release(ctx) {
			r.log.Info("stopped reading shard and released its lease")
		}
		return nil
	}
	return r.exitErr(ctx, err)
}

// exitErr maps a reader's last error to what Run returns.
func (r *reader) exitErr(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil, err == nil, errors.Is(err, errStopRequested):
		return nil
	case errors.Is(err, shardflow.ErrLeaseLost), errors.Is(err, shardflow.ErrLaneClosed):
		r.log.Info("stopped reading shard", "err", err)
		return nil
	}
	return fmt.Errorf("read shard %s of stream %q: %w", r.shardID, r.st.name, err)
}

// releaseTimeout bounds the release of a lease, one conditional write: it
// runs after the source stopped or a hand-over ended, so it has a bound of
// its own.
const releaseTimeout = 5 * time.Second

// release gives up the shard's lease, if the store has leases, and reports
// whether it did.
func (r *reader) release(ctx context.Context) bool {
	if r.c.leaser == nil {
		return false
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := r.c.leaser.ReleaseLease(rctx, r.st.name, r.shardID); err != nil {
		r.log.Warn("lease not released; it expires instead", "err", err)
		return false
	}
	return true
}

func (r *reader) notify(ev GetRecordsEvent) {
	if r.src.opts.OnGetRecords != nil {
		r.src.opts.OnGetRecords(ev)
	}
}

// retry retries a reader's call that failed with err, as Source.call does,
// and also ends its waits, with an error wrapping errStopRequested, when
// the reader is asked to hand its shard over. op gets the context to call
// with.
func (r *reader) retry(ctx context.Context, what string, err error, op func(context.Context) error) error {
	return r.retryWith(ctx, r.src.policy, what, err, op)
}

// retryWithin is retry with the outage budget counted from since, the
// first failure of a run of failures, rather than from now.
func (r *reader) retryWithin(ctx context.Context, what string, err error, since time.Time, op func(context.Context) error) error {
	p := r.src.policy
	if p.MaxElapsed > 0 {
		if p.MaxElapsed -= time.Since(since); p.MaxElapsed <= 0 {
			return fmt.Errorf("%w (%v): %w", retry.ErrOutOfTime, r.src.policy.MaxElapsed, err)
		}
	}
	return r.retryWith(ctx, p, what, err, op)
}

func (r *reader) retryWith(ctx context.Context, p retry.Policy, what string, err error, op func(context.Context) error) error {
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-r.stop:
			cancel(errStopRequested)
		case <-rctx.Done():
		}
	}()
	return r.src.retryCallWith(rctx, p, r.log, what, err, op)
}

func (r *reader) describeStart() string {
	switch {
	case r.start.hasCheckpoint && r.start.checkpoint.Partial:
		return fmt.Sprintf("inside aggregate %s after user record %d", r.start.checkpoint.SequenceNumber, r.start.checkpoint.SubSequenceNumber)
	case r.start.hasCheckpoint && r.start.checkpoint.SequenceNumber != "":
		return "after checkpoint " + r.start.checkpoint.SequenceNumber
	}
	return r.start.initial.String()
}

// startPosition is where a reader starts: after its checkpoint, at it (for
// a checkpoint inside a KPL aggregate, whose user records done emit skips),
// or at the initial position.
type startPosition struct {
	typ types.ShardIteratorType
	seq string    // with AT_ and AFTER_SEQUENCE_NUMBER
	at  time.Time // with AT_TIMESTAMP
	// fromCheckpoint: the position is the checkpoint's, which Kinesis
	// may refuse as older than the stream's retention.
	fromCheckpoint bool
}

// startAt returns where the reader starts, and sets up the skip of the
// user records a partial checkpoint covers.
func (r *reader) startAt() startPosition {
	cp := r.start.checkpoint
	if !r.start.hasCheckpoint || cp.SequenceNumber == "" {
		return startPosition{typ: r.start.initial.typ, at: r.start.initial.at}
	}
	if cp.Partial {
		r.skipSeq, r.skipSub = cp.SequenceNumber, cp.SubSequenceNumber
		return startPosition{typ: types.ShardIteratorTypeAtSequenceNumber, seq: cp.SequenceNumber, fromCheckpoint: true}
	}
	return startPosition{typ: types.ShardIteratorTypeAfterSequenceNumber, seq: cp.SequenceNumber, fromCheckpoint: true}
}

// checkpointRefused handles Kinesis refusing the checkpoint as a starting
// point (an InvalidArgumentException, for a checkpoint older than the
// stream's retention): it returns the *CheckpointExpiredError Run stops
// with, or nil when Options.FallbackToTrimHorizon lets the reader start at
// the trim horizon instead.
func (r *reader) checkpointRefused(err error) error {
	cp := r.start.checkpoint
	if !r.src.opts.FallbackToTrimHorizon {
		return &CheckpointExpiredError{Stream: r.st.name, ShardID: r.shardID, Checkpoint: cp.SequenceNumber, Err: err}
	}
	r.log.Warn("checkpoint refused; starting at the trim horizon as FallbackToTrimHorizon allows: records may have been lost",
		"sequence_number", cp.SequenceNumber, "err", err)
	r.skipSeq = ""
	return nil
}

// isInvalidArgument reports an InvalidArgumentException, Kinesis' answer to
// a starting sequence number it does not accept.
func isInvalidArgument(err error) bool {
	_, ok := errors.AsType[*types.InvalidArgumentException](err)
	return ok
}

// call calls op, and retries it as the source's Retry policy says when it
// fails (see retryCall).
func (s *Source) call(ctx context.Context, log *slog.Logger, what string, op func(context.Context) error) error {
	return s.retryCall(ctx, log, what, op(ctx), op)
}

// retryCall retries op, an AWS call of the source whose first call failed
// with err (nil: it did not fail), with backoff and jitter until it
// succeeds, fails for good (as internal/awserr classifies it: refused or
// missing credentials, reported wrapping shardflow.ErrCredentials, and bad
// requests), or the Retry policy's outage budget is spent. Each retry is
// logged at Warn. op may return an error already marked retry.Permanent,
// for a case the caller handles itself.
func (s *Source) retryCall(ctx context.Context, log *slog.Logger, what string, err error, op func(context.Context) error) error {
	return s.retryCallWith(ctx, s.policy, log, what, err, op)
}

func (s *Source) retryCallWith(ctx context.Context, p retry.Policy, log *slog.Logger, what string, err error, op func(context.Context) error) error {
	if err == nil {
		return nil
	}
	notify := func(attempt int, err error, wait time.Duration) {
		log.Warn(what+" failed; retrying", "attempt", attempt, "throttled", awserr.Classify(err) == awserr.Throttled,
			"wait", wait, "err", err)
	}
	return retry.Do(ctx, p, awserr.Mark(what, err), func() error { return awserr.Mark(what, op(ctx)) }, notify)
}

// sleepOr waits d, or until ctx is done or stop is closed.
func sleepOr(ctx context.Context, d time.Duration, stop <-chan struct{}) error {
	select {
	case <-stop:
		return errStopRequested
	default:
	}
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-stop:
		return errStopRequested
	case <-t.C:
		return nil
	}
}
