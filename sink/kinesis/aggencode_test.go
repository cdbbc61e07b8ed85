package kinesissink

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/shardflow/shardflow/internal/kpl"
)

// The request goroutines' encoder writes every aggregate byte for byte as
// kpl.Aggregator does: keys repeated in a row or not, explicit hash keys on
// some records, a key table sized from 1 to thousands of records, and one
// encoder reused from aggregate to aggregate (stale slots of an earlier
// aggregate must not be taken for keys of this one).
func TestAggEncoderMatchesKPLAggregator(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	var enc aggEncoder
	for round := range 400 {
		n := 1 + rng.IntN(50)
		if round%40 == 0 {
			n = 1 + rng.IntN(3000)
		}
		nkeys := 1 + rng.IntN(n+1)
		withEHK := round%3 == 0
		recs := make([]*record, n)
		var a kpl.Aggregator
		for i := range recs {
			e := Entry{PartitionKey: fmt.Sprintf("k%d", rng.IntN(nkeys)), Data: bytes.Repeat([]byte{byte(i)}, rng.IntN(300))}
			if withEHK && rng.IntN(2) == 0 {
				e.ExplicitHashKey = fmt.Sprint(rng.IntN(4))
			}
			if len(e.Data) == 0 {
				e.Data = []byte{1}
			}
			h, err := e.validate(MaxRecordBytesLimit, hashPartitionKey)
			if err != nil {
				t.Fatal(err)
			}
			recs[i] = &record{e: e, hash: h, size: e.size()}
			a.Add(e.PartitionKey, e.ExplicitHashKey, e.Data)
		}
		want := a.Encode()
		got := enc.encode(recs)
		if !bytes.Equal(got, want) {
			i := 0
			for i < min(len(got), len(want)) && got[i] == want[i] {
				i++
			}
			t.Fatalf("round %d (%d records, %d keys): the encoding differs from kpl.Aggregator's from byte %d of %d (want %d):\n got %x\nwant %x",
				round, n, nkeys, i, len(got), len(want), got[i:min(i+32, len(got))], want[i:min(i+32, len(want))])
		}
		if cap(got) != len(got) {
			t.Fatalf("round %d: the buffer is %d bytes for an aggregate of %d", round, cap(got), len(got))
		}
		back, err := kpl.Decode(got)
		if err != nil || len(back) != n {
			t.Fatalf("round %d: decode: %d records, %v", round, len(back), err)
		}
	}
}

// Keys whose hashes collide share a slot chain, not a table index.
func TestKeyTableCollidingHashes(t *testing.T) {
	t.Parallel()
	var kt keyTable
	kt.reset(3)
	a, b := kt.index("a", 7), kt.index("b", 7)
	if a == b || kt.index("a", 7) != a || kt.index("b", 7) != b || len(kt.keys) != 2 {
		t.Fatalf("indexes %d, %d, keys %q", a, b, kt.keys)
	}
	kt.reset(3)
	if i := kt.index("b", 7); i != 0 || len(kt.keys) != 1 {
		t.Fatalf("after reset: index %d, keys %q", i, kt.keys)
	}
}
