package kinesissink

import (
	"context"
	"errors"
	"log/slog"

	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/retry"
)

// Sink writes a pipeline's entries to a Kinesis stream with PutRecords. It
// acknowledges each entry only once PutRecords reported that very entry
// written, so a shard's checkpoint never passes a record that is not durable
// downstream; an entry it gives up on fails its record with a *PutError,
// which the sink stage's failure policy handles.
//
// A Sink is safe for concurrent use: the pipeline calls Write from one
// goroutine per shard, and Flush at the end.
//
// Lifecycle: New starts nothing. Request goroutines start when there is a
// request to send, at most Options.MaxInFlight, and stop when there is none;
// the linger is a timer. When a pipeline's Run returns, the sink has no
// goroutine left. Close is optional for a pipeline that ran to its end; call
// it to stop a sink for good (later writes fail with ErrClosed) or to bound
// how long unfinished records may take.
type Sink struct {
	e *engine
}

var (
	_ shardflow.Sink[Entry]           = (*Sink)(nil)
	_ shardflow.PipelineLogger        = (*Sink)(nil)
	_ shardflow.PipelineMeterProvider = (*Sink)(nil)
)

// New returns a sink writing to stream (a name, or an ARN) through client, a
// *kinesis.Client or anything with the same methods (see [API]). It returns a
// *shardflow.ConfigError for invalid options. It makes no call and starts no
// goroutine. [NewFromConfig] is the easy way: it builds the client from an
// aws.Config, with the retryer the sink needs.
//
// Retries of PutRecords are the sink's own (see Options.Retry). Give
// the client a retryer that does not also retry PutRecords against the SDK's
// shared retry quota, which many throttled shards exhaust
// (aws-sdk-go-v2#1665), for example:
//
//	kinesis.NewFromConfig(cfg, func(o *kinesis.Options) { o.Retryer = aws.NopRetryer{} })
//
// or retry.NewStandard with RateLimiter set to ratelimit.None.
func New(client API, stream string, optFns ...func(*Options)) (*Sink, error) {
	e, err := newEngine(client, stream, "kinesis.sink", optFns)
	if err != nil {
		return nil, err
	}
	return &Sink{e: e}, nil
}

// Write validates v and queues it for the next request. It blocks while the
// sink's buffer is full (Options.MaxBufferedRecords, MaxBufferedBytes), until
// ctx ends. An invalid entry is refused at once with a *ValidationError
// wrapped with shardflow.Permanent, so the stage does not retry it; after
// Close, Write returns ErrClosed, also permanent. In ordered and aggregating
// modes the first Write loads the stream's shard map (ListShards), retrying
// transient errors with Options.Retry; if that fails, Write returns
// the error, permanent (wrapping shardflow.ErrCredentials when the
// credentials were refused).
//
// When Write returns nil the sink owns v (do not modify v.Data) and calls
// ack.Done exactly once: with nil once PutRecords wrote v, or with a
// *PutError.
func (s *Sink) Write(ctx context.Context, v Entry, ack shardflow.Ack) error {
	err := s.e.accept(ctx, v, ack, nil)
	if err == nil {
		return nil
	}
	if _, ok := errors.AsType[*ValidationError](err); ok || errors.Is(err, ErrClosed) || retry.IsPermanent(err) {
		return shardflow.Permanent(err)
	}
	return err
}

// Flush sends every buffered entry now, without waiting for the linger, and
// returns once each entry written before the call has its outcome (its ack
// was called), or ctx ends. It may be called concurrently with Write and
// more than once. After Close it returns ErrClosed.
func (s *Sink) Flush(ctx context.Context) error { return s.e.flush(ctx) }

// Close stops the sink: later Writes fail with ErrClosed. It sends what is
// buffered and waits for every entry's outcome until ctx ends; the entries
// still unwritten then are failed (their acks get a *PutError wrapping
// ErrClosed) and Close returns an error saying how many. It returns once no
// goroutine of the sink is left. Close is idempotent: a second call waits for
// the first and returns its result.
func (s *Sink) Close(ctx context.Context) error { return s.e.close(ctx) }

// UsePipelineLogger makes a sink given no Options.Logger log through l, the
// pipeline's logger: [shardflow.Pipeline.Run] calls it before it starts. A
// sink given a logger of its own keeps it. It is safe to call while the
// sink runs.
func (s *Sink) UsePipelineLogger(l *slog.Logger) { s.e.usePipelineLogger(l) }

// UsePipelineMeterProvider makes a sink given no Options.MeterProvider
// record its metrics through mp, the pipeline's provider:
// [shardflow.Pipeline.Run] calls it before it starts. A sink given a
// provider of its own keeps it; a nil mp changes nothing. It is safe to call
// while the sink runs: what was recorded before stays with the former
// provider.
func (s *Sink) UsePipelineMeterProvider(mp metric.MeterProvider) { s.e.usePipelineMeterProvider(mp) }
