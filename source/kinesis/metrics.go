package kinesissource

import (
	"context"
	"errors"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/telemetry"
)

// Instrument names of the source's metrics (the README's table lists them
// with every other shardflow instrument).
const (
	metricRecords      = "shardflow.source.records"
	metricBytes        = "shardflow.source.bytes"
	metricCalls        = "shardflow.source.getrecords.calls"
	metricThrottles    = "shardflow.source.getrecords.throttles"
	metricErrors       = "shardflow.source.getrecords.errors"
	metricMillisBehind = "shardflow.source.behind_latest"
	metricShardsHeld   = "shardflow.source.shards.held"

	// Enhanced fan-out's counterparts of the getrecords instruments.
	metricSubscriptions = "shardflow.source.subscribe.subscriptions"
	metricEvents        = "shardflow.source.subscribe.events"
	metricSubThrottles  = "shardflow.source.subscribe.throttles"
	metricSubErrors     = "shardflow.source.subscribe.errors"
)

// UsePipelineMeterProvider implements [shardflow.PipelineMeterProvider]: a
// source given no Options.MeterProvider records its metrics through mp from
// then on, and hands mp on to its store when the store implements
// shardflow.PipelineMeterProvider too. The pipeline calls it before Run; it
// must not be called while Run runs.
func (s *Source) UsePipelineMeterProvider(mp metric.MeterProvider) {
	if s.opts.MeterProvider == nil {
		s.mp = mp
	}
	if pm, ok := s.opts.Store.(shardflow.PipelineMeterProvider); ok {
		pm.UsePipelineMeterProvider(mp)
	}
}

// sourceMetrics are the instruments of one Run, made when it starts.
type sourceMetrics struct {
	records, bytes     metric.Int64Counter
	polls, fanOut      readCounters
	subscriptions      metric.Int64Counter
	millisBehind, held metric.Int64ObservableGauge
}

// readCounters count a read mode's reads: GetRecords calls when polling,
// events received with enhanced fan-out.
type readCounters struct {
	// reads counts successful reads, and failed ones too when failedToo
	// (a GetRecords call is counted whatever its outcome; a failed
	// subscription is counted by the subscriptions counter instead).
	reads             metric.Int64Counter
	failedToo         bool
	throttles, errors metric.Int64Counter
}

// newMetrics makes the source's instruments from its provider, and
// registers the callback of its gauges, which reads the coordinators of
// its streams. The caller unregisters it when Run returns.
func (s *Source) newMetrics(coords []*coordinator) (*sourceMetrics, metric.Registration) {
	meter := telemetry.Meter(s.mp)
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		ctr, err := meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		if err != nil {
			errs = append(errs, err)
			return noop.Int64Counter{}
		}
		return ctr
	}
	gauge := func(name, unit, desc string) metric.Int64ObservableGauge {
		g, err := meter.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		if err != nil {
			errs = append(errs, err)
			return noop.Int64ObservableGauge{}
		}
		return g
	}
	m := &sourceMetrics{
		records: counter(metricRecords, "{record}", "User records the source handed to the pipeline (after KPL de-aggregation)."),
		bytes:   counter(metricBytes, "By", "Data bytes of the Kinesis records read (before KPL de-aggregation)."),
		polls: readCounters{
			reads:     counter(metricCalls, "{call}", "GetRecords calls made, failed ones included."),
			failedToo: true,
			throttles: counter(metricThrottles, "{call}", "GetRecords calls refused for rate (ProvisionedThroughputExceeded, LimitExceeded)."),
			errors:    counter(metricErrors, "{call}", "GetRecords calls failed other than for rate, by error_code."),
		},
		millisBehind: gauge(metricMillisBehind, "ms", "How far the shard's reader is behind the tip of the stream, as of its last read."),
		held:         gauge(metricShardsHeld, "{shard}", "Shards the source reads now."),
	}
	anyFanOut := false
	for _, st := range s.streams {
		_, ok := st.mode.(*fanOut)
		anyFanOut = anyFanOut || ok
	}
	if anyFanOut {
		// Made only when used, so that a polling source's exporter shows
		// no series it can never move.
		m.subscriptions = counter(metricSubscriptions, "{subscription}", "SubscribeToShard calls made (enhanced fan-out), failed ones included.")
		m.fanOut = readCounters{
			reads:     counter(metricEvents, "{event}", "SubscribeToShard events received (enhanced fan-out)."),
			throttles: counter(metricSubThrottles, "{subscription}", "SubscribeToShard calls and subscriptions refused or ended for rate (enhanced fan-out)."),
			errors:    counter(metricSubErrors, "{subscription}", "SubscribeToShard calls and subscriptions failed other than for rate, by error_code (enhanced fan-out)."),
		}
	}
	reg, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for _, c := range coords {
			c.observe(o, m)
		}
		return nil
	}, m.millisBehind, m.held)
	if err != nil {
		errs = append(errs, err)
		reg = nil
	}
	if err := errors.Join(errs...); err != nil {
		s.log.Warn("source metrics not recorded in full", "err", err)
	}
	return m, reg
}

