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

func TestHeartbeatsThatFailAreCountedAndLeasesAreLostAfterTheLeaseDuration(t *testing.T) {
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
		// Heartbeats fail from now on; reads still work.
		tb.mu.Lock()
		tb.fail = func(op string) (error, bool) {
			if op == "Beat" {
				return errDown, false
			}
			return nil, false
		}
		tb.mu.Unlock()
		// The next heartbeat is due one RenewInterval after the first; it
		// is retried until the leases would expire, then they are given up.
		// Each sync retries it within the sync interval, and the one that
		// finds no heartbeat succeeded for the lease duration gives the
		// leases up.
		time.Sleep(m.Options().RenewInterval)
		start, failed := time.Now(), int64(0)
		for {
			held, err := m.Sync(t.Context(), "st", shards)
			failed++
			if err == nil {
				if len(held) != 0 {
					t.Fatalf("Sync with a failing heartbeat = %v; want the leases given up", held)
				}
				break
			}
			if time.Since(start) > 2*m.LeaseDuration() {
				t.Fatalf("leases still held %v after the lease duration", time.Since(start))
			}
			time.Sleep(m.SyncInterval())
		}
		// Counters never added to are not reported at all. One failed
		// heartbeat per sync, whatever the number of leases.
		want := map[string]int64{lease.MetricTaken: 2, lease.MetricRenewFailures: failed, lease.MetricLost: 2, lease.MetricHeld: 0}
		if diff := cmp.Diff(want, leaseValues(t, r)); diff != "" {
			t.Errorf("lease metrics mismatch (-want +got):\n%s", diff)
		}
	})
}

func TestASyncWithNoHeartbeatDueMakesNoCallAndAFailedHeartbeatCountsOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := newTable()
		r := sdkmetric.NewManualReader()
		m := newManager(t, tb, "a")
		m.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(r)))
		if held, err := m.Sync(t.Context(), "st", []string{"s0", "s1", "s2"}); err != nil || len(held) != 3 {
			t.Fatalf("Sync = %v, %v; want every shard", held, err)
		}
		calls := 0
		tb.mu.Lock()
		tb.fail = func(string) (error, bool) { calls++; return errDown, false }
		tb.mu.Unlock()
		// Half a renew interval on, no heartbeat is due and nothing
		// changed: the sync calls the table not at all.
		time.Sleep(m.SyncInterval())
		if held, err := m.Sync(t.Context(), "st", []string{"s0", "s1", "s2"}); err != nil || len(held) != 3 {
			t.Fatalf("Sync with nothing due = %v, %v; want the three shards", held, err)
		}
		tb.mu.Lock()
		if calls != 0 {
			t.Errorf("Sync with nothing due made %d calls; want 0", calls)
		}
		tb.mu.Unlock()
		if got := leaseValues(t, r)[lease.MetricRenewFailures]; got != 0 {
			t.Errorf("renew failures before a heartbeat was due = %d; want 0", got)
		}
		time.Sleep(m.Options().RenewInterval - m.SyncInterval())
		if _, err := m.Sync(t.Context(), "st", []string{"s0", "s1", "s2"}); err == nil {
			t.Fatalf("Sync that cannot write its heartbeat succeeded")
		}
		got := leaseValues(t, r)
		if got[lease.MetricRenewFailures] != 1 || got[lease.MetricHeld] != 3 || got[lease.MetricLost] != 0 {
			t.Errorf("after a failed heartbeat: renew failures %d, held %d, lost %d; want 1, 3, 0",
				got[lease.MetricRenewFailures], got[lease.MetricHeld], got[lease.MetricLost])
		}
	})
}
