package lease_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/shardflow/shardflow/checkpoint/internal/lease"
	"github.com/shardflow/shardflow/internal/telemetry"
)

// leaseValues collects r and returns the value of each lease metric of
// stream "st" by name; a metric not reported is absent.
func leaseValues(t *testing.T, r *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	want := telemetry.Stream("st")
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			var points []metricdata.DataPoint[int64]
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				points = d.DataPoints
			case metricdata.Gauge[int64]:
				points = d.DataPoints
			}
			for _, p := range points {
				if !p.Attributes.Equals(&want) {
					t.Errorf("%s has attributes %v; want {stream=st}", m.Name, p.Attributes.ToSlice())
				}
				out[m.Name] += p.Value
			}
		}
	}
	return out
}

func TestRenewalsThatFailAreCountedAndALeaseNotRenewedInTimeIsLost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := newTable()
		r := sdkmetric.NewManualReader()
		m, err := lease.New(tb, lease.Options{Owner: "a", MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))})
		if err != nil {
			t.Fatal(err)
		}
		shards := []string{"s0", "s1"}
		if held, err := m.Sync(t.Context(), "st", shards); err != nil || len(held) != 2 {
			t.Fatalf("Sync = %v, %v; want both shards", held, err)
		}
		// Renewals fail from now on; reads still work.
		tb.mu.Lock()
		tb.fail = func(op string) (error, bool) {
			if op == "Update" {
				return errDown, false
			}
			return nil, false
		}
		tb.mu.Unlock()
		// The next renewal is due one RenewInterval after the take; it is
		// retried until the leases would expire, then they are given up.
		time.Sleep(m.Options().RenewInterval)
		held, err := m.Sync(t.Context(), "st", shards)
		if err != nil || len(held) != 0 {
			t.Fatalf("Sync with failing renewals = %v, %v; want the leases given up", held, err)
		}
		// Counters never added to are not reported at all.
		want := map[string]int64{lease.MetricTaken: 2, lease.MetricRenewFailures: 2, lease.MetricLost: 2, lease.MetricHeld: 0}
		if diff := cmp.Diff(want, leaseValues(t, r)); diff != "" {
			t.Errorf("lease metrics mismatch (-want +got):\n%s", diff)
		}
	})
}

func TestASyncThatCannotReadTheTableCountsTheRenewalsDue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := newTable()
		r := sdkmetric.NewManualReader()
		m := newManager(t, tb, "a")
		m.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(r)))
		if held, err := m.Sync(t.Context(), "st", []string{"s0", "s1", "s2"}); err != nil || len(held) != 3 {
			t.Fatalf("Sync = %v, %v; want every shard", held, err)
		}
		tb.mu.Lock()
		tb.fail = func(string) (error, bool) { return errDown, false }
		tb.mu.Unlock()
		// Half a renew interval on, no renewal is due: a failed read
		// costs none. One more, the three are due and not made.
		time.Sleep(m.SyncInterval())
		if _, err := m.Sync(t.Context(), "st", []string{"s0", "s1", "s2"}); err == nil {
			t.Fatalf("Sync that cannot read the table succeeded")
		}
		if got := leaseValues(t, r)[lease.MetricRenewFailures]; got != 0 {
			t.Errorf("renew failures before a renewal was due = %d; want 0", got)
		}
		time.Sleep(m.Options().RenewInterval - m.SyncInterval())
		if _, err := m.Sync(t.Context(), "st", []string{"s0", "s1", "s2"}); err == nil {
			t.Fatalf("Sync that cannot read the table succeeded")
		}
		got := leaseValues(t, r)
		if got[lease.MetricRenewFailures] != 3 || got[lease.MetricHeld] != 3 || got[lease.MetricLost] != 0 {
			t.Errorf("after a failed sync with three renewals due: renew failures %d, held %d, lost %d; want 3, 3, 0",
				got[lease.MetricRenewFailures], got[lease.MetricHeld], got[lease.MetricLost])
		}
	})
}
