package kinesissink

import (
	"fmt"
	"log/slog"
	"math"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/retry"
)

// Options configure a [Sink] or a [Producer]. The zero value of every field
// means its documented default, so Options{} is a working configuration.
// Where "none" is a useful value (no linger, no request timeout) it is
// spelled with a negative value, as documented on the field. New and
// NewProducer run the optFns on zero Options, then fill in the defaults and
// validate, returning a *shardflow.ConfigError for an invalid field.
type Options struct {
	// MaxRequestEntries is the most entries per PutRecords request.
	// Default (0): 500, Kinesis' limit. At most 500.
	MaxRequestEntries int
	// MaxRequestBytes is the most bytes per PutRecords request, data plus
	// partition keys. Default (0): 5 MiB, Kinesis' limit; streams allowed
	// larger requests may raise it up to 10 MiB. Must be at least
	// MaxRecordBytes.
	MaxRequestBytes int
	// MaxRecordBytes is the most bytes of one record, data plus partition
	// key: the stream's maximum record size. Default (0): 1 MiB. Up to
	// 10 MiB.
	MaxRecordBytes int
	// Linger is how long an entry may wait for more entries to fill a request
	// before the request is sent anyway. Default (0): 500ms (as
	// kinesis-python). Negative: no linger, an entry is sent as soon as a
	// request slot is free. Flush sends at once whatever the linger.
	Linger time.Duration
	// MaxInFlight is the most PutRecords requests running at a time.
	// Default (0): 8.
	MaxInFlight int

	// MaxBufferedRecords and MaxBufferedBytes cap the records held, from
	// acceptance until their outcome is known (waiting, in flight or being
	// retried). Write and Put block while a new record would pass either
	// cap, so memory stays bounded under any overload. Defaults (0): 20,000
	// records and 64 MiB. MaxBufferedBytes must be at least MaxRecordBytes.
	MaxBufferedRecords int
	MaxBufferedBytes   int

	// Retry is the retry policy of the sink's AWS calls, with the same
	// meaning as the Kinesis source's and the stores' Retry. A record
	// failing with retryable errors (throttling, internal errors, network
	// errors, timeouts) is sent again, after an exponential backoff with
	// 50% jitter from InitialInterval (default 100ms), growing by Multiplier
	// (default 2) up to MaxInterval (default 5s), until Timeout, the outage
	// budget (default 5 minutes, as the source's and the stores'), has
	// passed since its first failed attempt; the next failure then fails it with an *ExhaustedError. MaxAttempts, when positive,
	// also caps the PutRecords calls that carry one record, the first
	// included (1: no retry); default (0): no count limit. The shard map
	// (ListShards, ordered and aggregating modes) is retried with the same
	// policy.
	Retry shardflow.RetryPolicy
	// RecordTTL, when positive, fails a record that is still not written
	// RecordTTL after it was accepted, instead of retrying it again.
	// Default (0): no age limit (Retry.Timeout bounds the retries). Must not
	// be negative.
	RecordTTL time.Duration
	// RequestTimeout bounds one PutRecords call; a call that times out is
	// retried like a network error. Default (0): 30s. Negative: no timeout.
	RequestTimeout time.Duration

	// Ordered keeps the order of the entries of each partition key even when
	// some entries fail and are retried: at most one request is in flight per
	// shard (predicted from the stream's shard map), a failed entry is
	// re-sent before any newer entry of its shard, and a request holds at
	// most one entry per partition key (so a failure can never let a later
	// entry of the key overtake it). Throughput per key is then one entry
	// (or one aggregate, with Aggregate) per round trip. Default: false.
	Ordered bool
	// Aggregate packs small entries bound for the same shard into KPL
	// aggregated records (the format the KCL and shardflow's source
	// de-aggregate), each at most AggregateMaxBytes. An entry too large to
	// share, or alone when its request is sent, goes as a plain record.
	// Default: false.
	Aggregate bool
	// AggregateMaxBytes is the most bytes of one aggregated record, its
	// partition key included. Default (0): 50 KiB (as the KPL's
	// AggregationMaxSize), or MaxRecordBytes if smaller. With Aggregate, at
	// most MaxRecordBytes.
	AggregateMaxBytes int

	// RateLimit holds back the entries of each predicted shard beyond this
	// share of the shard's write limit, 1,000 records/s and 1 MiB/s (data
	// plus partition key; an aggregate counts as one record of its full
	// size), as the KPL's RateLimit does, so that the stream is not asked
	// for more than it takes. Records beyond the budget wait in the sink's
	// queues (Write and Put block once MaxBufferedRecords or
	// MaxBufferedBytes is reached). 1 is 100 %. It needs the shard map, so
	// it applies with Aggregate or Ordered only.
	//
	// Default (0): 1 with Aggregate or Ordered, the whole limit and no more:
	// the KPL's default of 150 % relies on retries, which here back off
	// from 100 ms and, with Ordered, hold up the shard meanwhile, so asking
	// for more than a shard takes makes it slower, not faster. Without
	// Aggregate and Ordered: no limit (the sink then calls no ListShards).
	// Negative: no limit. Larger than 1 only when Kinesis lets the shard
	// take more than its documented limit, and at most 10 (a share, not a
	// percentage: 1.5 for the KPL's 150). Without Aggregate and Ordered it
	// must be 0 or negative.
	RateLimit float64

	// Logger receives lifecycle (Info), retried failures (Warn) and batches
	// (Debug). Default (nil): the pipeline's logger when a Sink runs in a
	// pipeline (see shardflow.PipelineLogger), else slog.Default(). Record
	// payloads are never logged.
	Logger *slog.Logger

	// MeterProvider records the metrics listed in the package doc's
	// Metrics section. Default (nil): the pipeline's provider when a Sink
	// runs in a pipeline (see shardflow.PipelineMeterProvider), else the
	// global one, otel.GetMeterProvider(), a no-op unless the application
	// installs one. A Producer uses this provider or the global one.
	// Metrics carry the stream name and AWS error codes only, never record
	// data or partition keys.
	MeterProvider metric.MeterProvider
}

