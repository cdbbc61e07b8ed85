package shardflow_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/shardflow/shardflow/cmd/shardflow-bench/corebench"
)

// BenchmarkPipeline measures Source→Map→Filter→Sink over the in-memory source
// with checkpoint tracking on (memory store): ns and allocs per record.
func BenchmarkPipeline(b *testing.B) {
	for _, shards := range []int{1, 4} {
		b.Run(fmt.Sprintf("shards=%d", shards), func(b *testing.B) {
			per := b.N/shards + 1
			run, check := corebench.Pipeline(shards, per)
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
