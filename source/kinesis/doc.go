// Package kinesissource reads a Kinesis data stream into a shardflow
// pipeline: one goroutine per shard, resuming exactly where each shard's
// checkpoint says, surviving throttling, expired iterators and resharding,
// and de-aggregating KPL records.
//
//	src, err := kinesissource.New(client, "orders", func(o *kinesissource.Options) {
//		o.Store = store                          // memory.New(), or the DynamoDB store
//		o.InitialPosition = kinesissource.TrimHorizon()
//	})
//	if err != nil { ... }
//	err = shardflow.Source(src).Map(decode).Sink(sink).Run(ctx)
//
// The package is named kinesissource so that it and the AWS SDK's kinesis
// package can be imported side by side without aliases; the sink is
// kinesissink.
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
// per shard with exponential backoff and jitter: give the client a retryer
// that does not retry on its own (aws.NopRetryer, or retry.NewStandard with
// ratelimit.None), or many shards retrying through the SDK's shared retry
// quota exhaust it. A shard gives up after Options.RetryTimeout (5 minutes,
// the outage budget the Kinesis sink shares) of failures without a success.
// Refused or missing credentials are not retried: Run stops with an error
// wrapping shardflow.ErrCredentials. An expired iterator is replaced by a
// new one from the last record read.
package kinesissource
