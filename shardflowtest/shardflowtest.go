// Package shardflowtest is the test kit for unit tests of shardflow
// pipelines: an in-memory source fed from slices, shard by shard, and a sink
// that collects what it is given. With the in-memory checkpoint store
// (package checkpoint/memory) a test runs a whole pipeline with no AWS and
// asserts what the sink got and where each shard was checkpointed:
//
//	store := memory.New()
//	src := shardflowtest.NewSource[shardflow.Record]("orders", func(o *shardflowtest.SourceOptions) {
//		o.Store = store
//	}).AddShard("shard-0", shardflowtest.Records("orders", "shard-0", "a", "b")...)
//	sink := shardflowtest.NewSink[string]()
//	err := shardflow.Source(src).Map(toString).Sink(sink).Run(ctx)
//	// sink.Items() == []string{"a", "b"}
//	// store.Checkpoints("orders")["shard-0"].SequenceNumber == "2"
//
// The source numbers the records of each shard 1, 2, 3, ... and uses that as
// their sequence number, so checkpoints are easy to predict.
package shardflowtest

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/shardflow/shardflow"
	"golang.org/x/sync/errgroup"
)

// SourceOptions configure a [Source].
type SourceOptions struct {
	// Store, when set, is where the source resumes from (each shard starts
	// after its checkpointed sequence number, and a shard checkpointed at
	// SHARD_END is skipped) and where the pipeline saves checkpoints.
	// Default: nil, no checkpoints.
	Store shardflow.CheckpointStore
	// EndShards makes the source end each shard after its last record, so
	// the shard is checkpointed at SHARD_END, like a Kinesis shard closed by
	// resharding. Default: false, the shard stays open and is checkpointed at
	// its last record.
	EndShards bool
	// Follow makes Run wait, after the last record, until its context is
	// cancelled, like a live stream with no new records. Default: false, Run
	// returns once every record was emitted, and the pipeline drains and
	// returns.
	Follow bool
}

// Source is an in-memory [shardflow.ShardSource] of values of type T, shard by
// shard. Each shard's values are read by a goroutine of their own, in order.
// Build it before running: AddShard must not be called while Run runs.
type Source[T any] struct {
	stream string
	opts   SourceOptions
	shards []testShard[T]
}

type testShard[T any] struct {
	id     string
	values []T
	pos    []shardflow.Position
}

// NewSource returns a source of the named stream with no shards.
func NewSource[T any](stream string, optFns ...func(*SourceOptions)) *Source[T] {
	s := &Source[T]{stream: stream}
	for _, fn := range optFns {
		fn(&s.opts)
	}
	return s
}

// AddShard adds a shard holding values, at sequence numbers 1, 2, 3, ... and
// returns s. Values of type shardflow.Record are emitted with their
// ApproximateArrivalTimestamp as arrival time ([shardflow.Lane.EmitArrived]),
// as the Kinesis source emits them, for tests of
// [shardflow.RetryPolicy].MaxRecordAge.
func (s *Source[T]) AddShard(shardID string, values ...T) *Source[T] {
	sh := testShard[T]{id: shardID, values: values, pos: make([]shardflow.Position, len(values))}
	for i := range values {
		sh.pos[i] = shardflow.Position{SequenceNumber: strconv.Itoa(i + 1)}
	}
	s.shards = append(s.shards, sh)
	return s
}

// Run emits every shard's values (after its checkpoint, with a Store) on one
// goroutine per shard. See [SourceOptions] for when it returns.
func (s *Source[T]) Run(ctx context.Context, shards *shardflow.Shards[T]) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, sh := range s.shards {
		g.Go(func() error { return s.runShard(gctx, shards, sh) })
	}
	if err := g.Wait(); err != nil && ctx.Err() == nil {
		return err
	}
	if s.opts.Follow {
		<-ctx.Done()
	}
	return nil
}

