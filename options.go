package shardflow

import (
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow/internal/retry"
)

// Options configure a pipeline. Pass them to [Source] as functions that adjust
// the defaults:
//
//	shardflow.Source(src, func(o *shardflow.Options) { o.CheckpointInterval = time.Second })
type Options struct {
	// CheckpointInterval is how often each shard's checkpoint is saved while
	// the pipeline runs, when it moved. Checkpoints are also saved when a shard
	// ends and when the pipeline stops. Default: 5s. Must not be negative.
	CheckpointInterval time.Duration

	// CheckpointEvery, when positive, bounds what a crash (kill -9) costs:
	// a restarted instance re-delivers at most CheckpointEvery records per
	// shard. The source emits at most CheckpointEvery records of a shard
	// past its last saved checkpoint, and a save starts as soon as half of
	// them have finished every stage, besides the saves every
	// CheckpointInterval ("every CheckpointInterval or every
	// CheckpointEvery/2 finished records, whichever comes first").
	//
	// Cost: one more checkpoint write per CheckpointEvery/2 records per
	// shard (on DynamoDB one conditional UpdateItem, 1 write capacity
	// unit). A shard read at its full 1,000 records/s with CheckpointEvery
	// 1,000 writes about twice a second. While a checkpoint cannot be
	// saved (the store is down, or one save hangs), the shard's reading
	// pauses once CheckpointEvery records are past the last save; saves of
	// different shards run concurrently, so other shards go on. Keep it at
	// least twice the largest Batch size (times the workers of a ByKey
	// before the Batch, each of which fills batches of its own), or batches
	// wait for their linger time.
	// Default: 0, off (saves only every CheckpointInterval). Must not be
	// negative. It has no effect without a checkpoint store.
	CheckpointEvery int

	// DrainTimeout is the one budget of the drain after the context given
	// to Run is cancelled or the source is exhausted: the records in flight
	// finishing, the sink's flush and the final checkpoint saves all fit in
	// it. Records still in flight when DrainTimeout less a fifth of it (at
	// most 5s, kept for the final saves) has passed are abandoned (not
	// checkpointed) and Run returns ErrDrainTimeout; the final saves get
	// whatever is left of DrainTimeout. Set it below your platform's grace
	// period, less the time the source needs to stop (Kubernetes gives 30s
	// by default: set 20-25s). Default: 30s, which suits a process stopped
	// by hand. Must not be negative.
	DrainTimeout time.Duration

	// MaxInFlight caps the records of one shard that were emitted but are not
	// yet done; the source blocks in Lane.Emit while the cap is reached.
	// Default: 1000 records. Must not be negative.
	MaxInFlight int

	// Retry is the retry policy of stages that set none with WithRetry:
	// how often a failed handler call is made again (MaxAttempts), how
	// long apart, whether records past an age are retried at all
	// (MaxRecordAge), and whether a failed batch is split to find the
	// values that fail (Bisect). Default: the zero RetryPolicy, that is 3
	// attempts, waiting 100ms then 200ms (±50%), no age limit, no bisect.
	Retry RetryPolicy

	// Logger receives lifecycle events (Info) and retried failures (Warn)
	// of the pipeline, and of its source, sink and checkpoint store when
	// they were given no logger of their own (see [PipelineLogger]).
	// Default: slog.Default(). Record payloads are never logged.
	Logger *slog.Logger

	// MeterProvider records the pipeline's metrics, and those of its
	// source, sink and checkpoint store when they were given no provider of
	// their own (see [PipelineMeterProvider]). The README's Operations
	// section lists every instrument. Default: nil, which means the global
	// provider, otel.GetMeterProvider(): a no-op unless the application
	// installs one. Metrics never carry record data or partition keys.
	MeterProvider metric.MeterProvider

	// StallTimeout is how long a shard may go without progress before the
	// watchdog reports it stalled: its oldest unfinished record has not
	// finished for StallTimeout, or its source made no successful read for
	// StallTimeout while the shard did not move either (sources that call
	// [Lane.Heartbeat]; a source waiting in Emit for a busy pipeline is not
	// stalled). A report is a WARN
	// log naming the shard, the stage holding the record and for how long,
	// the shardflow.shard.stalled metric, and OnStall. A stall is reported
	// within 1.25 × StallTimeout of the last progress. Default: 2 minutes.
	// Negative: no watchdog.
	StallTimeout time.Duration

	// OnStall, if set, is called with each stall report when the shard is
	// first found stalled, and again with Recovered set once it moves (or
	// is no longer read here). Reports are delivered in order on a
	// goroutine of their own; while OnStall is slow, up to 256 wait and
	// later ones are dropped (and logged). Default: nil, none.
	OnStall func(StallReport)
}

