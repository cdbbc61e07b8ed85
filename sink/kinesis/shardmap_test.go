package kinesissink

import (
	"math/rand/v2"
	"testing"
)

// shardOf finds the open shard holding a hash key as a scan of every shard
// does: at the first and last key of each range, one past them, in gaps
// between ranges (a stream resharding), and at random keys, for maps of 1
// to 9 shards.
func TestShardOfMatchesAScan(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(3, 4))
	scan := func(m *shardMap, h u128) string {
		for _, r := range m.open {
			if r.start.cmp(h) <= 0 && h.cmp(r.end) <= 0 {
				return r.id
			}
		}
		return ""
	}
	next := func(h u128) u128 {
		if h.lo++; h.lo == 0 {
			h.hi++
		}
		return h
	}
	prev := func(h u128) u128 {
		if h.lo--; h.lo == ^uint64(0) {
			h.hi--
		}
		return h
	}
	for n := 1; n <= 9; n++ {
		for round := range 20 {
			m := &shardMap{all: make(map[string]shardRange)}
			start := u128{}
			if round%2 == 1 {
				start = u128{lo: uint64(rng.IntN(1000))}
			}
			for i := range n {
				end := u128{hi: ^uint64(0), lo: ^uint64(0)}
				if i+1 < n {
					end = u128{hi: (uint64(i) + 1) * (^uint64(0) / uint64(n)), lo: rng.Uint64()}
				}
				if round%3 == 2 && i > 0 {
					start = next(next(start)) // a gap of one key
				}
				r := shardRange{id: "shard-" + string(rune('a'+i)), start: start, end: end, open: true}
				m.open = append(m.open, r)
				m.all[r.id] = r
				start = next(end)
			}
			var keys []u128
			for _, r := range m.open {
				keys = append(keys, r.start, prev(r.start), r.end, next(r.end))
			}
			for range 50 {
				keys = append(keys, u128{hi: rng.Uint64(), lo: rng.Uint64()})
			}
			for _, h := range keys {
				if got, want := m.shardOf(h), scan(m, h); got != want {
					t.Fatalf("%d shards, round %d: shardOf(%v) = %q, want %q", n, round, h, got, want)
				}
			}
		}
	}
}
