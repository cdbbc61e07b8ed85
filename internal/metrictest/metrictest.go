// Package metrictest reads what the OpenTelemetry SDK recorded, for tests
// that assert exact metric values: one way to collect and walk the data
// instead of one per package.
package metrictest

import (
	"context"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// NewReader returns a manual reader and an SDK meter provider that records
// into it.
func NewReader() (*sdkmetric.ManualReader, *sdkmetric.MeterProvider) {
	r := sdkmetric.NewManualReader()
	return r, sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
}

// Point names one data point: its instrument and its attributes written
// as "k=v,k=v" in key order.
type Point struct{ Name, Attrs string }

// Collect collects r and returns every data point's value: sums and gauges
// (int64 and float64) as they are, histograms as their count.
func Collect(t testing.TB, r sdkmetric.Reader) map[Point]float64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect metrics: %v", err)
	}
	out := map[Point]float64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			add := func(s attribute.Set, v float64) { out[Point{m.Name, Attrs(s)}] = v }
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					add(p.Attributes, float64(p.Value))
				}
			case metricdata.Sum[float64]:
				for _, p := range d.DataPoints {
					add(p.Attributes, p.Value)
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					add(p.Attributes, float64(p.Value))
				}
			case metricdata.Gauge[float64]:
				for _, p := range d.DataPoints {
					add(p.Attributes, p.Value)
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					add(p.Attributes, float64(p.Count))
				}
			case metricdata.Histogram[int64]:
				for _, p := range d.DataPoints {
					add(p.Attributes, float64(p.Count))
				}
			default:
				t.Fatalf("metric %s: unexpected data %T", m.Name, m.Data)
			}
		}
	}
	return out
}

// Attrs writes an attribute set as "k=v,k=v", in key order.
func Attrs(s attribute.Set) string {
	var b strings.Builder
	for i, kv := range s.ToSlice() {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(string(kv.Key) + "=" + kv.Value.String())
	}
	return b.String()
}

// Total returns the sum of name's points whose attributes include each
// "k=v" of match.
func Total(points map[Point]float64, name string, match ...string) float64 {
	var n float64
	for p, v := range points {
		if p.Name != name {
			continue
		}
		all := true
		for _, m := range match {
			if !containsAttr(p.Attrs, m) {
				all = false
				break
			}
		}
		if all {
			n += v
		}
	}
	return n
}

func containsAttr(attrs, kv string) bool {
	for _, a := range strings.Split(attrs, ",") {
		if a == kv {
			return true
		}
	}
	return false
}