// shardMetrics are a reader's measurement options, made when it starts,
// and its last MillisBehindLatest for the gauge.
type shardMetrics struct {
	m      *sourceMetrics
	rc     *readCounters // the read mode's
	attrs  attribute.Set
	add    []metric.AddOption     // {stream, shard}
	obs    []metric.ObserveOption // {stream, shard}
	byCode map[string][]metric.AddOption
	behind atomic.Int64 // -1 until a GetRecords call succeeded
}

func (sm *shardMetrics) init(m *sourceMetrics, rc *readCounters, stream, shard string) {
	sm.m, sm.rc = m, rc
	sm.attrs = telemetry.Shard(stream, shard)
	opt := metric.WithAttributeSet(sm.attrs)
	sm.add = []metric.AddOption{opt}
	sm.obs = []metric.ObserveOption{opt}
	sm.behind.Store(-1)
}

// errorOpts returns the measurement options of an error of code, made at
// the first error of each code. Called from the reader's goroutine only.
func (sm *shardMetrics) errorOpts(code string) []metric.AddOption {
	if opts, ok := sm.byCode[code]; ok {
		return opts
	}
	if sm.byCode == nil {
		sm.byCode = make(map[string][]metric.AddOption)
	}
	kvs := append(sm.attrs.ToSlice(), telemetry.ErrorCode(code))
	opts := []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(kvs...))}
	sm.byCode[code] = opts
	return opts
}

// report records one read, a GetRecords call or a SubscribeToShard event
// (or a failed subscription), in the metrics and hands it to OnGetRecords.
// ctx is the read's: a read cut short because the reader stops is not
// counted as an error.
func (r *reader) report(ctx context.Context, ev GetRecordsEvent) {
	sm := &r.met
	if ev.Err == nil || sm.rc.failedToo {
		sm.rc.reads.Add(ctx, 1, sm.add...)
	}
	switch {
	case ev.Err == nil:
		sm.m.records.Add(ctx, int64(ev.UserRecords), sm.add...)
		sm.m.bytes.Add(ctx, int64(ev.Bytes), sm.add...)
		sm.behind.Store(ev.MillisBehindLatest)
	case ev.Throttled:
		sm.rc.throttles.Add(ctx, 1, sm.add...)
	case ctx.Err() == nil:
		sm.rc.errors.Add(ctx, 1, sm.errorOpts(telemetry.CodeOf(ev.Err))...)
	}
	r.notify(ev)
}

// observe reports the gauges of c's stream: the shards read now, and how
// far behind each is.
func (c *coordinator) observe(o metric.Observer, m *sourceMetrics) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, r := range c.readers {
		if r.stopping() {
			continue
		}
		n++
		if v := r.met.behind.Load(); v >= 0 {
			o.ObserveInt64(m.millisBehind, v, r.met.obs...)
		}
	}
	o.ObserveInt64(m.held, n, c.streamObs...)
}
