package kinesissource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/sync/errgroup"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/awsclient"
	"github.com/shardflow/shardflow/internal/retry"
	"github.com/shardflow/shardflow/internal/telemetry"
)

// API is the part of the Kinesis API the source calls, with the exact
// aws-sdk-go-v2 signatures: a *kinesis.Client satisfies it, and so does the
// in-memory fake of package shardflowtest/kinesisfake.
type API interface {
	ListShards(ctx context.Context, in *kinesis.ListShardsInput, optFns ...func(*kinesis.Options)) (*kinesis.ListShardsOutput, error)
	GetShardIterator(ctx context.Context, in *kinesis.GetShardIteratorInput, optFns ...func(*kinesis.Options)) (*kinesis.GetShardIteratorOutput, error)
	GetRecords(ctx context.Context, in *kinesis.GetRecordsInput, optFns ...func(*kinesis.Options)) (*kinesis.GetRecordsOutput, error)
}

var _ API = (*kinesis.Client)(nil)

// StartingPosition is where a shard with no checkpoint is read from.
type StartingPosition struct {
	typ types.ShardIteratorType
	at  time.Time
}

// Latest starts shards without a checkpoint at the tip: only records written
// from now on are read. Closed shards without a checkpoint are skipped.
func Latest() StartingPosition { return StartingPosition{typ: types.ShardIteratorTypeLatest} }

// TrimHorizon starts shards without a checkpoint at their oldest record
// still retained.
func TrimHorizon() StartingPosition {
	return StartingPosition{typ: types.ShardIteratorTypeTrimHorizon}
}

// AtTimestamp starts shards without a checkpoint at the first record that
// arrived at or after t.
func AtTimestamp(t time.Time) StartingPosition {
	return StartingPosition{typ: types.ShardIteratorTypeAtTimestamp, at: t}
}

func (p StartingPosition) String() string {
	if p.typ == types.ShardIteratorTypeAtTimestamp {
		return fmt.Sprintf("AT_TIMESTAMP %s", p.at.Format(time.RFC3339Nano))
	}
	return string(p.typ)
}

