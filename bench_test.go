package shardflow_test

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shardflow/shardflow/shardflowtest"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/shardflow/shardflow"

	"github.com/shardflow/shardflow/cmd/shardflow-bench/corebench"
)

// BenchmarkPipeline measures Source→Map→Filter→Sink over the in-memory source
// with checkpoint tracking on (memory store): ns and allocs per record,
// with the default meter provider (the global one, a no-op here).
func BenchmarkPipeline(b *testing.B) { benchPipeline(b) }

// BenchmarkPipelineMetrics is BenchmarkPipeline recording its metrics
// through the OpenTelemetry SDK (a manual reader, collected once at the
// end): the cost of metrics enabled.
func BenchmarkPipelineMetrics(b *testing.B) {
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	benchPipeline(b, func(o *shardflow.Options) { o.MeterProvider = mp })
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil || len(rm.ScopeMetrics) == 0 {
		b.Fatalf("no metrics recorded: %v", err)
	}
}

func benchPipeline(b *testing.B, optFns ...func(*shardflow.Options)) {
	for _, shards := range []int{1, 4} {
		b.Run(fmt.Sprintf("shards=%d", shards), func(b *testing.B) {
			per := b.N/shards + 1
			run, check := corebench.Pipeline(shards, per, optFns...)
			runtime.GC() // settle the setup's garbage before timing
			b.ReportAllocs()
			b.ResetTimer()
			if err := run(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(per*shards), "ns/record")
			if err := check(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkHandLoop is the floor: a goroutine per shard sends values with
// their positions on a channel to a worker that does the same map, filter,
// count and remembers the last position, written by hand.
func BenchmarkHandLoop(b *testing.B) {
	for _, shards := range []int{1, 4} {
		b.Run(fmt.Sprintf("shards=%d", shards), func(b *testing.B) {
			per := b.N/shards + 1
			run, check := corebench.HandLoop(shards, per)
			runtime.GC()
			b.ReportAllocs()
			b.ResetTimer()
			run()
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(per*shards), "ns/record")
			if err := check(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkByKey measures what key workers buy a shard whose handler waits:
// one shard of records on 1,000 distinct keys (round robin), a handler that
// sleeps 20ms (an I/O call's stand-in), at 1, 10 and 100 workers. It reports
// records/s; one worker is the pipeline without ByKey's concurrency, at
// most 50 records/s.
func BenchmarkByKey(b *testing.B) {
	for _, workers := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			recs := make([]shardflow.Record, b.N)
			for i := range recs {
				recs[i] = shardflow.Record{PartitionKey: "key-" + strconv.Itoa(i%1000), SequenceNumber: strconv.Itoa(i + 1)}
			}
			src := shardflowtest.NewSource[shardflow.Record]("bench").AddShard("shard-0", recs...)
			var count atomic.Int64
			call := func(context.Context, shardflow.Record) error {
				time.Sleep(20 * time.Millisecond)
				return nil
			}
			pl := shardflow.ByKey(shardflow.Source(src, quiet), workers, nil).
				Tap(call).
				Sink(shardflow.SinkFunc[shardflow.Record](func(context.Context, shardflow.Record) error {
					count.Add(1)
					return nil
				}))
			b.ResetTimer()
			if err := pl.Run(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if got := count.Load(); got != int64(b.N) {
				b.Fatalf("the sink got %d records; want %d", got, b.N)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
		})
	}
}
