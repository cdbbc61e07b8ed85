package kinesissink

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"weak"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow/internal/telemetry"
)

// The sink's instruments; the package doc's Metrics section says what each
// counts.
const (
	metricRecords       = "shardflow.sink.records"
	metricBytes         = "shardflow.sink.bytes"
	metricGivenUp       = "shardflow.sink.records.given_up"
	metricFailedEntries = "shardflow.sink.failed_entries"
	metricRetries       = "shardflow.sink.retries"
	metricCallErrors    = "shardflow.sink.putrecords.errors"
	metricCallDuration  = "shardflow.sink.putrecords.duration"
	metricCallEntries   = "shardflow.sink.putrecords.entries"
	metricBufRecords    = "shardflow.sink.buffered.records"
	metricBufBytes      = "shardflow.sink.buffered.bytes"
	metricRateLimited   = "shardflow.sink.rate_limited"
)

// maxCodeSets bounds the error_code attribute sets a metrics keeps: AWS
// sends a handful of codes, but nothing stops a server from sending more.
const maxCodeSets = 64

// metrics are an engine's instruments, made once from one meter provider,
// with the attribute sets they record with computed once, so that recording
// allocates nothing. The engine records per PutRecords call and per batch of
// outcomes, never per record. Its methods are safe for concurrent use.
type metrics struct {
	records, bytes, givenUp  metric.Int64Counter
	failed, retries, callErr metric.Int64Counter
	rateLimited              metric.Int64Counter
	duration                 metric.Float64Histogram
	entries                  metric.Int64Histogram
	gauges                   metric.Registration // nil: not registered

	stream   string
	add      []metric.AddOption    // {stream}
	record   []metric.RecordOption // {stream}
	observe  []metric.ObserveOption
	codesMu  sync.Mutex
	codeSets map[string][]metric.AddOption // {stream, error_code}
}

// newMetrics makes the instruments of a sink writing to stream from mp (nil:
// the global provider). When buffered is not nil, the buffered gauges are
// registered with it as their callback: it returns the records and bytes
// held, and false once there is no engine left to ask.
func newMetrics(mp metric.MeterProvider, stream string, buffered func() (records, bytes int, ok bool)) *metrics {
	meter := telemetry.Meter(mp)
	set := telemetry.Stream(stream)
	m := &metrics{
		stream:   stream,
		add:      []metric.AddOption{metric.WithAttributeSet(set)},
		record:   []metric.RecordOption{metric.WithAttributeSet(set)},
		observe:  []metric.ObserveOption{metric.WithAttributeSet(set)},
		codeSets: make(map[string][]metric.AddOption),
	}
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	m.records = counter(metricRecords, "{record}", "Records written and acknowledged.")
	m.bytes = counter(metricBytes, "By", "Data and partition key bytes of the records written.")
	m.givenUp = counter(metricGivenUp, "{record}", "Accepted records that were not written: refused for good, out of retries, or failed by Close.")
	m.failed = counter(metricFailedEntries, "{record}", "PutRecords entries that an answer refused, retried or not.")
	m.retries = counter(metricRetries, "{retry}", "PutRecords entries sent again after a refusal, a failed call or a misrouted aggregate.")
	m.callErr = counter(metricCallErrors, "{call}", "PutRecords calls that failed as a whole.")
	m.rateLimited = counter(metricRateLimited, "{record}", "Records that waited for their shard's share of its write limit (Options.RateLimit) before they were sent.")
	var err error
	m.duration, err = meter.Float64Histogram(metricCallDuration, metric.WithUnit("s"),
		metric.WithDescription("Latency of PutRecords calls, failed ones included."),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30))
	errs = append(errs, err)
	m.entries, err = meter.Int64Histogram(metricCallEntries, metric.WithUnit("{record}"),
		metric.WithDescription("Entries per PutRecords call (KPL aggregates count once)."),
		metric.WithExplicitBucketBoundaries(1, 5, 10, 25, 50, 100, 250, 499, 500))
	errs = append(errs, err)
	if buffered != nil {
		// Up-down counters, not gauges: two sinks writing to the same
		// stream add up, where gauges would hide one behind the other.
		// Exporters such as Prometheus show them as gauges.
		recs, err := meter.Int64ObservableUpDownCounter(metricBufRecords, metric.WithUnit("{record}"),
			metric.WithDescription("Records accepted whose outcome is not known yet."))
		errs = append(errs, err)
		byts, err := meter.Int64ObservableUpDownCounter(metricBufBytes, metric.WithUnit("By"),
			metric.WithDescription("Data and partition key bytes of the records accepted whose outcome is not known yet."))
		errs = append(errs, err)
		obs := m.observe
		m.gauges, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
			n, b, ok := buffered()
			if ok {
				o.ObserveInt64(recs, int64(n), obs...)
				o.ObserveInt64(byts, int64(b), obs...)
			}
			return nil
		}, recs, byts)
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		otel.Handle(err)
	}
	return m
}

// stopGauges unregisters the buffered gauges.
func (m *metrics) stopGauges() {
	if m.gauges != nil {
		if err := m.gauges.Unregister(); err != nil {
			otel.Handle(err)
		}
	}
}

