package main

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
)

// The work of part 1, as in the root package's bench_test.go: Map doubles,
// Filter drops multiples of 3, the sink counts.
func double(_ context.Context, n int) (int, error)     { return 2 * n, nil }
func notTriple(_ context.Context, n int) (bool, error) { return n%3 != 0, nil }

// kept is how many of 1..n the filter keeps: 2i is a multiple of 3 when i is.
func kept(n int) int { return n - n/3 }

func benchCore(ctx context.Context, t *table, c config) error {
	for _, shards := range []int{1, 4} {
		var lib, hand []sample
		for rep := range c.reps {
			// Alternate which side goes first, so that drift in what else
			// the machine does spreads over both.
			sides := []func() error{
				func() error { s, err := corePipeline(ctx, shards, c.coreRecords); lib = append(lib, s); return err },
				func() error { s, err := coreHandLoop(shards, c.coreRecords); hand = append(hand, s); return err },
			}
			if rep%2 == 1 {
				sides[0], sides[1] = sides[1], sides[0]
			}
			for _, side := range sides {
				if err := side(); err != nil {
					return err
				}
			}
		}
		t.add(fmt.Sprintf("%d shard(s)", shards), lib, hand, nsPerRecord, cpuNsPerRecord, allocsPerRecord)
	}
	t.note("4 shards run on GOMAXPROCS cores: wall ns/record below CPU ns/record means the shards ran in parallel.")
	return nil
}

func shardName(i int) string { return "shard-" + strconv.Itoa(i) }

// corePipeline runs the pipeline over records values spread on shards and
// checks that every shard was checkpointed at its last record.
func corePipeline(ctx context.Context, shards, records int) (sample, error) {
	per := records / shards
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
	pl := shardflow.Source(src).Map(double).Filter(notTriple).Sink(sink)

	var m meter
	m.begin(per * shards)
	err := pl.Run(ctx)
	m.finish()
	if err != nil {
		return sample{}, fmt.Errorf("pipeline core: run: %w", err)
	}
	if got, want := count.Load(), int64(kept(per)*shards); got != want {
		return sample{}, fmt.Errorf("pipeline core: the sink got %d values; want %d", got, want)
	}
	want := shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: strconv.Itoa(per)}}
	for s := range shards {
		if cp, _ := store.Checkpoint("bench", shardName(s)); cp != want {
			return sample{}, fmt.Errorf("pipeline core: %s checkpointed at %+v; want %+v", shardName(s), cp, want)
		}
	}
	return m.sample(), nil
}

// coreHandLoop is the floor: per shard, a goroutine sends the values with
// their positions on a channel to a worker that does the same map, filter
// and count and remembers the last position.
func coreHandLoop(shards, records int) (sample, error) {
	per := records / shards
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

	var m meter
	m.begin(per * shards)
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
	lasts := make([]shardflow.Position, shards)
	for i := range shards {
		lasts[i] = <-done
	}
	m.finish()

	if got, want := count.Load(), int64(kept(per)*shards); got != want {
		return sample{}, fmt.Errorf("hand loop: counted %d values; want %d", got, want)
	}
	for _, last := range lasts {
		if last.SequenceNumber != strconv.Itoa(per) {
			return sample{}, fmt.Errorf("hand loop: last position %+v; want %d", last, per)
		}
	}
	return m.sample(), nil
}
