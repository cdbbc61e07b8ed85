package scalesim

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
)

// errCrashed is what a crashed instance's store answers: as if the process
// were gone, no call reaches the lease table any more.
var errCrashed = errors.New("scalesim: instance crashed")

// gate stands between one instance's pipeline and its memory.Instance. It
// notes what every SyncLeases answered (the shards the source reads from then
// on), and after crash refuses every call, so that a crashed instance makes
// no further table write: no renewal, no checkpoint, no release, no Leave.
//
// It forwards the optional interfaces the source looks for on its store
// (LoadRecorder, LeaseLeaver, PipelineLogger, PipelineMeterProvider) to the
// Instance when the Instance has them, so that the source sees the
// Instance's capabilities through it; LoadRecorder and LeaseLeaver are
// no-ops when the Instance lacks them.
type gate struct {
	in      *memory.Instance
	crashed atomic.Bool

	mu     sync.Mutex
	held   []string // the last SyncLeases answer, sorted
	synced bool     // a SyncLeases succeeded
}

var (
	_ shardflow.CheckpointStore       = (*gate)(nil)
	_ shardflow.Leaser                = (*gate)(nil)
	_ shardflow.LoadRecorder          = (*gate)(nil)
	_ shardflow.LeaseLeaver           = (*gate)(nil)
	_ shardflow.PipelineLogger        = (*gate)(nil)
	_ shardflow.PipelineMeterProvider = (*gate)(nil)
)

// crash makes every later call fail and forgets what the instance held.
func (g *gate) crash() {
	g.crashed.Store(true)
	g.mu.Lock()
	g.held = nil
	g.mu.Unlock()
}

// holding returns the shards the last SyncLeases returned (nil once
// crashed) and whether one succeeded.
func (g *gate) holding() ([]string, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.held, g.synced
}

func (g *gate) Load(ctx context.Context, stream, shardID string) (shardflow.Checkpoint, bool, error) {
	if g.crashed.Load() {
		return shardflow.Checkpoint{}, false, errCrashed
	}
	return g.in.Load(ctx, stream, shardID)
}

func (g *gate) Save(ctx context.Context, stream, shardID string, cp shardflow.Checkpoint) error {
	if g.crashed.Load() {
		return errCrashed
	}
	return g.in.Save(ctx, stream, shardID, cp)
}

func (g *gate) SyncLeases(ctx context.Context, stream string, eligible []string) ([]string, error) {
	if g.crashed.Load() {
		return nil, errCrashed
	}
	held, err := g.in.SyncLeases(ctx, stream, eligible)
	if err == nil && !g.crashed.Load() {
		g.mu.Lock()
		g.held, g.synced = slices.Sorted(slices.Values(held)), true
		g.mu.Unlock()
	}
	return held, err
}

func (g *gate) ReleaseLease(ctx context.Context, stream, shardID string) error {
	if g.crashed.Load() {
		return errCrashed
	}
	return g.in.ReleaseLease(ctx, stream, shardID)
}

func (g *gate) LeaseSyncInterval() time.Duration { return g.in.LeaseSyncInterval() }
func (g *gate) LeaseDuration() time.Duration     { return g.in.LeaseDuration() }

func (g *gate) RecordLoad(stream, shardID string, records, bytes int) {
	if g.crashed.Load() {
		return
	}
	if lr, ok := any(g.in).(shardflow.LoadRecorder); ok {
		lr.RecordLoad(stream, shardID, records, bytes)
	}
}

func (g *gate) Leave(ctx context.Context) error {
	if g.crashed.Load() {
		return errCrashed
	}
	if ll, ok := any(g.in).(shardflow.LeaseLeaver); ok {
		return ll.Leave(ctx)
	}
	return nil
}

func (g *gate) UsePipelineLogger(l *slog.Logger) { g.in.UsePipelineLogger(l) }

func (g *gate) UsePipelineMeterProvider(mp metric.MeterProvider) {
	g.in.UsePipelineMeterProvider(mp)
}

// balancesByLoad reports whether the memory store's Instances take the
// sources' load reports (shardflow.LoadRecorder), that is whether the lease
// algorithm can balance by load rather than by count only.
func balancesByLoad(in *memory.Instance) bool {
	_, ok := any(in).(shardflow.LoadRecorder)
	return ok
}