// Options configure a Source. The zero value of every field means its
// documented default; a negative duration or size is a *shardflow.ConfigError
// from New.
type Options struct {
	// Store is where shards resume from and where the pipeline saves
	// their checkpoints, for every stream of the source. When it is a
	// [shardflow.Leaser] (the DynamoDB store, or memory's Instance), the
	// source reads only the shards this instance holds a lease of; when
	// it is a [shardflow.LoadRecorder] it is told the load of every read,
	// and when it is a [shardflow.LeaseLeaver] it is told when the source
	// stops. Default: nil, no checkpoints: every run starts each shard at
	// InitialPosition.
	Store shardflow.CheckpointStore

	// InitialPosition is where a shard with no checkpoint starts, in
	// every stream whose Stream.InitialPosition (NewStreams) is zero.
	// Default: Latest(). A child shard whose parent this source read starts at its
	// trim horizon whatever this says, so that no record between the
	// parent's end and the child's start is skipped.
	InitialPosition StartingPosition

	// FallbackToTrimHorizon makes a shard whose checkpoint Kinesis no
	// longer accepts (older than the stream's retention) start at its trim
	// horizon, with a warning. Default: false: the source stops with a
	// *CheckpointExpiredError, since records were lost.
	FallbackToTrimHorizon bool

	// Limit is the most records one GetRecords call returns, 1 to 10,000.
	// Default: 10,000.
	Limit int32

	// IdleInterval is the wait between GetRecords calls on a shard that is
	// at the tip. Default: 1s. Calls on one shard are always at least
	// 200ms apart (Kinesis allows 5 per second per shard).
	IdleInterval time.Duration

	// DiscoveryInterval is how often ListShards runs to find new shards.
	// It also runs whenever a shard ends. Default: 10s.
	DiscoveryInterval time.Duration

	// Retry is the retry policy of the source's Kinesis calls (ListShards,
	// GetShardIterator, GetRecords), per shard: throttling and transient
	// errors (5xx, timeouts, refused or reset connections) are retried
	// with exponential backoff and jitter, from 100ms doubling up to 5s by
	// default, for at most Retry.Timeout from the first failure of a run
	// without a success: the outage budget, 5m by default, the same as the
	// sink's and the stores'. The last try comes when the budget ends; if
	// it fails too, Run stops with that error. MaxAttempts, when set, is a
	// second limit; by default the count is unlimited. Refused or missing
	// credentials and bad requests are never retried. See the README's
	// "Retries and the outage budget".
	Retry shardflow.RetryPolicy

	// HandoffTimeout bounds how long a shard's reader waits for the
	// shard's records in flight, and saves the checkpoint, before it
	// releases the lease (one more conditional write, of at most 5s), when
	// it hands a shard to another instance or the pipeline stops. Only
	// used with a Leaser store. Default: half the store's LeaseDuration
	// (4s with the stores' default lease of 8s), or 30s when the store
	// reports no lease duration.
	//
	// It must be below the store's LeaseDuration, or New returns a
	// *shardflow.ConfigError: once the pipeline stops, nothing renews
	// the leases, so a hand-over that outlasts the lease loses it and
	// its final checkpoint is refused (records are then read again, not
	// lost). On shutdown the hand-over runs inside the pipeline's drain:
	// keep HandoffTimeout within shardflow.Options.DrainTimeout (30s by
	// default), which cuts it short, abandoning the records still in
	// flight, when it ends first.
	HandoffTimeout time.Duration

	// ListShardsPageSize is MaxResults of each ListShards call, 1 to 10,000.
	// Default: 1000.
	ListShardsPageSize int32

	// DropMisroutedAggregates applies the KCL's hash range rule: a KPL
	// aggregate with a user record whose hash key (its explicit hash key,
	// else the MD5 of its partition key) lies outside the range of the
	// shard it was read from is dropped whole, and the checkpoint moves
	// past it. Set it only to get exactly what a KCL application gets:
	// producers that put records of several shards into one aggregate
	// (the KPL does not; some other aggregators do) lose those records.
	// Default: false: every user record of such an aggregate is
	// delivered. Either way GetRecordsEvent.MisroutedAggregates counts
	// them, and a warning is logged at most once a minute per shard.
	DropMisroutedAggregates bool

	// EnhancedFanOut, when set, makes the source read every shard it
	// holds by enhanced fan-out: Kinesis pushes the records through a
	// SubscribeToShard subscription of a registered consumer, with 2 MiB/s
	// per shard for this consumer alone and about 70ms from put to
	// delivery, instead of the source polling with GetRecords. Everything
	// else is the same: starting positions, checkpoints, leases,
	// resharding, KPL de-aggregation, retries and metrics. The client must
	// then implement FanOutAPI (a *kinesis.Client and the kinesisfake do).
	// See EnhancedFanOut for what it costs and its limits. With
	// NewStreams it applies to every stream whose Stream.EnhancedFanOut is
	// nil, and a ConsumerName is registered on each of them; a
	// ConsumerARN, which names one stream's consumer, is then refused.
	// Default: nil, polling.
	EnhancedFanOut *EnhancedFanOut

	// OnGetRecords, if set, is called after every GetRecords call of every
	// shard, from the shard's goroutine: the hook for metrics such as lag
	// (MillisBehindLatest), records and bytes read, calls and throttles.
	// With EnhancedFanOut it is called for every event received instead,
	// and for every failed SubscribeToShard call or subscription (Err
	// set). It must be quick and safe for concurrent use. Default: nil,
	// none. The source's metrics (see MeterProvider) count the same calls.
	OnGetRecords func(GetRecordsEvent)

	// MeterProvider records the source's metrics, listed in the package
	// documentation. Default: nil, which means the pipeline's provider
	// (shardflow.Options.MeterProvider) once the source runs in a
	// pipeline, and the global provider, otel.GetMeterProvider(), until
	// then. The source hands the pipeline's provider on to its store, as
	// it does the logger. Metrics carry stream names, shard ids and AWS
	// error codes only.
	MeterProvider metric.MeterProvider

	// Logger receives lifecycle events (Info) and retried failures (Warn).
	// Default: nil, which means the pipeline's logger
	// (shardflow.Options.Logger) once the source runs in a pipeline, and
	// slog.Default() until then. Record payloads are never logged.
	Logger *slog.Logger
}

