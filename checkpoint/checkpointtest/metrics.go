package checkpointtest

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/internal/lease"
	"github.com/shardflow/shardflow/internal/telemetry"
)

// leaseMetrics reads the lease metrics of one instance, handed a provider
// of its own through shardflow.PipelineMeterProvider as a source would.
type leaseMetrics struct {
	r      *sdkmetric.ManualReader
	stream string
}

func meter(t *testing.T, s LeaseStore, stream string) *leaseMetrics {
	t.Helper()
	pm, ok := s.(shardflow.PipelineMeterProvider)
	if !ok {
		t.Fatalf("%T is not a shardflow.PipelineMeterProvider: a source cannot hand it the pipeline's meter provider", s)
	}
	r := sdkmetric.NewManualReader()
	pm.UsePipelineMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(r)))
	return &leaseMetrics{r: r, stream: stream}
}

// leaseCounts are the lease metrics of a stream; a metric not reported
// counts zero.
type leaseCounts struct {
	Held, Taken, Stolen, HandedOver, Lost, RenewFailures int64
}

func (m *leaseMetrics) counts(t *testing.T) leaseCounts {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := m.r.Collect(t.Context(), &rm); err != nil {
		t.Fatalf("collect metrics: %v", err)
	}
	want := telemetry.Stream(m.stream)
	values := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			var points []metricdata.DataPoint[int64]
			switch d := mt.Data.(type) {
			case metricdata.Sum[int64]:
				points = d.DataPoints
			case metricdata.Gauge[int64]:
				points = d.DataPoints
			default:
				continue
			}
			for _, p := range points {
				if p.Attributes.Equals(&want) {
					values[mt.Name] += p.Value
				} else if v, ok := p.Attributes.Value("stream"); ok && v == attribute.StringValue(m.stream) {
					t.Errorf("metric %s has attributes %v; want exactly {stream}", mt.Name, p.Attributes.ToSlice())
				}
			}
		}
	}
	return leaseCounts{
		Held: values[lease.MetricHeld], Taken: values[lease.MetricTaken], Stolen: values[lease.MetricStolen],
		HandedOver: values[lease.MetricHandedOver], Lost: values[lease.MetricLost], RenewFailures: values[lease.MetricRenewFailures],
	}
}

func (m *leaseMetrics) check(t *testing.T, who string, want leaseCounts) {
	t.Helper()
	if diff := cmp.Diff(want, m.counts(t)); diff != "" {
		t.Errorf("lease metrics of %s mismatch (-want +got):\n%s", who, diff)
	}
}

