// Package kinesissink writes to AWS Kinesis Data Streams with PutRecords and
// accounts for every record: a pipeline [Sink] that acknowledges an entry
// only once Kinesis wrote that very entry, and a standalone [Producer] for
// code that is not a pipeline.
//
// Import it as kinesissink (its directory is sink/kinesis), which leaves the
// name kinesis to the SDK's package:
//
//	import (
//		"github.com/aws/aws-sdk-go-v2/config"
//		kinesissink "github.com/shardflow/shardflow/sink/kinesis"
//	)
//
//	cfg, err := config.LoadDefaultConfig(ctx)
//	...
//	sink, err := kinesissink.NewFromConfig(cfg, "large-orders")
//	...
//	defer sink.Close(context.WithoutCancel(ctx))
//	err = shardflow.Source(src).Map(decodeOrder).Map(toEntry).Sink(sink).Run(ctx)
//
// [NewFromConfig] and [NewProducerFromConfig] build the Kinesis client from
// an aws.Config, with the SDK's own retries off (the sink retries itself);
// [New] and [NewProducer] take a client, or anything with its methods
// ([API]), such as the in-memory fake of package shardflowtest/kinesisfake.
//
// # Options
//
// The zero value of every [Options] field means its documented default, so
// no option needs setting; "none" is spelled with a negative value
// (Linger: -1 sends without lingering, RequestTimeout: -1 sets no timeout).
// Options.Retry is the [shardflow.RetryPolicy] of the sink's AWS calls, as
// for the Kinesis source and the stores. A Sink given no Options.Logger logs
// through the pipeline's logger, else slog.Default(); given no
// Options.MeterProvider, it records its metrics (see Metrics) through the
// pipeline's provider, else the global one.
//
// # What it does with each record
//
//   - Validation first: non-empty data, a partition key of 1 to 256
//     characters, an explicit hash key that is a decimal from 0 to 2^128-1,
//     and data plus key within Options.MaxRecordBytes. An invalid entry gets
//     a *ValidationError before anything is sent (in a pipeline: permanent,
//     so the failure policy handles it at once); it is never silently
//     dropped, and never fails the other entries.
//   - Batching: a request is sent when it holds 500 entries, or 5 MiB
//     (partition keys counted), or Options.Linger (500 ms) after its first
//     entry, or on Flush; at most Options.MaxInFlight (8) requests run at
//     once.
//   - Results: an entry PutRecords reports written is acknowledged. Entries
//     failed with ProvisionedThroughputExceededException or InternalFailure,
//     and whole requests failed with throttling, server or network errors,
//     are retried (only those entries) with exponential backoff and jitter
//     (Options.Retry: 100 ms doubling to 5 s) until Options.Retry.Timeout,
//     the outage budget (5 minutes, as the Kinesis source's), has passed
//     since the entry's first failed attempt; Options.Retry.MaxAttempts and
//     Options.RecordTTL are optional extra limits.
//     Non-retryable errors (InvalidArgument, ValidationException,
//     ResourceNotFound, AccessDenied, KMS errors other than throttling) fail
//     their entries at once, and so do refused or missing credentials, with
//     an error wrapping shardflow.ErrCredentials. A failed entry gets a
//     *PutError with Kinesis' per-entry code and message; an entry
//     whose retries ran out wraps ErrAttemptsExhausted, with an
//     *ExhaustedError naming the limit, and one failed by Close wraps
//     ErrClosed.
//   - Backpressure: Options.MaxBufferedRecords and MaxBufferedBytes cap what
//     is held from acceptance to outcome; Write and Put block (until their
//     context ends) while full, so memory stays bounded under any overload.
//
// # Delivery
//
// At-least-once. A record is acknowledged only after PutRecords reported it
// written, but a request that timed out may have been written all the same,
// and is sent again: readers see duplicates then, as with any Kinesis
// producer. Without Options.Ordered, PutRecords and retries do not keep
// order between entries. With Options.Ordered, the order of the entries of
// each partition key is kept, even across retries: at most one request per
// shard is in flight (the shard predicted from the MD5 of the partition key
// and the ranges ListShards returns, refreshed when a record lands
// elsewhere), a failed entry is re-sent before any newer entry of its shard,
// and a request carries at most one entry per partition key.
//
// # KPL aggregation
//
// With Options.Aggregate, small entries bound for the same predicted shard
// are packed into KPL aggregated records (magic, protobuf, MD5), which the
// KCL and shardflow's Kinesis source de-aggregate. An aggregate never
// exceeds Options.AggregateMaxBytes: it is sized as its records are queued
// with a bound that is exact when no partition key repeats but in a row
// (distinct keys, or one hot key), and encoded, a little smaller otherwise
// (keys shared in its key table), by the request goroutine that sends it.
// An entry whose data
// begins with the KPL magic is always sent inside an aggregate, so that
// de-aggregating readers get back the bytes put, not what they would take
// for inner records.
//
// Should an aggregate land on another shard than predicted (the stream was
// resharded), the shard map is reloaded. If every member's hash key lies in
// the range of the shard it landed on, the aggregate is written. Otherwise a
// KCL reader drops it whole, so, as the KPL does, every member is sent again,
// re-aggregated by its new shard ahead of newer records of that shard (per
// key order kept in ordered mode), and each reports the outcome of that
// re-send, once. A reader that does not filter by hash range reads those
// members twice.
//
// # CPU and memory per record
//
// The ordered and aggregating modes route every record to its predicted
// shard, which takes the MD5 of its partition key (an explicit hash key is
// parsed instead); the plain mode routes nothing and hashes nothing. A
// sink remembers the MD5 of up to 8,192 recent partition keys (one slot
// per key, found by a cheap hash; a key in use takes its slot from
// another only once in 64 misses), so that keys put again and again (a
// customer, a device) are hashed once: a repeated key costs about a
// seventh of an MD5. The cache watches a sixteenth of its lookups and,
// while fewer than an eighth of them hit (keys that do not repeat, random
// keys), looks up only one key in 16, so such keys pay almost nothing for
// it. Its memory is 128 KiB of slots and, per remembered key, 32 bytes and
// a copy of the key: at most about 2.5 MiB, with keys of 256 characters.
//
// Accepted records are allocated 64 at a time. A request goroutine encodes
// its aggregates with no map of keys, and, when the client is a
// *kinesis.Client, into the buffers of its earlier aggregates whose request
// returned (the SDK has copied their data into the request body by then),
// keeping at most 16 of them; another implementation of [API] may keep the
// data it is given, so it always gets new buffers.
//
// # Rate limit
//
// With Options.Aggregate or Options.Ordered, the sink holds each predicted
// shard to Options.RateLimit, a share of the shard's write limit (default
// 1: 100 %), as the KPL's RateLimit does: per shard, a token bucket of
// 1,000 records/s and one of 1 MiB/s (data plus partition key; an
// aggregate counts as one record of its full size), at that share, each
// holding 0.9 s of it. Records beyond a shard's budget wait in its queue
// and go as soon as the budget allows; the records of other shards are not
// held back by them. Nothing is dropped: once Options.MaxBufferedRecords or
// MaxBufferedBytes is reached, Write and Put block, so a producer faster
// than its stream slows down to the stream's pace instead of being
// throttled, and a Flush or Close waits as long as the budget needs (Close
// gives up on what is left when its context ends, as ever). Records held
// back are counted by the metric shardflow.sink.rate_limited.
//
// The default is the whole limit and no more, where the KPL's is 150 %: a
// throttled entry is retried here after a backoff from 100 ms, and with
// Options.Ordered its shard sends nothing else meanwhile, so asking a shard
// for more than it takes slows it down. On kinesisfake with AWS' limits, a
// producer writing as fast as it can fills every shard to 97-100 % of the
// binding limit with no entry throttled (the package's tests); at 150 %,
// about a third of its entries are throttled (and the aggregating producer
// wrote 76 % of the limit in that test), at 120 % a sixth, and without a
// rate limit 31-67 %. The budget is the
// sink's own: several producers writing to one shard share its limit, and
// Kinesis throttles what they send together beyond it, which the sink
// retries.
//
// Retries and ordering: an entry sent again (throttled, a failed call, a
// misrouted aggregate) is not held back again, but charged to its shard's
// budget, so newer records of the shard wait for it; in ordered mode a
// shard's retried entries still go before any newer one. Buckets are per
// shard ID: after a split or merge (a new shard map), the buckets of closed
// shards are dropped and each child starts with its own full budget, as
// Kinesis gives it. Records predicted in a gap of the shard map (while the
// stream reshards) are not held back. Without Aggregate and Ordered the
// sink predicts no shard (it calls no ListShards), so there is no rate
// limit, and RateLimit must be 0 or negative.
//
// # Dead letters
//
// [DeadLetterTo] turns a Sink into a pipeline's dead-letter destination:
// each value a stage fails is written as one JSON [DeadLetterRecord] with
// its provenance (stream, shard, sequence and sub-sequence number, stage,
// attempts, first and last error, arrival time) and the value, and the
// failed record counts as done once that document is written:
//
//	dlq, err := kinesissink.NewFromConfig(cfg, "orders-dlq")
//	...
//	records.DeadLetter(kinesissink.DeadLetterTo[shardflow.Record](dlq, nil)).Map(decode)
//
// # Retries and the SDK's retryer
//
// The sink retries PutRecords itself, per entry. NewFromConfig and
// NewProducerFromConfig turn the client's retries off. A client given to New
// or NewProducer should not retry on top against the SDK's shared retry
// quota ("retry quota exceeded" under throttling, aws-sdk-go-v2#1665): use
// aws.NopRetryer{}, or retry.NewStandard with RateLimiter: ratelimit.None.
//
// # Metrics
//
// The sink records these instruments through the OpenTelemetry metric API,
// from Options.MeterProvider (default: the pipeline's provider for a Sink in
// a pipeline, else the global one, a no-op unless the application installs
// one). Every one carries the attribute stream, the destination stream as
// given to New; some also error_code, Kinesis' or AWS' error code ("other"
// when there is none: a network error, or the sink was closed). They never
// carry record data or partition keys. They are recorded per PutRecords
// call and per batch of outcomes, never per record; the Prometheus exporter
// writes the dots as underscores and adds _total or unit suffixes.
//
//   - shardflow.sink.records ({record}): records written and acknowledged.
//   - shardflow.sink.bytes (By): their data plus partition key bytes, what
//     Kinesis counts against a shard's limits.
//   - shardflow.sink.records.given_up ({record}; stream, error_code):
//     records accepted by Write, Put or PutEntry but never written: refused with a
//     non-retryable code, out of retries (the code of the last failure),
//     or failed by Close. Entries refused by validation are not counted:
//     Write and Put return their error at once.
//   - shardflow.sink.failed_entries ({record}; stream, error_code): entries
//     a PutRecords answer refused, retried or not
//     (ProvisionedThroughputExceededException, InternalFailure, ...).
//   - shardflow.sink.retries ({retry}): entries sent again after a refusal
//     or a failed call; an aggregate that landed on a shard not holding all
//     its records, whose records are sent again, counts once.
//   - shardflow.sink.putrecords.errors ({call}; stream, error_code): calls
//     that failed as a whole: throttled, 5xx, reset, timed out, refused.
//     A call cut short because Close gave up is not counted.
//   - shardflow.sink.putrecords.duration (s): histogram of the latency of
//     PutRecords calls, failed ones included (buckets from 5 ms to 30 s).
//   - shardflow.sink.putrecords.entries ({record}): histogram of the entries
//     per call (buckets up to 499, and 500: full requests).
//   - shardflow.sink.rate_limited ({record}): records that waited for
//     their shard's budget (Options.RateLimit) before they were sent.
//   - shardflow.sink.buffered.records ({record}) and
//     shardflow.sink.buffered.bytes (By): records held from acceptance until
//     their outcome is known, and their bytes, against
//     Options.MaxBufferedRecords and MaxBufferedBytes. They are observed
//     when the provider collects, summed over the sinks and producers of a
//     stream (asynchronous up-down counters, gauges in Prometheus), and
//     stop being reported once Close returns.
//
// With Options.Aggregate, records, bytes and given_up count the records put
// (bytes: theirs, not the aggregates'), while failed_entries, retries and
// the putrecords instruments count Kinesis entries, where an aggregate is
// one: the putrecords.entries sum is then below the records written.
//
// # Goroutines and shutdown
//
// New and NewProducer start nothing. A request goroutine starts when a
// request is due and a slot is free, and ends when no request is left (it
// also encodes the request's KPL aggregates, off the writer's goroutine);
// the linger and the rate limit's waits are one timer. So a pipeline whose Run returned (it flushes the sink
// and waits for every acknowledgement) leaves no goroutine behind. Close
// stops a Sink or Producer for good, bounded by its context; Flush and Close
// are idempotent and safe to call concurrently.
package kinesissink