// maxRateLimit is the largest Options.RateLimit: ten times a shard's
// limit. More is surely a percentage given for a share.
const maxRateLimit = 10

// settings are Options resolved: every default filled in, and "none"
// spelled as the engine uses it.
type settings struct {
	Options
	linger         time.Duration // 0: no linger
	requestTimeout time.Duration // 0: no timeout
	retry          retry.Policy
	rateLimit      float64 // 0: no limit
}

// resolve validates o and fills in its defaults.
func (o Options) resolve() (settings, error) {
	bad := func(field, format string, args ...any) error {
		return &shardflow.ConfigError{Field: "Options." + field, Reason: fmt.Sprintf(format, args...)}
	}
	if o.MaxRequestEntries == 0 {
		o.MaxRequestEntries = 500
	}
	if o.MaxRequestBytes == 0 {
		o.MaxRequestBytes = 5 << 20
	}
	if o.MaxRecordBytes == 0 {
		o.MaxRecordBytes = 1 << 20
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = 8
	}
	if o.MaxBufferedRecords == 0 {
		o.MaxBufferedRecords = 20000
	}
	if o.MaxBufferedBytes == 0 {
		o.MaxBufferedBytes = 64 << 20
	}
	if o.AggregateMaxBytes == 0 {
		o.AggregateMaxBytes = min(50<<10, o.MaxRecordBytes)
	}
	switch {
	case o.MaxRequestEntries < 1 || o.MaxRequestEntries > 500:
		return settings{}, bad("MaxRequestEntries", "%d is not from 1 to 500", o.MaxRequestEntries)
	case o.MaxRecordBytes < 1 || o.MaxRecordBytes > MaxRecordBytesLimit:
		return settings{}, bad("MaxRecordBytes", "%d is not from 1 to %d", o.MaxRecordBytes, MaxRecordBytesLimit)
	case o.MaxRequestBytes < o.MaxRecordBytes || o.MaxRequestBytes > MaxRecordBytesLimit:
		return settings{}, bad("MaxRequestBytes", "%d is not from MaxRecordBytes (%d) to %d", o.MaxRequestBytes, o.MaxRecordBytes, MaxRecordBytesLimit)
	case o.MaxInFlight < 1:
		return settings{}, bad("MaxInFlight", "%d is negative", o.MaxInFlight)
	case o.MaxBufferedRecords < 1:
		return settings{}, bad("MaxBufferedRecords", "%d is negative", o.MaxBufferedRecords)
	case o.MaxBufferedBytes < o.MaxRecordBytes:
		return settings{}, bad("MaxBufferedBytes", "%d is less than MaxRecordBytes (%d)", o.MaxBufferedBytes, o.MaxRecordBytes)
	case o.RecordTTL < 0:
		return settings{}, bad("RecordTTL", "%v is negative", o.RecordTTL)
	case o.Aggregate && (o.AggregateMaxBytes < 1 || o.AggregateMaxBytes > o.MaxRecordBytes):
		return settings{}, bad("AggregateMaxBytes", "%d is not from 1 to MaxRecordBytes (%d)", o.AggregateMaxBytes, o.MaxRecordBytes)
	case math.IsNaN(o.RateLimit) || math.IsInf(o.RateLimit, 0) || o.RateLimit > maxRateLimit:
		return settings{}, bad("RateLimit", "%v is not a share from 0 to %v of a shard's write limit (1 is 100 %%; negative: no limit)", o.RateLimit, maxRateLimit)
	case o.RateLimit > 0 && !o.Aggregate && !o.Ordered:
		return settings{}, bad("RateLimit", "%v needs Aggregate or Ordered: the limit is per predicted shard, and only they predict shards", o.RateLimit)
	}
	if err := o.Retry.Validate("Options.Retry"); err != nil {
		return settings{}, err
	}
	s := settings{Options: o}
	switch {
	case o.Linger == 0:
		s.linger = 500 * time.Millisecond
	case o.Linger > 0:
		s.linger = o.Linger
	}
	switch {
	case o.RequestTimeout == 0:
		s.requestTimeout = 30 * time.Second
	case o.RequestTimeout > 0:
		s.requestTimeout = o.RequestTimeout
	}
	switch {
	case o.RateLimit > 0:
		s.rateLimit = o.RateLimit
	case o.RateLimit == 0 && (o.Aggregate || o.Ordered):
		s.rateLimit = 1
	}
	p := o.Retry
	s.retry = retry.ForAWS(p.MaxAttempts, p.InitialInterval, p.MaxInterval, p.Multiplier, p.Timeout)
	return s, nil
}