// GetRecordsEvent describes one GetRecords call, for metrics; with
// Options.EnhancedFanOut, one SubscribeToShard event received (Duration is
// the wait for it) or one failed subscription (Err set).
type GetRecordsEvent struct {
	Stream, ShardID string
	// Records and Bytes count the Kinesis records returned and their data
	// bytes (before KPL de-aggregation).
	Records, Bytes int
	// UserRecords counts the records handed to the pipeline (after
	// de-aggregation and skipping what a checkpoint already covered).
	UserRecords int
	// MisroutedAggregates counts the KPL aggregates read that hold a user
	// record outside the shard's hash range: delivered whole, or dropped
	// whole with Options.DropMisroutedAggregates. DroppedUserRecords
	// counts the user records dropped so.
	MisroutedAggregates, DroppedUserRecords int
	// MillisBehindLatest is how far the shard's reader is behind the tip.
	MillisBehindLatest int64
	// Err is the call's error; Throttled reports a throughput error.
	Err       error
	Throttled bool
	// Duration is how long the call took.
	Duration time.Duration
}

// Source reads one Kinesis stream, or several (NewStreams). Create it
// with New, NewFromConfig or NewStreams; Run it through shardflow.Source.
// One Source may be run by one pipeline at a time.
type Source struct {
	client  API
	streams []*streamConf // at least one, in the order given
	opts    Options
	leaser  shardflow.Leaser       // opts.Store as a Leaser, or nil
	loads   shardflow.LoadRecorder // opts.Store as a LoadRecorder, or nil
	leaver  shardflow.LeaseLeaver  // opts.Store as a LeaseLeaver, or nil
	policy  retry.Policy           // opts.Retry resolved
	log     *slog.Logger           // set before Run, read by its goroutines
	mp      metric.MeterProvider   // set before Run; nil: the global provider

	cur atomic.Pointer[running] // the Run in progress, for Ready
}

// running is the state of a Run that Ready reads: one coordinator per
// stream, in the order of s.streams.
type running struct {
	coords []*coordinator
}

var (
	_ shardflow.ShardSource[shardflow.Record] = (*Source)(nil)
	_ shardflow.PipelineLogger                = (*Source)(nil)
	_ shardflow.PipelineMeterProvider         = (*Source)(nil)
)

// defaultHandoffTimeout is HandoffTimeout with a Leaser whose lease
// duration is unknown (zero); otherwise the default is half of it.
const defaultHandoffTimeout = 30 * time.Second

// NewFromConfig returns a source reading stream (a name or an ARN) with a
// Kinesis client made from cfg: the easy way to build one.
//
//	cfg, err := config.LoadDefaultConfig(ctx)
//	src, err := kinesissource.NewFromConfig(cfg, "orders", func(o *kinesissource.Options) { o.Store = store })
//
// The client's own retries are turned off (aws.NopRetryer), since the
// source retries every call itself per shard (Options.Retry): the SDK's
// standard retryer shares one retry quota per client, which many shards
// retrying at once exhaust. Region, credentials and endpoint come from cfg;
// config.LoadDefaultConfig honours AWS_ENDPOINT_URL_KINESIS (or
// AWS_ENDPOINT_URL) for a local emulator. Like New, it checks the options
// and calls no API.
func NewFromConfig(cfg aws.Config, stream string, optFns ...func(*Options)) (*Source, error) {
	return New(awsclient.Kinesis(cfg), stream, optFns...)
}

// New returns a source reading stream, given by name or by ARN
// ("arn:aws:kinesis:region:account:stream/name"), through client. Give
// the client a retryer that does not retry on its own (aws.NopRetryer),
// as NewFromConfig does. New checks the options, and returns a
// *shardflow.ConfigError naming the field at fault, but calls no API.
// NewStreams reads several streams in one source.
func New(client API, stream string, optFns ...func(*Options)) (*Source, error) {
	return newSource(client, []Stream{{Name: stream}}, true, optFns)
}

