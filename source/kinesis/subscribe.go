package kinesissource

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/schemas"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/smithy-go/transport/http/protocol/awsjson"

	"github.com/shardflow/shardflow/internal/awserr"
	"github.com/shardflow/shardflow/internal/retry"
)

// minSubscribeSpacing is how long Kinesis wants between two subscriptions
// of a consumer to a shard: a second one sooner fails with
// ResourceInUseException.
const minSubscribeSpacing = 5 * time.Second

// fanOutFetcher reads a shard by enhanced fan-out: one SubscribeToShard
// subscription at a time, renewed when Kinesis ends it (every 5 minutes)
// from the last event's ContinuationSequenceNumber.
//
// It reads the subscription's events one at a time, and reads the next only
// once the reader handed the records of the last to the pipeline: a slow
// pipeline leaves the events in the SDK's stream (at most one decoded event
// waits there) and Kinesis holds back the rest, as HTTP/2 flow control
// does, so nothing is buffered without bound.
type fanOutFetcher struct {
	r   *reader
	run *fanOutRun

	pos    types.StartingPosition               // where the next subscription starts
	es     *kinesis.SubscribeToShardEventStream // the open subscription; nil: none
	cancel context.CancelFunc                   // ends es's request

	subscribed   time.Time // when the last subscription succeeded; zero: none yet
	failingSince time.Time // when reading began to fail, since the last event; zero: it reads
	lastErr      error     // the last failure, since the last event
}

func (f *fanOutFetcher) open(ctx context.Context) error {
	p := f.r.startAt()
	f.pos = types.StartingPosition{Type: p.typ}
	switch p.typ {
	case types.ShardIteratorTypeAtTimestamp:
		f.pos.Timestamp = aws.Time(p.at)
	case types.ShardIteratorTypeAtSequenceNumber, types.ShardIteratorTypeAfterSequenceNumber:
		f.pos.SequenceNumber = aws.String(p.seq)
	}
	err := f.connect(ctx)
	if p.fromCheckpoint && isInvalidArgument(err) {
		if err := f.r.checkpointRefused(err); err != nil {
			return err
		}
		f.pos = types.StartingPosition{Type: types.ShardIteratorTypeTrimHorizon}
		err = f.connect(ctx)
	}
	return err
}

func (f *fanOutFetcher) close() {
	if f.es != nil {
		_ = f.es.Close() // its error was read, or does not matter now
		f.cancel()
		f.es, f.cancel = nil, nil
	}
}

func (f *fanOutFetcher) next(ctx context.Context) (batch, error) {
	r := f.r
	for {
		if f.es == nil {
			if err := f.connect(ctx); err != nil {
				return batch{}, err
			}
		}
		wait := time.Now()
		select {
		case <-ctx.Done():
			return batch{}, ctx.Err()
		case <-r.stop:
			return batch{}, errStopRequested
		case ev, ok := <-f.es.Events():
			if !ok {
				err := f.es.Err()
				f.close()
				switch {
				case ctx.Err() != nil:
					return batch{}, ctx.Err()
				case err == nil:
					// Kinesis ended the subscription (after 5 minutes):
					// renew it where the last event left off.
					r.log.Debug("subscription ended; renewing it", "from", f.pos.Type, "sequence_number", aws.ToString(f.pos.SequenceNumber))
					continue
				}
				r.report(ctx, GetRecordsEvent{Stream: r.st.name, ShardID: r.shardID, Err: err, Duration: time.Since(wait),
					Throttled: awserr.Classify(err) == awserr.Throttled})
				r.log.Warn("subscription failed; subscribing again", "err", err)
				f.failed(err)
				continue
			}
			e, ok := ev.(*types.SubscribeToShardEventStreamMemberSubscribeToShardEvent)
			if !ok {
				r.log.Debug("unknown subscription event ignored", "type", fmt.Sprintf("%T", ev))
				continue
			}
			f.failingSince, f.lastErr = time.Time{}, nil
			return f.batch(&e.Value, time.Since(wait)), nil
		}
	}
}

// failed notes a failure of the subscription, which starts the outage
// budget unless a failure since the last event already did.
func (f *fanOutFetcher) failed(err error) {
	if f.failingSince.IsZero() {
		f.failingSince = time.Now()
	}
	f.lastErr = err
}