// metricCases check the lease metrics every leasing store records through
// a provider handed to it with UsePipelineMeterProvider. (Renewal failures
// need a table that fails on demand: package lease tests them.)
var metricCases = []struct {
	name string
	run  func(t *testing.T, newInstance NewInstance, stream string)
}{
	{"lease metrics count the leases taken and held, and a release lowers held", func(t *testing.T, newInstance NewInstance, stream string) {
		a := newInstance(t, "a")
		ma := meter(t, a, stream)
		shards := shardIDs(3)
		if held, err := a.SyncLeases(t.Context(), stream, shards); err != nil || len(held) != 3 {
			t.Fatalf("SyncLeases = %v, %v; want every shard", held, err)
		}
		ma.check(t, "a", leaseCounts{Held: 3, Taken: 3})
		if err := a.ReleaseLease(t.Context(), stream, shards[0]); err != nil {
			t.Fatal(err)
		}
		// Syncs that renew the leases left count nothing new.
		for range 3 {
			sleep(t, a.LeaseSyncInterval())
			if held, err := a.SyncLeases(t.Context(), stream, shards[1:]); err != nil || len(held) != 2 {
				t.Fatalf("SyncLeases = %v, %v; want the two shards left", held, err)
			}
		}
		ma.check(t, "a", leaseCounts{Held: 2, Taken: 3})
	}},
	{"lease metrics count a balancing hand-over as handed over by the giver and stolen by the taker", func(t *testing.T, newInstance NewInstance, stream string) {
		a := &node{s: newInstance(t, "a"), reading: map[string]int{}}
		b := &node{s: newInstance(t, "b"), reading: map[string]int{}}
		ma, mb := meter(t, a.s, stream), meter(t, b.s, stream)
		shards := shardIDs(4)
		a.step(t, stream, shards)
		deadline := time.Now().Add(20 * LeaseDuration)
		for len(a.reading) != 2 || len(b.reading) != 2 {
			if time.Now().After(deadline) {
				t.Fatalf("not balanced: a %v, b %v", a.reading, b.reading)
			}
			b.step(t, stream, shards)
			a.step(t, stream, shards)
			sleep(t, a.s.LeaseSyncInterval())
		}
		ma.check(t, "a", leaseCounts{Held: 2, Taken: 4, HandedOver: 2})
		mb.check(t, "b", leaseCounts{Held: 2, Stolen: 2})
	}},
	{"lease metrics count the leases of an instance that stopped syncing as lost by it and taken by the other", func(t *testing.T, newInstance NewInstance, stream string) {
		a, b := newInstance(t, "a"), newInstance(t, "b")
		ma, mb := meter(t, a, stream), meter(t, b, stream)
		shards := shardIDs(2)
		if held, _ := a.SyncLeases(t.Context(), stream, shards); len(held) != 2 {
			t.Fatalf("a holds %v; want both", held)
		}
		start := time.Now()
		for {
			held, err := b.SyncLeases(t.Context(), stream, shards)
			if err != nil {
				t.Fatal(err)
			}
			if len(held) == 2 {
				break
			}
			if time.Since(start) > 10*LeaseDuration {
				t.Fatalf("b holds %v after %v", held, time.Since(start))
			}
			sleep(t, b.LeaseSyncInterval())
		}
		mb.check(t, "b", leaseCounts{Held: 2, Taken: 2})
		// a finds one lease lost at a save, the other at its next sync:
		// each is counted once.
		if err := a.Save(t.Context(), stream, shards[0], seq(4)); err == nil {
			t.Fatalf("stale owner's Save succeeded")
		}
		if held, err := a.SyncLeases(t.Context(), stream, shards); err != nil || len(held) != 0 {
			t.Fatalf("stale owner's SyncLeases = %v, %v; want nothing", held, err)
		}
		if _, err := a.SyncLeases(t.Context(), stream, shards); err != nil {
			t.Fatal(err)
		}
		ma.check(t, "a", leaseCounts{Taken: 2, Lost: 2})
	}},
	{"lease metrics count a lease whose checkpoint was reset as lost once, and taken again", func(t *testing.T, newInstance NewInstance, stream string) {
		a := newInstance(t, "a")
		r, ok := a.(Resetter)
		if !ok {
			t.Fatalf("%T has no ResetCheckpoint", a)
		}
		ma := meter(t, a, stream)
		shards := shardIDs(1)
		if held, err := a.SyncLeases(t.Context(), stream, shards); err != nil || len(held) != 1 {
			t.Fatalf("SyncLeases = %v, %v", held, err)
		}
		if err := r.ResetCheckpoint(t.Context(), stream, shards[0]); err != nil {
			t.Fatal(err)
		}
		if err := a.Save(t.Context(), stream, shards[0], seq(6)); err == nil {
			t.Fatalf("holder's Save after the reset succeeded")
		}
		ma.check(t, "a", leaseCounts{Taken: 1, Lost: 1})
		for range 2 { // the first sync leaves the shard out; the second takes it
			if _, err := a.SyncLeases(t.Context(), stream, shards); err != nil {
				t.Fatal(err)
			}
		}
		ma.check(t, "a", leaseCounts{Held: 1, Taken: 2, Lost: 1})
	}},
}