// NewStreams returns a source reading several streams through client, at
// most MaxStreams: one pipeline, one checkpoint store, and with a leasing
// store one lease table and one group of instances for all of them.
//
//	src, err := kinesissource.NewStreams(client, []kinesissource.Stream{
//		{Name: "orders", InitialPosition: kinesissource.TrimHorizon()},
//		{Name: "payments"}, // Options.InitialPosition
//	}, func(o *kinesissource.Options) { o.Store = store })
//
// Each stream is read as New reads one (its shards, resharding, leases
// and hand-overs are its own), and each record carries its stream's name
// in shardflow.Record.Stream. A Stream's zero fields take the source's
// Options. Like New it checks the options and calls no API: no streams,
// more than MaxStreams, an empty or repeated name, or a bad field of a
// Stream is a *shardflow.ConfigError naming the field (streams[i].Name,
// say). A stream that does not exist stops Run with an error naming it.
func NewStreams(client API, streams []Stream, optFns ...func(*Options)) (*Source, error) {
	return newSource(client, streams, false, optFns)
}

func newSource(client API, streams []Stream, single bool, optFns []func(*Options)) (*Source, error) {
	var o Options
	for _, fn := range optFns {
		fn(&o)
	}
	if client == nil {
		return nil, &shardflow.ConfigError{Field: "client", Reason: "nil"}
	}
	bad := func(field, reason string) error {
		return &shardflow.ConfigError{Field: "Options." + field, Reason: reason}
	}
	switch {
	case o.Limit < 0 || o.Limit > 10000:
		return nil, bad("Limit", "must be 1 to 10,000")
	case o.IdleInterval < 0:
		return nil, bad("IdleInterval", "negative")
	case o.DiscoveryInterval < 0:
		return nil, bad("DiscoveryInterval", "negative")
	case o.HandoffTimeout < 0:
		return nil, bad("HandoffTimeout", "negative")
	case o.ListShardsPageSize < 0 || o.ListShardsPageSize > 10000:
		return nil, bad("ListShardsPageSize", "must be 1 to 10,000")
	case o.InitialPosition.typ == types.ShardIteratorTypeAtTimestamp && o.InitialPosition.at.IsZero():
		return nil, bad("InitialPosition", "AT_TIMESTAMP needs a time")
	}
	if err := o.Retry.Validate("Options.Retry"); err != nil {
		return nil, err
	}
	if o.InitialPosition.typ == "" {
		o.InitialPosition = Latest()
	}
	sts, err := resolveStreams(client, streams, &o, single)
	if err != nil {
		return nil, err
	}
	s := &Source{client: client, streams: sts}
	s.leaser, _ = o.Store.(shardflow.Leaser)
	s.loads, _ = o.Store.(shardflow.LoadRecorder)
	s.leaver, _ = o.Store.(shardflow.LeaseLeaver)
	if o.Limit == 0 {
		o.Limit = 10000
	}
	if o.IdleInterval == 0 {
		o.IdleInterval = time.Second
	}
	if o.DiscoveryInterval == 0 {
		o.DiscoveryInterval = 10 * time.Second
	}
	if o.HandoffTimeout == 0 {
		o.HandoffTimeout = defaultHandoffTimeout
		if s.leaser != nil && s.leaser.LeaseDuration() > 0 {
			o.HandoffTimeout = s.leaser.LeaseDuration() / 2
		}
	}
	if s.leaser != nil {
		if d := s.leaser.LeaseDuration(); d > 0 && o.HandoffTimeout >= d {
			return nil, bad("HandoffTimeout", fmt.Sprintf("%v is not below the store's LeaseDuration %v: the lease would expire before the hand-over's final checkpoint", o.HandoffTimeout, d))
		}
	}
	if o.ListShardsPageSize == 0 {
		o.ListShardsPageSize = 1000
	}
	s.policy = retry.ForAWS(o.Retry.MaxAttempts, o.Retry.InitialInterval, o.Retry.MaxInterval, o.Retry.Multiplier, o.Retry.Timeout)
	s.opts = o
	s.setLogger(o.Logger)
	s.mp = o.MeterProvider
	return s, nil
}

