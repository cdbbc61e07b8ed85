package lease

import (
	"context"
	"errors"
	"sync"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/shardflow/shardflow/internal/telemetry"
)

// Instrument names of the lease metrics, as the README's table lists them.
// Every one has the attribute stream.
const (
	MetricHeld          = "shardflow.lease.held"
	MetricTaken         = "shardflow.lease.taken"
	MetricStolen        = "shardflow.lease.stolen"
	MetricHandedOver    = "shardflow.lease.handed_over"
	MetricLost          = "shardflow.lease.lost"
	MetricRenewFailures = "shardflow.lease.renew_failures"
)

// counter names a lease counter of [metrics].
type counter int

const (
	cTaken counter = iota
	cStolen
	cHandedOver
	cLost
	cRenewFailures
	nCounters
)

// counterDefs are the counters' names, units and descriptions, by counter.
var counterDefs = [nCounters]struct{ name, unit, desc string }{
	cTaken:         {MetricTaken, "{lease}", "Free or expired leases this instance took."},
	cStolen:        {MetricStolen, "{lease}", "Leases this instance took from a live owner that handed them over for balance."},
	cHandedOver:    {MetricHandedOver, "{lease}", "Leases this instance handed over to another instance that asked for them."},
	cLost:          {MetricLost, "{lease}", "Leases this instance lost without handing them over: taken by another instance, freed or reset, or not renewed for the lease duration."},
	cRenewFailures: {MetricRenewFailures, "{call}", "Heartbeats of this instance (which keep its leases) that failed: the table could not be written in time."},
}

// metrics are a Manager's instruments, all made from one provider.
type metrics struct {
	mp       metric.MeterProvider // as set: nil means the global one
	counters [nCounters]metric.Int64Counter
	reg      metric.Registration // the held gauge's callback
}

// meters holds a Manager's provider and the instruments made from it. The
// instruments are made at the first use after the provider was set, so that
// a provider handed over by a pipeline before it runs is the one used, and
// not once per call.
type meters struct {
	mu  sync.Mutex
	mp  metric.MeterProvider // nil: the global provider
	cur *metrics             // made from mp; nil until first used
}

// streamAttrs are the precomputed measurement options of one stream.
type streamAttrs struct {
	add []metric.AddOption
	obs []metric.ObserveOption
}

// SetMeterProvider makes the manager record its lease metrics through mp
// from now on (nil: the global provider). The store calls it when a
// pipeline hands it its provider. It is safe to call at any time.
func (m *Manager) SetMeterProvider(mp metric.MeterProvider) {
	m.meters.mu.Lock()
	defer m.meters.mu.Unlock()
	m.meters.mp = mp
}

// metrics returns the instruments of the current provider, making them if
// the provider changed since they were made.
func (m *Manager) metrics() *metrics {
	ms := &m.meters
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if ms.cur != nil && ms.cur.mp == ms.mp {
		return ms.cur
	}
	if ms.cur != nil && ms.cur.reg != nil {
		_ = ms.cur.reg.Unregister() // the old provider's callback: never fails in the SDK
	}
	meter := telemetry.Meter(ms.mp)
	var errs []error
	in := &metrics{mp: ms.mp}
	for i, d := range counterDefs {
		c, err := meter.Int64Counter(d.name, metric.WithUnit(d.unit), metric.WithDescription(d.desc))
		if err != nil {
			errs = append(errs, err)
			c = noop.Int64Counter{}
		}
		in.counters[i] = c
	}
	held, err := meter.Int64ObservableGauge(MetricHeld, metric.WithUnit("{lease}"),
		metric.WithDescription("Leases this instance holds and renews: those it reads, and those it is handing over."))
	if err == nil {
		in.reg, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
			m.observeHeld(o, held)
			return nil
		}, held)
	}
	if err = errors.Join(append(errs, err)...); err != nil {
		m.logger().Warn("lease metrics not recorded in full", "err", err)
	}
	ms.cur = in
	return in
}

// attrsLocked returns the measurement options of stream's metrics, made
// once per stream. Called with m.mu held.
func (m *Manager) attrsLocked(stream string) streamAttrs {
	a, ok := m.attrs[stream]
	if !ok {
		opt := metric.WithAttributeSet(telemetry.Stream(stream))
		a = streamAttrs{add: []metric.AddOption{opt}, obs: []metric.ObserveOption{opt}}
		m.attrs[stream] = a
	}
	return a
}

// count adds n to counter c of stream.
func (m *Manager) count(ctx context.Context, stream string, c counter, n int64) {
	if n == 0 {
		return
	}
	m.mu.Lock()
	a := m.attrsLocked(stream)
	m.mu.Unlock()
	m.metrics().counters[c].Add(ctx, n, a.add...)
}

// observeHeld reports the leases held and renewed (read, or being handed
// over) of every stream this instance has synced, zero included.
func (m *Manager) observeHeld(o metric.Observer, held metric.Int64ObservableGauge) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := make(map[string]int64, len(m.attrs))
	for k, h := range m.held {
		if h.renewing.Load() {
			n[k.stream]++
		}
	}
	for stream, a := range m.attrs {
		o.ObserveInt64(held, n[stream], a.obs...)
	}
}
