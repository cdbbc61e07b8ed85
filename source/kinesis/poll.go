package kinesissource

import (
	"context"
	"errors"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"

	"github.com/shardflow/shardflow/internal/awserr"
	"github.com/shardflow/shardflow/internal/retry"
)

// minCallSpacing keeps a shard's reader under 5 GetRecords calls per second.
const minCallSpacing = 200 * time.Millisecond

// polling is the default way of reading: each reader polls its shard with
// GetRecords.
type polling struct{}

func (polling) begin(context.Context, *Source, *streamConf) (runReads, error) { return polling{}, nil }
func (polling) newFetcher(r *reader) fetcher                                  { return &pollFetcher{r: r} }
func (polling) counters(m *sourceMetrics) *readCounters                       { return &m.polls }
func (polling) end(context.Context)                                           {}

// pollFetcher reads a shard with GetRecords: back to back while behind the
// tip, every IdleInterval at the tip, at most 5 calls per second.
type pollFetcher struct {
	r        *reader
	iter     string
	lastCall time.Time // when the last GetRecords call started
	idle     bool      // the last call found the shard at its tip with nothing new
}

func (p *pollFetcher) open(ctx context.Context) error {
	var err error
	p.iter, err = p.r.firstIterator(ctx)
	return err
}

func (p *pollFetcher) close() {}

func (p *pollFetcher) next(ctx context.Context) (batch, error) {
	r := p.r
	if p.idle {
		if err := r.sleep(ctx, r.src.opts.IdleInterval); err != nil {
			return batch{}, err
		}
	}
	for {
		if !p.lastCall.IsZero() {
			if err := r.sleep(ctx, minCallSpacing-time.Since(p.lastCall)); err != nil {
				return batch{}, err
			}
		}
		out, took, err := r.getRecords(ctx, p.iter, &p.lastCall)
		if err != nil && ctx.Err() != nil {
			return batch{}, ctx.Err() // stopping cut the call short: no retry, no warning
		}
		if err != nil && !isExpired(err) {
			// Throttling and transient errors are retried per shard,
			// within the outage budget; a hand-over request ends the
			// waits.
			err = r.retry(ctx, "get records", err, func(ctx context.Context) error {
				if err := sleepOr(ctx, minCallSpacing-time.Since(p.lastCall), nil); err != nil {
					return retry.Permanent(context.Cause(ctx))
				}
				var err error
				if out, took, err = r.getRecords(ctx, p.iter, &p.lastCall); isExpired(err) {
					return retry.Permanent(err) // a new iterator is needed first
				}
				return err
			})
		}
		if isExpired(err) {
			r.log.Info("shard iterator expired; getting a new one", "sequence_number", r.lastSeq)
			if p.iter, err = r.resumeIterator(ctx); err != nil {
				return batch{}, err
			}
			continue
		}
		if err != nil {
			return batch{}, err
		}
		b := batch{records: out.Records, millisBehind: aws.ToInt64(out.MillisBehindLatest), took: took}
		if out.NextShardIterator == nil {
			b.ended, b.children = true, out.ChildShards
		} else {
			p.iter = aws.ToString(out.NextShardIterator)
		}
		p.idle = len(out.Records) == 0 && b.millisBehind == 0
		return b, nil
	}
}

// getRecords makes one GetRecords call, noting its start in *lastCall,
// and reports a failed one to the metrics and OnGetRecords (the caller
// reports a success once it counted its records).
func (r *reader) getRecords(ctx context.Context, iter string, lastCall *time.Time) (*kinesis.GetRecordsOutput, time.Duration, error) {
	s := r.src
	*lastCall = time.Now()
	out, err := s.client.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: aws.String(iter), Limit: aws.Int32(s.opts.Limit), StreamARN: r.st.arnRef()})
	took := time.Since(*lastCall)
	if err != nil {
		r.report(ctx, GetRecordsEvent{Stream: r.st.name, ShardID: r.shardID, Err: err, Duration: took,
			Throttled: awserr.Classify(err) == awserr.Throttled})
	}
	return out, took, err
}

// isExpired reports an ExpiredIteratorException: the reader gets a new
// iterator from the last record read, rather than retrying the call.
func isExpired(err error) bool {
	_, ok := errors.AsType[*types.ExpiredIteratorException](err)
	return ok
}

// firstIterator returns the iterator the reader starts with.
func (r *reader) firstIterator(ctx context.Context) (string, error) {
	p := r.startAt()
	iter, err := r.positionIterator(ctx, p)
	if p.fromCheckpoint && isInvalidArgument(err) {
		if err := r.checkpointRefused(err); err != nil {
			return "", err
		}
		return r.positionIterator(ctx, startPosition{typ: types.ShardIteratorTypeTrimHorizon})
	}
	return iter, err
}

// resumeIterator replaces an expired iterator: after the last record read,
// or from the start if none was.
func (r *reader) resumeIterator(ctx context.Context) (string, error) {
	if r.lastSeq == "" {
		return r.firstIterator(ctx)
	}
	return r.positionIterator(ctx, startPosition{typ: types.ShardIteratorTypeAfterSequenceNumber, seq: r.lastSeq})
}

func (r *reader) positionIterator(ctx context.Context, p startPosition) (string, error) {
	in := &kinesis.GetShardIteratorInput{ShardIteratorType: p.typ,
		StreamName: r.st.nameRef(), StreamARN: r.st.arnRef(), ShardId: aws.String(r.shardID)}
	switch p.typ {
	case types.ShardIteratorTypeAtTimestamp:
		in.Timestamp = aws.Time(p.at)
	case types.ShardIteratorTypeAtSequenceNumber, types.ShardIteratorTypeAfterSequenceNumber:
		in.StartingSequenceNumber = aws.String(p.seq)
	}
	var out *kinesis.GetShardIteratorOutput
	err := r.src.call(ctx, r.log, "get shard iterator", func(ctx context.Context) error {
		var err error
		out, err = r.src.client.GetShardIterator(ctx, in)
		return err
	})
	if err != nil {
		return "", err
	}
	return aws.ToString(out.ShardIterator), nil
}