// UsePipelineLogger implements [shardflow.PipelineLogger]: a source given
// no Options.Logger logs through l from then on, and hands l on to its
// store when the store implements shardflow.PipelineLogger too. The
// pipeline calls it before Run; it must not be called while Run runs.
func (s *Source) UsePipelineLogger(l *slog.Logger) {
	if s.opts.Logger == nil {
		s.setLogger(l)
	}
	if pl, ok := s.opts.Store.(shardflow.PipelineLogger); ok {
		pl.UsePipelineLogger(l)
	}
}

func (s *Source) setLogger(l *slog.Logger) {
	if l == nil {
		l = slog.Default()
	}
	s.log = l.With("component", "kinesis.source")
	for _, st := range s.streams {
		st.log = s.log.With("stream", st.name)
	}
}

// Stream returns the name of the stream the source reads; of a source
// reading several (NewStreams), the name of the first. Streams returns
// them all.
func (s *Source) Stream() string { return s.streams[0].name }

// Run reads the stream, or every stream of a source made by NewStreams,
// until ctx is done, handing every record to the pipeline through shards.
// It returns nil when ctx is cancelled, and an error when a shard cannot be
// read (a missing stream, denied access, an expired checkpoint without
// FallbackToTrimHorizon, or retries that ran out), or when the lease store
// fails a sync with an error marked [shardflow.Permanent] (the DynamoDB
// store's missing table or wrong key schema, denied access): then it
// returns at the first sync, wrapping that error. Other sync failures are
// retried at the next interval. An error of one stream stops the reading
// of all, and names the stream.
//
// When the checkpoint store is a [shardflow.Leaser], Run reads only the
// shards it holds a lease of; when it stops holding one, and when ctx is
// cancelled, it waits for the shard's records in flight (at most
// HandoffTimeout), saves its checkpoint and releases the lease, so that
// another instance takes over at once. Once every shard is released, a
// store that is a [shardflow.LeaseLeaver] is told that this instance
// leaves (one call, within 5 seconds; a failure is logged, not returned).
func (s *Source) Run(ctx context.Context, shards *shardflow.Shards[shardflow.Record]) error {
	g, gctx := errgroup.WithContext(ctx)
	rs := &running{coords: make([]*coordinator, len(s.streams))}
	for i, st := range s.streams {
		rs.coords[i] = &coordinator{
			src:       s,
			st:        st,
			shards:    shards,
			leaser:    s.leaser,
			loads:     s.loads,
			readers:   make(map[string]*reader),
			finished:  make(map[string]bool),
			consumed:  make(map[string]bool),
			eligible:  make(map[string]startSpec),
			wake:      make(chan struct{}, 1),
			leaseWake: make(chan struct{}, 1),
			done:      gctx.Done(),
			streamObs: []metric.ObserveOption{metric.WithAttributeSet(telemetry.Stream(st.name))},
		}
	}
	met, reg := s.newMetrics(rs.coords)
	if reg != nil {
		defer func() { _ = reg.Unregister() }() // an error would change nothing now
	}
	for _, c := range rs.coords {
		c.met = met
	}
	s.cur.Store(rs)
	defer s.cur.CompareAndSwap(rs, nil)
	for _, c := range rs.coords {
		g.Go(func() error { return c.run(gctx, g) })
	}
	err := g.Wait()
	// Every reader stopped, and released its lease: the instance leaves,
	// then the consumers registered for this Run may be deregistered.
	s.leave(ctx)
	var wg sync.WaitGroup
	for _, c := range rs.coords {
		if c.reads != nil { // set before c.run started any reader
			wg.Go(func() { c.reads.end(ctx) })
		}
	}
	wg.Wait()
	if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.Cause(ctx))) {
		return nil
	}
	return err
}

// leaveTimeout bounds the call of LeaseLeaver.Leave when Run returns: one
// write, like a release.
const leaveTimeout = releaseTimeout

// leave tells a store that keeps a record of live instances that this one
// is gone, so that the others count it gone at once.
func (s *Source) leave(ctx context.Context) {
	if s.leaver == nil {
		return
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaveTimeout)
	defer cancel()
	if err := s.leaver.Leave(lctx); err != nil {
		s.log.Warn("leaving the lease group failed; the other instances count this one gone once its leases expire", "err", err)
		return
	}
	s.log.Info("left the lease group")
}