// batch turns an event into a batch, and moves the start of the next
// subscription past it.
func (f *fanOutFetcher) batch(ev *types.SubscribeToShardEvent, took time.Duration) batch {
	b := batch{records: ev.Records, millisBehind: aws.ToInt64(ev.MillisBehindLatest), took: took}
	// A renewed subscription starts after the last continuation, which
	// Kinesis gives as the last record's sequence number; should it ever
	// repeat a record read already, drop it: no repeat, whatever the
	// continuation's meaning.
	if last := f.r.lastSeq; last != "" {
		for len(b.records) > 0 && !seqAfter(aws.ToString(b.records[0].SequenceNumber), last) {
			b.records = b.records[1:]
		}
	}
	if ev.ContinuationSequenceNumber == nil || len(ev.ChildShards) > 0 {
		// The last event of a closed shard.
		b.ended, b.children = true, ev.ChildShards
		return b
	}
	f.pos = types.StartingPosition{Type: types.ShardIteratorTypeAfterSequenceNumber, SequenceNumber: ev.ContinuationSequenceNumber}
	return b
}

// connect opens a subscription at f.pos, retrying under the source's Retry
// policy, whose outage budget counts from the first failure since the
// last event received.
func (f *fanOutFetcher) connect(ctx context.Context) error {
	r := f.r
	p := r.src.policy
	if !f.failingSince.IsZero() && p.MaxElapsed > 0 && time.Since(f.failingSince) >= p.MaxElapsed {
		// Subscriptions open but keep failing before their first event.
		return fmt.Errorf("%w (%v): %w", retry.ErrOutOfTime, p.MaxElapsed, f.lastErr)
	}
	if !f.subscribed.IsZero() {
		// Kinesis refuses a subscription within 5s of the last one.
		if err := r.sleep(ctx, minSubscribeSpacing-time.Since(f.subscribed)); err != nil {
			return err
		}
	}
	err := f.subscribe(ctx, ctx)
	if err == nil || ctx.Err() != nil {
		return err
	}
	f.failed(err)
	err = r.retryWithin(ctx, "subscribe to shard", err, f.failingSince, func(callCtx context.Context) error {
		err := f.subscribe(ctx, callCtx)
		if err != nil {
			f.lastErr = err
		}
		return err
	})
	if isNotFound(err) {
		// A consumer deregistered while the source reads through it.
		if gone, gerr := f.run.consumerGone(ctx); gerr == nil && gone {
			return &ConsumerDeletedError{Stream: r.st.name, ConsumerARN: f.run.arn, Err: err}
		}
	}
	return err
}

// subscribe makes one SubscribeToShard call at f.pos. The subscription
// lives in ctx (the reader's); callCtx bounds the call alone: when it ends
// during the call, the call is cut short.
func (f *fanOutFetcher) subscribe(ctx, callCtx context.Context) error {
	r := f.r
	sctx, cancel := context.WithCancel(ctx)
	detach := context.AfterFunc(callCtx, cancel)
	r.met.m.subscriptions.Add(ctx, 1, r.met.add...)
	start := time.Now()
	out, err := f.run.client.SubscribeToShard(sctx, &kinesis.SubscribeToShardInput{
		ConsumerARN: aws.String(f.run.arn), ShardId: aws.String(r.shardID), StartingPosition: &f.pos,
	}, ownProtocol)
	if !detach() && err == nil {
		_ = out.GetStream().Close()
		err = context.Cause(callCtx)
	}
	if err != nil {
		cancel()
		r.report(callCtx, GetRecordsEvent{Stream: r.st.name, ShardID: r.shardID, Err: err, Duration: time.Since(start),
			Throttled: awserr.Classify(err) == awserr.Throttled})
		return err
	}
	f.es, f.cancel, f.subscribed = out.GetStream(), cancel, time.Now()
	r.log.Debug("subscribed to shard", "from", f.pos.Type, "sequence_number", aws.ToString(f.pos.SequenceNumber))
	return nil
}

// ownProtocol gives a SubscribeToShard call a protocol of its own. The AWS
// SDK's event stream codec keeps decoding state in the protocol, which a
// client shares between its calls, so subscriptions open at once on one
// client race on it (aws/smithy-go#714; go test -race reports it).
func ownProtocol(o *kinesis.Options) { o.Protocol = awsjson.New11(schemas.Kinesis_20131202) }

// seqAfter reports whether sequence number a comes after b. Sequence
// numbers are decimals of up to 129 digits with no leading zero: compared
// by length, then digit by digit.
func seqAfter(a, b string) bool {
	if len(a) != len(b) {
		return len(a) > len(b)
	}
	return a > b
}
