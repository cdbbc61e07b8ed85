package main

import (
	"context"
	"fmt"

	"github.com/shardflow/shardflow/cmd/shardflow-bench/corebench"
)

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

// corePipeline times the pipeline over records values spread on shards and
// checks its result.
func corePipeline(ctx context.Context, shards, records int) (sample, error) {
	per := records / shards
	run, check := corebench.Pipeline(shards, per)
	var m meter
	m.begin(per * shards)
	err := run(ctx)
	m.finish()
	if err != nil {
		return sample{}, fmt.Errorf("pipeline core: run: %w", err)
	}
	return m.sample(), check()
}

// coreHandLoop times the floor (see corebench.HandLoop) and checks its
// result.
func coreHandLoop(shards, records int) (sample, error) {
	per := records / shards
	run, check := corebench.HandLoop(shards, per)
	var m meter
	m.begin(per * shards)
	run()
	m.finish()
	return m.sample(), check()
}
