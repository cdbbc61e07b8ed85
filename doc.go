// Package shardflow builds typed pipelines that process sharded streams such as
// AWS Kinesis Data Streams, with plain Go functions as handlers:
//
//	err := shardflow.Source(src).   // *Stream[shardflow.Record]
//		Map(decodeOrder).           // Record -> Order
//		Filter(isLarge).            // Order  -> Order
//		Map(toEntry).               // Order  -> Entry
//		Sink(sink).
//		Run(ctx)                    // blocks; cancel ctx for a graceful drain
//
// Every handler has the shape func(context.Context, In) (Out, error); Map and
// FlatMap are generic methods (Go 1.27), so each stage may change the element
// type and nothing is erased to any between stages. [Batch] groups values
// into slices; it is a function, Batch(stream, BatchOptions[T]{...}), so the
// compiler checks its element type. A [Stream] feeds one stage: building two
// stages from one Stream (branching) is a [*ConfigError].
//
// For a plain for loop instead of stages and a sink, [Each] yields a source's
// records one at a time, with the same checkpoints, leases and drain:
//
//	for rec, err := range shardflow.Each(ctx, src) {
//		if err != nil {
//			return err
//		}
//		handle(rec) // rec is done once the loop asks for the next one
//	}
//
// # Delivery guarantee
//
// Delivery is at-least-once, in order per shard. Each record read from a shard
// carries its position. A per-shard tracker advances that shard's checkpoint
// only to the highest position below which every record is completely done:
// dropped by a Filter, written by the Sink (the sink acknowledges each record
// only once it is durable), or handed to a dead-letter handler. A record that
// is still in flight or that failed holds the checkpoint back, however many
// later records have finished. After a crash the pipeline resumes from the last
// saved checkpoint, so the records processed since then are processed again:
// duplicates are limited to what was in flight, plus at most one checkpoint
// interval of finished work. Make sinks idempotent where duplicates matter.
//
// Checkpoints are written to a [CheckpointStore] at a bounded rate (see
// [Options].CheckpointInterval), when a shard ends and when the pipeline stops,
// never once per record.
//
// # Concurrency and order
//
// Records of one shard run through the stages one at a time, in the order the
// source delivered them, on one goroutine per shard (a lane); different shards
// run concurrently. A sink receives the records of a shard in order, and may
// acknowledge them in any order: the checkpoint stays contiguous.
//
// [ByKey] trades order per shard for order per key: the stages after it run
// on n key workers per shard, each key's values on one worker, in order, so
// that handlers that wait overlap across keys:
//
//	shardflow.ByKey(records, 16, nil).Map(callTheAPI).Sink(sink) // nil: by partition key
//
// The checkpoint still only passes records once every record before them is
// done.
//
// # Failures
//
// A handler error is retried with exponential backoff (see [RetryPolicy]) unless
// it is marked [Permanent]; then the record either stops the pipeline (the
// default: [Pipeline.Run] returns a [*StageError] naming the stage and the
// record's shard and position, and nothing at or after that record is
// checkpointed for its shard) or, with a dead-letter handler set by
// [Stream.DeadLetter], is handed to the handler and the pipeline goes on:
//
//	records.DeadLetter(quarantine).Map(decode) // quarantine takes a Record, as decode does
//
// The handler takes the stage's input type, so the compiler checks it, and
// gets a [*DeadLetter] error with the record's provenance. A
// panic in a handler is recovered and becomes a [*PanicError]; it is not
// retried. [RetryPolicy] holds every failure control, for all stages
// ([Options].Retry) or one ([WithRetry]): MaxAttempts; MaxRecordAge, past
// which a record is not retried (from the arrival time a source gives with
// [Lane.EmitArrived]); and Bisect, which splits a failed batch until the
// values that fail on their own are found, and fails only those. Options a stage cannot honour, like [WithRetry] on a Batch, are a
// [*ConfigError]: [Pipeline.Run] reports every configuration error before
// anything runs.
//
// # Shutdown
//
// Cancelling the context given to [Pipeline.Run] drains the pipeline: the
// source stops reading, records already read finish their way through the
// stages, partial batches are flushed, the sink is flushed, and a final
// checkpoint is written for every shard. All of it fits in one budget,
// [Options].DrainTimeout, counted from the cancel: records in flight get it
// less a fifth (at most 5s) kept for the final checkpoint saves, and the
// saves get what is left. A clean drain returns nil.
//
// # Options
//
// Pipelines take [Options], stages take [StageOption]s. In every option of
// this module the zero value means the documented default; where "none" is
// useful it is spelled with a negative value, documented on the field.
// Invalid options make Run return a [*ConfigError]. [Options].Logger is set
// once: Run hands it to the source and the sink ([PipelineLogger]), and it
// defaults to slog.Default().
//
// # Metrics, stalls and status
//
// The pipeline, its source, sink and checkpoint store record metrics through
// the OpenTelemetry metric API: set [Options].MeterProvider once (default:
// the global provider, a no-op until the application installs one) and the
// components inherit it ([PipelineMeterProvider]). The pipeline's own
// instruments are shardflow.stage.records.{in,out,dropped,failed,dead_lettered}
// and shardflow.stage.retries by stage, shardflow.stage.handler.duration (at
// most one call per shard and 10ms timed), shardflow.shard.in_flight, shardflow.shard.checkpoint_lag
// and shardflow.shard.stalled by shard, shardflow.checkpoint.saves and
// .failures, and shardflow.stalls. Attributes are stream, shard, stage and
// error_code: never record data or partition keys.
//
// A watchdog reports a shard whose oldest unfinished record has not
// finished for [Options].StallTimeout (default 2 minutes), or whose source
// made no successful read for that long while the shard did not move: a
// WARN log line, the
// shardflow.shard.stalled gauge and [Options].OnStall name the shard, the
// stage holding the record (for a blocked handler, the function it is
// blocked in) and for how long. [Pipeline.Status] returns the same view on
// demand, for health checks.
//
// # Writing sources and sinks
//
// A source implements [ShardSource]: for each shard it reads, it opens a
// [Lane], emits records with their positions, and ends the lane when the shard
// is closed; it calls [Lane.Heartbeat] after each successful read, so that a
// reader that stops succeeding is reported. A sink implements [Sink]: it acknowledges every accepted record
// exactly once through its [Ack]. Package shardflowtest has in-memory versions
// of both for unit tests, and package checkpoint/memory an in-memory store.
package shardflow