func (s *Source[T]) runShard(ctx context.Context, shards *shardflow.Shards[T], sh testShard[T]) error {
	start := 0
	if s.opts.Store != nil {
		cp, ok, err := s.opts.Store.Load(ctx, s.stream, sh.id)
		if err != nil {
			return fmt.Errorf("load checkpoint of shard %s: %w", sh.id, err)
		}
		if ok && cp.ShardEnd {
			return nil
		}
		if ok && cp.SequenceNumber != "" {
			n, err := strconv.Atoi(cp.SequenceNumber)
			if err != nil {
				return fmt.Errorf("checkpoint of shard %s: sequence number %q is not one of this source's", sh.id, cp.SequenceNumber)
			}
			start = n
		}
	}
	lane, err := shards.Open(s.stream, sh.id, s.opts.Store)
	if err != nil {
		return err
	}
	// Records go in with their arrival time, as the Kinesis source's do.
	recs, _ := any(sh.values).([]shardflow.Record)
	for i := start; i < len(sh.values); i++ {
		var err error
		if recs != nil {
			err = lane.EmitArrived(ctx, sh.pos[i], recs[i].ApproximateArrivalTimestamp, sh.values[i])
		} else {
			err = lane.Emit(ctx, sh.pos[i], sh.values[i])
		}
		if err != nil {
			return err
		}
	}
	if s.opts.EndShards {
		return lane.End(ctx)
	}
	return nil
}

// Records returns Kinesis records of one shard holding data, numbered like
// the records of a [Source] shard (sequence numbers 1, 2, 3, ...), with
// partition keys "key-1", "key-2", ...
func Records(stream, shardID string, data ...string) []shardflow.Record {
	out := make([]shardflow.Record, len(data))
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, d := range data {
		out[i] = shardflow.Record{
			Stream:                      stream,
			ShardID:                     shardID,
			Data:                        []byte(d),
			PartitionKey:                "key-" + strconv.Itoa(i+1),
			SequenceNumber:              strconv.Itoa(i + 1),
			ApproximateArrivalTimestamp: t0.Add(time.Duration(i) * time.Millisecond),
		}
	}
	return out
}

// SinkOptions configure a [Sink].
type SinkOptions[T any] struct {
	// WriteErr, when set, is called for each value; a non-nil error rejects
	// the value (Write returns the error), which the stage retries.
	WriteErr func(T) error
	// AckErr, when set, is called for each value the sink accepted; a non-nil
	// error fails it afterwards through its Ack, as a sink whose retries ran
	// out would.
	AckErr func(T) error
}

// Sink collects every value it is given, in order of arrival, and
// acknowledges it at once. It is safe for concurrent use.
type Sink[T any] struct {
	opts    SinkOptions[T]
	mu      sync.Mutex
	items   []T
	flushes int
	wake    chan struct{}
}

var _ shardflow.Sink[int] = (*Sink[int])(nil)

// NewSink returns an empty sink.
func NewSink[T any](optFns ...func(*SinkOptions[T])) *Sink[T] {
	s := &Sink[T]{}
	for _, fn := range optFns {
		fn(&s.opts)
	}
	return s
}

// Write collects v and acknowledges it, unless the options fail it.
func (s *Sink[T]) Write(_ context.Context, v T, ack shardflow.Ack) error {
	if s.opts.WriteErr != nil {
		if err := s.opts.WriteErr(v); err != nil {
			return err
		}
	}
	if s.opts.AckErr != nil {
		if err := s.opts.AckErr(v); err != nil {
			ack.Done(err)
			return nil
		}
	}
	s.mu.Lock()
	s.items = append(s.items, v)
	if s.wake != nil { // somebody waits in WaitFor
		close(s.wake)
		s.wake = nil
	}
	s.mu.Unlock()
	ack.Done(nil)
	return nil
}

// Flush counts the call; the sink buffers nothing.
func (s *Sink[T]) Flush(context.Context) error {
	s.mu.Lock()
	s.flushes++
	s.mu.Unlock()
	return nil
}

// Items returns a copy of the values collected so far.
func (s *Sink[T]) Items() []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]T(nil), s.items...)
}

// Flushes returns how often Flush was called.
func (s *Sink[T]) Flushes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flushes
}

// WaitFor blocks until the sink holds at least n values, or ctx is done.
func (s *Sink[T]) WaitFor(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		have := len(s.items)
		if s.wake == nil {
			s.wake = make(chan struct{})
		}
		wake := s.wake
		s.mu.Unlock()
		if have >= n {
			return nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return fmt.Errorf("sink holds %d values, waiting for %d: %w", have, n, ctx.Err())
		}
	}
}
