package shardflow

import (
	"context"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow/internal/telemetry"
)

// The pipeline's instruments. Counting costs the hot path almost nothing:
// a lane's goroutine counts in plain fields it alone writes, and adds what
// changed to the counters at most once per clock tick (and when it goes
// idle or stops), at a point where every record it took has passed through
// every stage; so the counts are exact whenever the lane is idle, and never
// go backwards. Rare events (failures, retries, saves, stalls) are counted
// where they happen.
type pipelineMetrics struct {
	recordsIn, recordsOut, recordsDropped metric.Int64Counter
	recordsFailed, recordsDeadLettered    metric.Int64Counter
	retries                               metric.Int64Counter
	handlerDuration                       metric.Float64Histogram
	saves, saveFailures                   metric.Int64Counter
	stalls                                metric.Int64Counter
	inFlight, stalled                     metric.Int64ObservableGauge
	lagSeconds                            metric.Float64ObservableGauge
}

func newPipelineMetrics(mp metric.MeterProvider) (*pipelineMetrics, error) {
	m := telemetry.Meter(mp)
	pm := &pipelineMetrics{}
	var err error
	counter := func(dst *metric.Int64Counter, name, unit, desc string) {
		if err == nil {
			*dst, err = m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		}
	}
	counter(&pm.recordsIn, "shardflow.stage.records.in", "{record}", "Values that entered the stage.")
	counter(&pm.recordsOut, "shardflow.stage.records.out", "{record}", "Values the stage passed on (for the sink: values it acknowledged).")
	counter(&pm.recordsDropped, "shardflow.stage.records.dropped", "{record}", "Values a Filter stage dropped.")
	counter(&pm.recordsFailed, "shardflow.stage.records.failed", "{record}", "Values that failed the stage for good (after retries).")
	counter(&pm.recordsDeadLettered, "shardflow.stage.records.dead_lettered", "{record}", "Failed values the stage's dead-letter handler took.")
	counter(&pm.retries, "shardflow.stage.retries", "{retry}", "Handler (or Sink.Write) calls retried.")
	counter(&pm.saves, "shardflow.checkpoint.saves", "{save}", "Checkpoints saved.")
	counter(&pm.saveFailures, "shardflow.checkpoint.failures", "{save}", "Checkpoint saves that failed (retried at the next interval).")
	counter(&pm.stalls, "shardflow.stalls", "{stall}", "Shards the watchdog found stalled.")
	if err != nil {
		return nil, err
	}
	if pm.handlerDuration, err = m.Float64Histogram("shardflow.stage.handler.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of a stage's handler calls (at most one call per shard and 10ms is timed)."),
		metric.WithExplicitBucketBoundaries(0.00001, 0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30)); err != nil {
		return nil, err
	}
	if pm.inFlight, err = m.Int64ObservableGauge("shardflow.shard.in_flight", metric.WithUnit("{record}"),
		metric.WithDescription("Records of the shard read and not finished.")); err != nil {
		return nil, err
	}
	if pm.lagSeconds, err = m.Float64ObservableGauge("shardflow.shard.checkpoint_lag", metric.WithUnit("s"),
		metric.WithDescription("How long the shard's oldest unfinished record has been in the pipeline (0 when none is).")); err != nil {
		return nil, err
	}
	if pm.stalled, err = m.Int64ObservableGauge("shardflow.shard.stalled", metric.WithUnit("{shard}"),
		metric.WithDescription("1 while the watchdog reports the shard stalled, else 0.")); err != nil {
		return nil, err
	}
	return pm, nil
}

// observe reports the gauges of every open lane.
func (r *run) observe(_ context.Context, o metric.Observer) error {
	now := r.clock.Load()
	for _, l := range r.openLanes() {
		w := l.watch(now)
		set := metric.WithAttributeSet(w.attrs)
		o.ObserveInt64(r.metrics.inFlight, int64(w.tail-w.head), set)
		o.ObserveFloat64(r.metrics.lagSeconds, w.lag(now).Seconds(), set)
		st := int64(0)
		if r.stallOf(l) != nil {
			st = 1
		}
		o.ObserveInt64(r.metrics.stalled, st, set)
	}
	return nil
}

