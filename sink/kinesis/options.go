package kinesissink

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/shardflow/shardflow/internal/retry"
)

// Options configure a [Sink] or a [Producer]. New and NewProducer fill in the
// defaults documented on each field, then call the optFns, then validate: a
// field set to zero means zero, not "default", except where its doc says
// otherwise (MaxAttempts and RetryTimeout).
type Options struct {
	// MaxRequestEntries is the most entries per PutRecords request.
	// Default: 500, Kinesis' limit. 1 to 500.
	MaxRequestEntries int
	// MaxRequestBytes is the most bytes per PutRecords request, data plus
	// partition keys. Default: 5 MiB, Kinesis' limit; streams allowed larger
	// requests may raise it up to 10 MiB. Must be at least MaxRecordBytes.
	MaxRequestBytes int
	// MaxRecordBytes is the most bytes of one record, data plus partition
	// key: the stream's maximum record size. Default: 1 MiB. Up to 10 MiB.
	MaxRecordBytes int
	// Linger is how long an entry may wait for more entries to fill a request
	// before the request is sent anyway. Default: 500ms (as kinesis-python).
	// 0 sends as soon as a request slot is free. Flush sends at once.
	Linger time.Duration
	// MaxInFlight is the most PutRecords requests running at a time.
	// Default: 8.
	MaxInFlight int

	// MaxBufferedRecords and MaxBufferedBytes cap the records held, from
	// acceptance until their outcome is known (waiting, in flight or being
	// retried). Write and Put block while a new record would pass either
	// cap, so memory stays bounded under any overload. Defaults: 20,000
	// records and 64 MiB. MaxBufferedBytes must be at least MaxRecordBytes.
	MaxBufferedRecords int
	MaxBufferedBytes   int

	// RetryTimeout is the outage budget, with the same name and meaning as
	// the Kinesis source's: a record failing with retryable errors
	// (throttling, internal errors, network errors, timeouts) is retried,
	// with backoff, until RetryTimeout has passed since its first failed
	// attempt; the next failure then fails it with an *ExhaustedError. The
	// shard map (ListShards, ordered and aggregating modes) is retried
	// within the same budget. Default: 5 minutes, as the source's
	// (retry.DefaultOutageBudget); 0 also means the default. Must not be
	// negative.
	RetryTimeout time.Duration
	// MaxAttempts, when positive, also caps the PutRecords calls that carry
	// one record, the first included: 1 disables retries. Default: 0, no
	// count limit (RetryTimeout bounds the retries). Must not be negative.
	MaxAttempts int
	// RecordTTL, when positive, fails a record that is still not written
	// RecordTTL after it was accepted, instead of retrying it again.
	// Default: 0, no age limit (RetryTimeout bounds the retries).
	RecordTTL time.Duration
	// InitialBackoff and MaxBackoff bound the exponential backoff (with 50%
	// jitter, doubling) between attempts. Defaults: 100ms and 5s.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// RequestTimeout bounds one PutRecords call; a call that times out is
	// retried like a network error. Default: 30s. 0 means no timeout.
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
	// partition key included. Default: 50 KiB (as the KPL's
	// AggregationMaxSize). At most MaxRecordBytes.
	AggregateMaxBytes int

	// Logger receives lifecycle (Info), retried failures (Warn) and batches
	// (Debug). Default: nil, discard. Payloads are never logged.
	Logger *slog.Logger
}

func defaultOptions() Options {
	return Options{
		MaxRequestEntries:  500,
		MaxRequestBytes:    5 << 20,
		MaxRecordBytes:     1 << 20,
		Linger:             500 * time.Millisecond,
		MaxInFlight:        8,
		MaxBufferedRecords: 20000,
		MaxBufferedBytes:   64 << 20,
		RetryTimeout:       retry.DefaultOutageBudget,
		InitialBackoff:     100 * time.Millisecond,
		MaxBackoff:         5 * time.Second,
		RequestTimeout:     30 * time.Second,
		AggregateMaxBytes:  50 << 10,
	}
}

func (o *Options) validate() error {
	bad := func(field, format string, args ...any) error {
		return &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case o.MaxRequestEntries < 1 || o.MaxRequestEntries > 500:
		return bad("MaxRequestEntries", "%d is not from 1 to 500", o.MaxRequestEntries)
	case o.MaxRecordBytes < 1 || o.MaxRecordBytes > MaxRecordBytesLimit:
		return bad("MaxRecordBytes", "%d is not from 1 to %d", o.MaxRecordBytes, MaxRecordBytesLimit)
	case o.MaxRequestBytes < o.MaxRecordBytes || o.MaxRequestBytes > MaxRecordBytesLimit:
		return bad("MaxRequestBytes", "%d is not from MaxRecordBytes (%d) to %d", o.MaxRequestBytes, o.MaxRecordBytes, MaxRecordBytesLimit)
	case o.Linger < 0:
		return bad("Linger", "%v is negative", o.Linger)
	case o.MaxInFlight < 1:
		return bad("MaxInFlight", "%d is less than 1", o.MaxInFlight)
	case o.MaxBufferedRecords < 1:
		return bad("MaxBufferedRecords", "%d is less than 1", o.MaxBufferedRecords)
	case o.MaxBufferedBytes < o.MaxRecordBytes:
		return bad("MaxBufferedBytes", "%d is less than MaxRecordBytes (%d)", o.MaxBufferedBytes, o.MaxRecordBytes)
	case o.MaxAttempts < 0:
		return bad("MaxAttempts", "%d is negative", o.MaxAttempts)
	case o.RetryTimeout < 0:
		return bad("RetryTimeout", "%v is negative", o.RetryTimeout)
	case o.RecordTTL < 0:
		return bad("RecordTTL", "%v is negative", o.RecordTTL)
	case o.InitialBackoff <= 0:
		return bad("InitialBackoff", "%v is not positive", o.InitialBackoff)
	case o.MaxBackoff < o.InitialBackoff:
		return bad("MaxBackoff", "%v is less than InitialBackoff (%v)", o.MaxBackoff, o.InitialBackoff)
	case o.RequestTimeout < 0:
		return bad("RequestTimeout", "%v is negative", o.RequestTimeout)
	case o.Aggregate && (o.AggregateMaxBytes < 1 || o.AggregateMaxBytes > o.MaxRecordBytes):
		return bad("AggregateMaxBytes", "%d is not from 1 to MaxRecordBytes (%d)", o.AggregateMaxBytes, o.MaxRecordBytes)
	}
	if o.RetryTimeout == 0 {
		o.RetryTimeout = retry.DefaultOutageBudget
	}
	return nil
}