// PipelineMeterProvider is implemented by sources, sinks and checkpoint
// stores that record metrics. Before it starts anything, [Pipeline.Run]
// hands the source and the sink the pipeline's meter provider
// ([Options].MeterProvider, or the global one); a component given no
// provider of its own records through it from then on (and a source hands
// it on to its checkpoint store the same way), as [PipelineLogger] does for
// the logger.
type PipelineMeterProvider interface {
	UsePipelineMeterProvider(metric.MeterProvider)
}

// PipelineLogger is implemented by sources, sinks and checkpoint stores
// that log. Before it starts anything, [Pipeline.Run] hands the source and
// the sink the pipeline's [Options].Logger; a component given no logger of
// its own logs through it from then on (and a source hands it on to its
// checkpoint store the same way). So a user sets the logger once. A
// component used outside a pipeline logs to slog.Default() unless given a
// logger.
type PipelineLogger interface {
	UsePipelineLogger(*slog.Logger)
}

func (o *Options) resolve() error {
	if o.CheckpointInterval < 0 {
		return &ConfigError{Field: "Options.CheckpointInterval", Reason: "negative"}
	}
	if o.CheckpointEvery < 0 {
		return &ConfigError{Field: "Options.CheckpointEvery", Reason: "negative"}
	}
	if o.DrainTimeout < 0 {
		return &ConfigError{Field: "Options.DrainTimeout", Reason: "negative"}
	}
	if o.MaxInFlight < 0 {
		return &ConfigError{Field: "Options.MaxInFlight", Reason: "negative"}
	}
	if o.CheckpointInterval == 0 {
		o.CheckpointInterval = 5 * time.Second
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = 30 * time.Second
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = 1000
	}
	if err := o.Retry.validate("Options.Retry"); err != nil {
		return err
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MeterProvider == nil {
		o.MeterProvider = otel.GetMeterProvider()
	}
	if o.StallTimeout == 0 {
		o.StallTimeout = 2 * time.Minute
	}
	return nil
}

// RetryPolicy says how often and how fast a stage retries a failed handler
// call ([Options].Retry for every stage, [WithRetry] for one), and how a
// connector retries its AWS calls (the Retry field of each connector's
// options). Waits grow exponentially with 50% jitter and end early when the
// pipeline stops. Errors marked with [Permanent], and panics, are not
// retried. Once its retries are spent, a value goes to the stage's failure
// policy: its dead-letter handler ([Stream.DeadLetter]), or the pipeline
// stops.
//
// The zero value of each field means its default, which differs only in
// MaxAttempts and Timeout between stages and AWS calls, as each field says;
// negative values are a [*ConfigError]. MaxRecordAge and Bisect are for
// stages only: a connector refuses them.
type RetryPolicy struct {
	// MaxAttempts is the number of calls including the first; 1 means no
	// retries. It is the one limit on how often a stage calls its handler
	// for a value. Default (0): 3 for stages; no count limit for AWS calls
	// (Timeout bounds them).
	MaxAttempts int
	// InitialInterval is the first wait. Default (0): 100ms.
	InitialInterval time.Duration
	// MaxInterval caps each wait. Default (0): 5s.
	MaxInterval time.Duration
	// Multiplier grows the wait after each attempt; at least 1. Default
	// (0): 2.
	Multiplier float64
	// Timeout stops the retries once it has passed since the first
	// failure. Default (0): none for stages (MaxAttempts bounds them); 5
	// minutes for AWS calls (the outage budget).
	Timeout time.Duration
	// MaxRecordAge is, for a stage, the age past which a record is not
	// retried: when a call fails for a value whose record arrived in its
	// stream longer ago than MaxRecordAge (for a batch: its first record),
	// the value goes to the failure policy at once, and retries under way
	// stop once the record passes that age. Age is counted from the
	// record's arrival time, which the source gives with
	// [Lane.EmitArrived] (the Kinesis source: ApproximateArrivalTimestamp);
	// records emitted without one are retried as usual. Use it to keep a
	// shard from falling further behind on records that are already late.
	// Default (0): no age limit.
	MaxRecordAge time.Duration
	// Bisect, for a stage whose input is a batch (the values of a [Batch],
	// slices of one value per record), splits a batch that failed for good
	// and calls the handler again on halves, until the values that fail on
	// their own are found: only those go to the failure policy (each as a
	// batch of one), the others go on. It costs no retries: with one
	// failing value in a batch of n, the handler is called at most
	// ⌈log2 n⌉+1 more times. A half whose other half succeeded is taken to
	// hold a failing value without a call of its own, so it assumes a value
	// fails each time it is tried. Other stages have nothing to split: in
	// Options.Retry they ignore Bisect, in WithRetry it is a
	// [*ConfigError]. For a sink, Bisect splits the batches Write refused;
	// a batch the sink took and then failed through its Ack goes to the
	// failure policy whole. Default: false, a failed batch fails whole.
	Bisect bool
}

// NoRetry is a RetryPolicy that calls a handler once.
var NoRetry = RetryPolicy{MaxAttempts: 1}

func (p RetryPolicy) validate(field string) error {
	switch {
	case p.MaxAttempts < 0:
		return &ConfigError{Field: field + ".MaxAttempts", Reason: "negative"}
	case p.InitialInterval < 0:
		return &ConfigError{Field: field + ".InitialInterval", Reason: "negative"}
	case p.MaxInterval < 0:
		return &ConfigError{Field: field + ".MaxInterval", Reason: "negative"}
	case p.Multiplier != 0 && p.Multiplier < 1:
		return &ConfigError{Field: field + ".Multiplier", Reason: "below 1"}
	case p.Timeout < 0:
		return &ConfigError{Field: field + ".Timeout", Reason: "negative"}
	case p.MaxRecordAge < 0:
		return &ConfigError{Field: field + ".MaxRecordAge", Reason: "negative"}
	}
	return nil
}

// Validate reports a RetryPolicy with a negative field, or a Multiplier
// below 1, as a [*ConfigError] naming field, and so is one that sets
// MaxRecordAge or Bisect, which only stages apply. Connectors call it on the
// policy of their AWS calls.
func (p RetryPolicy) Validate(field string) error {
	switch {
	case p.MaxRecordAge != 0:
		return &ConfigError{Field: field + ".MaxRecordAge", Reason: "applies to a pipeline's stages, not to AWS calls"}
	case p.Bisect:
		return &ConfigError{Field: field + ".Bisect", Reason: "applies to a pipeline's stages, not to AWS calls"}
	}
	return p.validate(field)
}

// stageRetryDefaults are RetryPolicy's documented defaults for stages.
var stageRetryDefaults = retry.Policy{MaxAttempts: 3, InitialInterval: 100 * time.Millisecond, MaxInterval: 5 * time.Second, Multiplier: 2}

func (p RetryPolicy) resolve() retry.Policy {
	return retry.Policy{MaxAttempts: p.MaxAttempts, InitialInterval: p.InitialInterval,
		MaxInterval: p.MaxInterval, Multiplier: p.Multiplier, MaxElapsed: p.Timeout}.WithDefaults(stageRetryDefaults)
}

// StageOption configures one stage: [WithName] or [WithRetry]. A stage's
// dead-letter handler is set with [Stream.DeadLetter], so that the compiler
// checks its type.
type StageOption interface {
	applyStage(*stageConfig)
}

type stageOptionFunc func(*stageConfig)

func (f stageOptionFunc) applyStage(c *stageConfig) { f(c) }

// WithName names a stage in errors and logs. Default: its kind and its place
// in the pipeline, like "map#2", or "sink".
func WithName(name string) StageOption {
	return stageOptionFunc(func(c *stageConfig) { c.name = name })
}

// WithRetry sets the retry policy of the stage's handler (of Sink.Write, for
// a Sink stage), in place of [Options].Retry, all of it: fields left zero
// take their defaults, not Options.Retry's. A [Batch] or [ByKey] stage calls
// no handler: WithRetry on it is a [*ConfigError], and so is Bisect on a
// stage whose input is not a slice.
func WithRetry(p RetryPolicy) StageOption {
	return stageOptionFunc(func(c *stageConfig) { c.retry = &p })
}

type stageConfig struct {
	name  string
	retry *RetryPolicy
}