// codeOpts returns the options of the {stream, error_code} attribute set.
func (m *metrics) codeOpts(code string) []metric.AddOption {
	m.codesMu.Lock()
	defer m.codesMu.Unlock()
	if o, ok := m.codeSets[code]; ok {
		return o
	}
	o := []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(telemetry.KeyStream.String(m.stream), telemetry.ErrorCode(code)))}
	if len(m.codeSets) < maxCodeSets {
		m.codeSets[code] = o
	}
	return o
}

// codeCount is a number of entries or records by error code.
type codeCount struct {
	code string
	n    int
}

// addCode counts one more for code in cs. Failures are rare and come
// with one or two codes, so a slice beats a map.
func addCode(cs []codeCount, code string) []codeCount {
	for i := range cs {
		if cs[i].code == code {
			cs[i].n++
			return cs
		}
	}
	return append(cs, codeCount{code: code, n: 1})
}

func (m *metrics) addByCode(c metric.Int64Counter, cs []codeCount) {
	for _, cc := range cs {
		c.Add(context.Background(), int64(cc.n), m.codeOpts(cc.code)...)
	}
}

// call records one PutRecords call of entries wire entries that took
// seconds; err is its error, if it failed as a whole.
func (m *metrics) call(entries int, seconds float64, err error) {
	ctx := context.Background()
	m.duration.Record(ctx, seconds, m.record...)
	m.entries.Record(ctx, int64(entries), m.record...)
	if err != nil {
		m.callErr.Add(ctx, 1, m.codeOpts(telemetry.CodeOf(err))...)
	}
}

// refused records the entries a PutRecords answer refused, by code.
func (m *metrics) refused(cs []codeCount) { m.addByCode(m.failed, cs) }

// resent records n wire entries sent again.
func (m *metrics) resent(n int) {
	if n > 0 {
		m.retries.Add(context.Background(), int64(n), m.add...)
	}
}

// limited records n records that waited for their shard's budget.
func (m *metrics) limited(n int) {
	if n > 0 {
		m.rateLimited.Add(context.Background(), int64(n), m.add...)
	}
}

// settled records the outcomes of a batch of records: written of them,
// of bytes bytes, were written; lost are the others, by code.
func (m *metrics) settled(written, bytes int, lost []codeCount) {
	if written > 0 {
		m.records.Add(context.Background(), int64(written), m.add...)
		m.bytes.Add(context.Background(), int64(bytes), m.add...)
	}
	m.addByCode(m.givenUp, lost)
}

// givenUpCode is the error_code of a record that was not written: Kinesis'
// per-entry code, else the AWS code of the request's error, else "" (the
// sink was closed, or a network error).
func givenUpCode(err error) string {
	if pe, ok := errors.AsType[*PutError](err); ok && pe.ErrorCode != "" {
		return pe.ErrorCode
	}
	if ee, ok := errors.AsType[*EntryError](err); ok {
		return ee.Code
	}
	return telemetry.CodeOf(err)
}

// metrics returns the engine's instruments, making them from the provider
// settled by now (Options.MeterProvider, the pipeline's, else the global
// one) on first use. It must not be called with mu held (see engine).
func (e *engine) metrics() *metrics {
	if m := e.met.Load(); m != nil {
		return m
	}
	e.meterMu.Lock()
	defer e.meterMu.Unlock()
	if m := e.met.Load(); m != nil {
		return m
	}
	m := e.newMetricsLocked()
	e.met.Store(m)
	return m
}

// newMetricsLocked makes instruments from e.mp, with the buffered gauges
// unless the engine is closed. Called with meterMu held.
//
// The gauges' callback reaches the engine through a weak pointer, so that
// a provider (the global one, say) does not keep alive an engine that was
// dropped without Close; a cleanup unregisters the callback then.
func (e *engine) newMetricsLocked() *metrics {
	if e.metricsStopped {
		return newMetrics(e.mp, e.stream, nil)
	}
	wp := weak.Make(e)
	m := newMetrics(e.mp, e.stream, func() (int, int, bool) {
		live := wp.Value()
		if live == nil {
			return 0, 0, false
		}
		live.mu.Lock()
		defer live.mu.Unlock()
		return live.bufRecords, live.bufBytes, true
	})
	if m.gauges != nil {
		runtime.AddCleanup(e, func(r metric.Registration) { _ = r.Unregister() }, m.gauges)
	}
	return m
}

// usePipelineMeterProvider records through mp from now on, unless
// Options.MeterProvider was set. Instruments made already are made again
// from mp (what they counted stays with the former provider).
func (e *engine) usePipelineMeterProvider(mp metric.MeterProvider) {
	if mp == nil || e.ownMeter {
		return
	}
	e.meterMu.Lock()
	defer e.meterMu.Unlock()
	e.mp = mp
	if old := e.met.Load(); old != nil {
		e.met.Store(e.newMetricsLocked())
		old.stopGauges()
	}
}

// stopMetrics unregisters the buffered gauges for good: Close calls it
// once no record is left.
func (e *engine) stopMetrics() {
	e.meterMu.Lock()
	defer e.meterMu.Unlock()
	e.metricsStopped = true
	if m := e.met.Load(); m != nil {
		m.stopGauges()
	}
}