// nodeStats counts one stage's values in one lane. The plain fields are
// written by the lane's goroutine only; pub* are what it last added to the
// counters.
type nodeStats struct {
	st    *stage
	attrs metric.MeasurementOption // {stream, stage}
	kind  nodeKind

	dropped, failed, deadLettered uint64
	// grown is what a FlatMap's fan-out added: values out beyond one per
	// value in, less the values that gave none.
	grown     int64
	batches   uint64        // a Batch stage's batches out
	clock     *atomic.Int64 // the run clock
	sampledAt int64         // run clock of the last timed handler call

	// held is, for a Batch stage, 1 + the tracker index of the first
	// record of the open batch (0: none), for the watchdog.
	held atomic.Uint64

	pubIn, pubOut, pubDropped uint64
}

// sample reports whether this handler call is timed: the first one of
// each tick of the run clock (10ms), so that a busy stage reads the time
// (which costs more than a handler call here) at most 100 times a second,
// and a quiet one at each call.
func (c *nodeStats) sample() bool {
	if now := c.clock.Load(); now != c.sampledAt {
		c.sampledAt = now
		return true
	}
	return false
}

// timed records the duration of a sampled handler call.
func (c *nodeStats) timed(ctx context.Context, m *pipelineMetrics, start time.Time) {
	m.handlerDuration.Record(ctx, time.Since(start).Seconds(), c.attrs)
}

// failedOnLane counts a value that failed the stage on the lane's
// goroutine; dl tells whether the dead-letter handler took it.
func (c *nodeStats) failedOnLane(dl bool) {
	if dl {
		c.deadLettered++
	} else {
		c.failed++
	}
}

// nodeKind says how a stage's values out are counted.
type nodeKind uint8

const (
	kindPlain nodeKind = iota // out = in - dropped - failed - dead-lettered + grown
	kindBatch                 // out = the batches it emitted
	kindSink                  // out = what the sink acknowledged (publishAcks)
)

// addStage registers the node of st in the chain of env, below the ones
// registered before it (attach wires a chain from the sink up), and returns
// its stats.
func (e *laneEnv) addStage(st *stage, kind nodeKind) *nodeStats {
	c := &nodeStats{st: st, kind: kind, clock: e.clock,
		attrs: metric.WithAttributeSet(attribute.NewSet(telemetry.KeyStream.String(e.stream), telemetry.KeyStage.String(st.name)))}
	e.stages = append(e.stages, c)
	if m := e.metrics; m != nil {
		// The counters of rare events exist from the start, at 0, so that
		// Prometheus' increase() sees their first event.
		ctx := context.Background()
		m.recordsFailed.Add(ctx, 0, c.attrs)
		m.recordsDeadLettered.Add(ctx, 0, c.attrs)
		m.retries.Add(ctx, 0, c.attrs)
		m.saveFailures.Add(ctx, 0, e.streamOpt)
	}
	return c
}

// publish adds what the lane's stages counted since the last publish to
// the counters. Called on the lane's goroutine, between records, or once it
// exited.
func (l *Lane[T]) publish() {
	publishChain(l.r.metrics, l.env.stages, l.pushed)
	l.pubTick = l.r.clock.Load()
	l.publishAcks()
}

// publishChain adds what the stages of one chain (a lane's, or a key
// worker's: see ByKey) counted since its last publish to the counters; in is
// the values pushed into its first stage. Called on the chain's goroutine,
// between values, or once it exited.
func publishChain(m *pipelineMetrics, stages []*nodeStats, in uint64) {
	ctx := context.Background()
	for _, c := range stages {
		var out uint64
		switch c.kind {
		case kindBatch:
			out = c.batches
		case kindSink:
			out = 0 // the sink's out is what it acknowledged: publishAcks
		default:
			out = uint64(int64(in-c.dropped-c.failed-c.deadLettered) + c.grown)
		}
		if d := in - c.pubIn; d > 0 {
			m.recordsIn.Add(ctx, int64(d), c.attrs)
			c.pubIn = in
		}
		if out > c.pubOut {
			m.recordsOut.Add(ctx, int64(out-c.pubOut), c.attrs)
			c.pubOut = out
		}
		if d := c.dropped - c.pubDropped; d > 0 {
			m.recordsDropped.Add(ctx, int64(d), c.attrs)
			c.pubDropped = c.dropped
		}
		in = out
	}
}

// publishAcks adds the values the sink acknowledged since the last call to
// the sink stage's out counter. Safe from any goroutine.
func (l *Lane[T]) publishAcks() {
	if l.sinkStats == nil {
		return
	}
	d := l.trk.takeAcked()
	if d > 0 {
		l.r.metrics.recordsOut.Add(context.Background(), int64(d), l.sinkStats.attrs)
	}
}
