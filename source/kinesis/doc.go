// Package kinesissource reads a Kinesis data stream, or several, into a
// shardflow pipeline: one goroutine per shard, resuming exactly where each shard's
// checkpoint says, surviving throttling, expired iterators and resharding,
// and de-aggregating KPL records.
//
// The easy way to build one is from an aws.Config:
//
//	cfg, err := config.LoadDefaultConfig(ctx)
//	if err != nil { ... }
//	src, err := kinesissource.NewFromConfig(cfg, "orders", func(o *kinesissource.Options) {
//		o.Store = store                          // memory.New(), or the DynamoDB store
//		o.InitialPosition = kinesissource.TrimHorizon()
//	})
//	if err != nil { ... }
//	err = shardflow.Source(src).Map(decode).Sink(sink).Run(ctx)
//
// NewFromConfig makes the Kinesis client with the SDK's own retries off, as
// the source retries per shard; New takes a client you built, or the test
// kit's in-memory fake. The zero value of every Options field means its
// documented default; a bad value makes New return a *shardflow.ConfigError
// naming the field. A nil Options.Logger logs through the pipeline's
// logger (shardflow.Options.Logger), and the source hands that logger on to
// its store, so a pipeline's logger is set once.
//
// The package is named kinesissource, not kinesis like the AWS SDK's
// package, so the two import side by side; the sink is kinesissink. Its
// directory is source/kinesis, so goimports writes the import with the alias
// kinesissource, the name every shardflow document uses.
//
// # Delivery
//
// Records reach the pipeline at least once, in order per shard. Each shard
// resumes after its checkpoint (inside a KPL aggregate, at the next user
// record of it). At a shard's end (after a split or merge) the source waits
// until every record of the shard is done, saves SHARD_END, and only then
// starts its children; a child of a merge starts only after both parents
// ended. So per partition key order holds across resharding.
//
// A KPL aggregate may hold user records whose hash key lies outside the
// range of the shard it was read from: the KPL writes such aggregates when
// its map of shards is stale, and sends their records again to the right
// shards; some other producers pack records of many shards into one
// aggregate. The KCL drops such an aggregate whole. The source delivers
// every user record of it (at worst a duplicate), counts it in
// GetRecordsEvent.MisroutedAggregates and logs a warning, at most once a
// minute per shard; Options.DropMisroutedAggregates applies the KCL's rule
// instead, and the checkpoint still moves past what it drops.
//
// # Reading
//
// Each shard is polled with GetRecords back to back while it is behind the
// tip, and every IdleInterval at the tip, never more than 5 calls per second
// (the Kinesis limit per shard). Throttling and transient errors are retried
// per shard under Options.Retry, with exponential backoff and jitter (100ms
// doubling to 5s), for at most the outage budget (Retry.Timeout, 5 minutes,
// the same as the Kinesis sink's and the stores') from the first failure
// of a run without a success. The last try comes when the budget ends; if
// it fails too, Run stops with that error. Give a client passed to New a
// retryer that does not retry on its own (aws.NopRetryer), or many shards
// retrying through the SDK's shared retry quota exhaust it. Refused or
// missing credentials, and bad requests (a missing stream, denied access),
// are not retried: Run stops at once, for credentials with an error
// wrapping shardflow.ErrCredentials. An expired iterator is replaced by a
// new one from the last record read.
//
// # Enhanced fan-out
//
// With Options.EnhancedFanOut the source reads every shard it holds through
// a SubscribeToShard subscription of a registered consumer instead of
// polling it: Kinesis pushes the records, with 2 MiB/s per shard for this
// consumer alone (pollers share 2 MiB/s and 5 calls per second per shard)
// and about 70ms from put to delivery. Run registers the consumer when it
// is named and missing (or uses a given ARN) and waits until it is ACTIVE;
// then each shard starts where polling would (after the checkpoint, at it
// inside a KPL aggregate, or at the initial position), renews its
// subscription from the last event's ContinuationSequenceNumber when
// Kinesis ends it, every 5 minutes, with nothing skipped or repeated, and
// ends at the event that lists the shard's children. Only the way records
// arrive differs: checkpoints, leases, hand-overs, resharding,
// de-aggregation, heartbeats and metrics are the same as polling's.
// Failed subscriptions (ResourceInUseException, throttling, server and
// network errors) are retried under Options.Retry, its outage budget
// counted from the first failure since the last event; a deregistered
// consumer stops Run with a *ConsumerDeletedError, a stream with 20
// consumers with a *ConsumerLimitError. A slow pipeline makes the source
// stop reading its subscriptions, never buffer them. The client must
// implement FanOutAPI, as a *kinesis.Client does.
//
// # Several streams
//
// NewStreams makes one source of several streams, at most MaxStreams:
//
//	src, err := kinesissource.NewStreams(client, []kinesissource.Stream{
//		{Name: "orders", InitialPosition: kinesissource.TrimHorizon()},
//		{Name: "payments"}, // starts at Options.InitialPosition
//	}, func(o *kinesissource.Options) { o.Store = store })
//
// Each stream is read as New reads one: its own ListShards rounds (every
// DiscoveryInterval, well within Kinesis' ListShards rate per stream), its
// own resharding, its own start position (Stream.InitialPosition, else
// Options.InitialPosition) and read mode (Stream.EnhancedFanOut, else
// Options.EnhancedFanOut, else polling; a ConsumerName is registered on
// each stream that uses it, while a ConsumerARN belongs to one stream, so
// Options.EnhancedFanOut.ConsumerARN is refused with several streams).
// The other options apply to every stream alike. The calls Kinesis limits
// per account rather than per stream, which enhanced fan-out makes for each
// stream when Run starts (DescribeStreamSummary, 20 a second, and
// RegisterStreamConsumer, 5 a second), are spaced between the streams to
// stay within those limits. Everything else is
// shared: one pipeline, whose lanes are per (stream, shard); one checkpoint
// store; and with a leasing store one lease table and one group of
// instances, which the source asks for leases stream by stream
// (SyncLeases with each stream's shards), so that the store divides every
// stream's shards between the instances.
//
// Each record carries its stream's name in shardflow.Record.Stream, and
// checkpoints, leases, metrics (attribute stream), logs (stream),
// stall reports and Ready all name the stream as well as the shard. Two
// streams of one source may not share a name, not even in two accounts:
// checkpoints and leases are kept by name. A stream that does not exist
// stops Run with Kinesis' ResourceNotFoundException, wrapped in an error
// naming the stream; any error of one stream stops the reading of all.
//
// # Leases and shutdown
//
// With a store that is a shardflow.Leaser (the DynamoDB store), the source
// reads only the shards this instance holds. When it stops holding one, and
// when the pipeline stops, a shard's reader hands the shard over: it waits
// for the shard's records in flight, at most Options.HandoffTimeout, saves
// the final checkpoint and releases the lease, so that another instance
// takes over at once. Nothing renews the leases once the pipeline stops,
// so HandoffTimeout must be below the store's LeaseDuration (by default it
// is half of it); and on shutdown the hand-over also ends with the
// pipeline's DrainTimeout.
//
// A store that balances leases by load (a shardflow.LoadRecorder, like the
// DynamoDB store) is told, after every successful read of a shard (a
// GetRecords call, or an enhanced fan-out event), the Kinesis records it
// returned, before KPL de-aggregation, and their bytes. A store that keeps
// a record of live instances (a shardflow.LeaseLeaver) is told once, when
// Run returns, after every lease was released, that this instance leaves,
// so that the other instances take over its share at once rather than
// after LeaseDuration; a failure to leave is logged, not returned.
//
// # Metrics, stalls and readiness
//
// The source records its metrics through the OpenTelemetry metric API:
// with Options.MeterProvider, else the pipeline's provider
// (shardflow.Options.MeterProvider, handed on to the store too), else the
// global provider. Counts are recorded once per GetRecords call (or
// event), never per record:
//
//	shardflow.source.records               counter  {record}  user records handed to the pipeline (after KPL de-aggregation)
//	shardflow.source.bytes                 counter  By        data bytes of the Kinesis records read (before de-aggregation)
//	shardflow.source.getrecords.calls      counter  {call}    GetRecords calls, failed ones included
//	shardflow.source.getrecords.throttles  counter  {call}    calls refused for rate (ProvisionedThroughputExceeded, LimitExceeded)
//	shardflow.source.getrecords.errors     counter  {call}    other failed calls, by error_code (not those cut short by shutdown)
//	shardflow.source.behind_latest         gauge    ms        MillisBehindLatest: how far the shard's reader is behind the tip, as of its last call or event
//	shardflow.source.shards.held           gauge    {shard}   shards the source reads now
//
// With enhanced fan-out, events take the place of GetRecords calls (which
// are then not made), counted by these instead; records, bytes,
// behind_latest and shards.held are the same:
//
//	shardflow.source.subscribe.subscriptions  counter  {subscription}  SubscribeToShard calls, failed ones included (one per shard every 5 minutes when all is well)
//	shardflow.source.subscribe.events         counter  {event}         events received, records or not (Kinesis sends one at least every 5 s)
//	shardflow.source.subscribe.throttles      counter  {subscription}  calls and subscriptions refused or ended for rate
//	shardflow.source.subscribe.errors         counter  {subscription}  other failed calls and subscriptions, by error_code (ResourceInUseException after a hand-over is normal)
//
// Each has the attributes stream and shard, except shards.held (stream
// only); errors add error_code, the AWS error code. Record data and keys
// are never attributes.
//
// The gauges report the shards read now only. A store that leases shards
// records the shardflow.lease.* metrics (see package checkpoint/dynamodb).
//
// Each shard's reader calls shardflow.Lane.Heartbeat once it has its first
// iterator (or subscription) and after every successful GetRecords call
// (or event), records or not, so
// the pipeline's stall watchdog (shardflow.Options.StallTimeout) reports a
// shard whose reader gets no answer, at stage "source". [Source.Ready]
// tells a readiness probe whether the source runs, has listed its shards,
// keeps its leases and reads every shard it holds.
package kinesissource
