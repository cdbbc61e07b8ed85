// Package corebench is the workload of the pipeline-core benchmark, shared
// by the go test benchmark (bench_test.go) and cmd/shardflow-bench, so both
// measure exactly the same thing: Source → Map (doubles) → Filter (drops
// multiples of 3) → counting Sink over the in-memory test source with memory
// checkpoints, and its floor, a hand-written goroutine+channel loop per shard
// doing the same work and carrying the same positions.
//
// It imports the root package, so it lives above it, next to the program
// that reports it, and not in the top-level internal/ that the root builds
// on. It is not an API: nothing outside this module should import it.
package corebench

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
)

func double(_ context.Context, n int) (int, error)     { return 2 * n, nil }
func notTriple(_ context.Context, n int) (bool, error) { return n%3 != 0, nil }

// kept is how many of 1..n the filter keeps: 2i is a multiple of 3 when i is.
func kept(n int) int { return n - n/3 }

func shardName(i int) string { return "shard-" + strconv.Itoa(i) }

// Pipeline builds the pipeline over shards shards of per records each. run
// is the part to time; check then verifies the count and that every shard
// was checkpointed at its last record.
//
// optFns adjust the pipeline's options after the benchmark's own (a quiet
// logger), e.g. to give it a meter provider.
func Pipeline(shards, per int, optFns ...func(*shardflow.Options)) (run func(context.Context) error, check func() error) {
	vals := make([]int, per)
	for i := range vals {
		vals[i] = i + 1
	}
	store := memory.New()
	src := shardflowtest.NewSource[int]("bench", func(o *shardflowtest.SourceOptions) { o.Store = store })
	for s := range shards {
		src.AddShard(shardName(s), vals...) // the shards only read vals
	}
	var count atomic.Int64
	sink := shardflow.SinkFunc[int](func(context.Context, int) error {
		count.Add(1)
		return nil
	})
	// Logging is not what is measured: the pipeline's lifecycle lines go nowhere.
	quiet := func(o *shardflow.Options) { o.Logger = slog.New(slog.DiscardHandler) }
	pl := shardflow.Source(src, append([]func(*shardflow.Options){quiet}, optFns...)...).Map(double).Filter(notTriple).Sink(sink)
	check = func() error {
		if got, want := count.Load(), int64(kept(per)*shards); got != want {
			return fmt.Errorf("pipeline core: the sink got %d values; want %d", got, want)
		}
		want := shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: strconv.Itoa(per)}}
		for s := range shards {
			if cp, _ := store.Checkpoint("bench", shardName(s)); cp != want {
				return fmt.Errorf("pipeline core: %s checkpointed at %+v; want %+v", shardName(s), cp, want)
			}
		}
		return nil
	}
	return pl.Run, check
}

// HandLoop builds the floor over shards shards of per records each. run is
// the part to time; check then verifies the count and each shard's last
// position.
func HandLoop(shards, per int) (run func(), check func() error) {
	type rec struct {
		pos shardflow.Position
		v   int
	}
	vals := make([]rec, per)
	for i := range vals {
		vals[i] = rec{shardflow.Position{SequenceNumber: strconv.Itoa(i + 1)}, i + 1}
	}
	ctx := context.Background()
	var count atomic.Int64
	lasts := make([]shardflow.Position, shards)
	run = func() {
		done := make(chan shardflow.Position, shards)
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
					v, _ := double(ctx, r.v)
					if keep, _ := notTriple(ctx, v); keep {
						count.Add(1)
					}
					last = r.pos
				}
				done <- last
			}()
		}
		for i := range shards {
			lasts[i] = <-done
		}
	}
	check = func() error {
		if got, want := count.Load(), int64(kept(per)*shards); got != want {
			return fmt.Errorf("hand loop: counted %d values; want %d", got, want)
		}
		for _, last := range lasts {
			if last.SequenceNumber != strconv.Itoa(per) {
				return fmt.Errorf("hand loop: last position %+v; want %d", last, per)
			}
		}
		return nil
	}
	return run, check
}
