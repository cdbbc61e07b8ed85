package shardflow_test

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
)

// The work of both benchmarks: Map doubles, Filter drops multiples of 3,
// the sink counts.
func double(_ context.Context, n int) (int, error)     { return 2 * n, nil }
func notTriple(_ context.Context, n int) (bool, error) { return n%3 != 0, nil }

// BenchmarkPipeline measures Source→Map→Filter→Sink over the in-memory source
// with checkpoint tracking on (memory store): ns and allocs per record.
func BenchmarkPipeline(b *testing.B) {
	for _, shards := range []int{1, 4} {
		b.Run(fmt.Sprintf("shards=%d", shards), func(b *testing.B) {
			store := memory.New()
			src := shardflowtest.NewSource[int]("bench", func(o *shardflowtest.SourceOptions) { o.Store = store })
			per := b.N/shards + 1
			for s := range shards {
				src.AddShard(fmt.Sprint("shard-", s), ints(per)...)
			}
			var count atomic.Int64
			sink := shardflow.SinkFunc[int](func(context.Context, int) error {
				count.Add(1)
				return nil
			})
			pl := shardflow.Source(src).Map(double).Filter(notTriple).Sink(sink)
			runtime.GC() // settle the setup's garbage before timing
			b.ReportAllocs()
			b.ResetTimer()
			if err := pl.Run(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(per*shards), "ns/record")
			if cp, _ := store.Checkpoint("bench", "shard-0"); cp != seq(per) {
				b.Fatalf("checkpoint %+v; want %d", cp, per)
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
			type rec struct {
				pos shardflow.Position
				v   int
			}
			vals := make([]rec, per)
			for i := range vals {
				vals[i] = rec{shardflow.Position{SequenceNumber: strconv.Itoa(i + 1)}, i + 1}
			}
			var count atomic.Int64
			ctx := context.Background()
			runtime.GC()
			b.ReportAllocs()
			b.ResetTimer()
			done := make(chan int, shards)
			for range shards {
				ch := make(chan rec, 1000)
				go func() {
					for _, v := range vals {
						ch <- v
					}
					close(ch)
				}()
				go func() {
					var last shardflow.Position
					for r := range ch {
						m, _ := double(ctx, r.v)
						if keep, _ := notTriple(ctx, m); keep {
							count.Add(1)
						}
						last = r.pos
					}
					n, _ := strconv.Atoi(last.SequenceNumber)
					done <- n
				}()
			}
			for range shards {
				if last := <-done; last != per {
					b.Fatalf("last %d; want %d", last, per)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(per*shards), "ns/record")
		})
	}
}
