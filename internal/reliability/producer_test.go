package reliability_test

import (
	"crypto/md5"
	"fmt"
	"math/big"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow/internal/awstest"
	"github.com/shardflow/shardflow/internal/kpl"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
)

// An aggregating Producer whose shard map goes stale (the stream was split
// between two bursts) must leave on the stream exactly the records it
// reported written, as a KCL reader sees them: the KCL drops an aggregate
// as a whole when any member's hash key lies outside the shard it was read
// from, so a misrouted aggregate must be re-sent whole, and counted written
// only where it landed right.
func TestAggregatedProducerAcrossASplit(t *testing.T) {
	if testing.Short() {
		t.Skip("puts 5,000 records through the emulator; run without -short")
	}
	kc := awstest.KinesisClient(t)
	stream := awstest.CreateStream(t, kc, 4)
	p, err := kinesissink.NewProducer(kc, stream, func(o *kinesissink.Options) { o.Aggregate = true })
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	written := map[string]int{} // data -> times reported written
	failed := 0
	rng := rand.New(rand.NewPCG(1, 2))
	put := func(from, to int) {
		for i := from; i < to; i++ {
			data := fmt.Sprintf("rec-%05d", i)
			err := p.PutEntry(t.Context(), kinesissink.Entry{Data: []byte(data), PartitionKey: fmt.Sprintf("pk-%d", rng.Uint64())},
				func(r kinesissink.Result) {
					mu.Lock()
					defer mu.Unlock()
					if r.Err != nil {
						failed++
						return
					}
					written[string(r.Entry.Data)]++
				})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	const n = 2512
	put(0, n)
	if err := p.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	split(t, kc, stream)
	put(n, 2*n)
	if err := p.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if failed > 0 {
		t.Errorf("%d records failed", failed)
	}
	for d, k := range written {
		if k != 1 {
			t.Errorf("record %s reported written %d times", d, k)
		}
	}

	kcl, outside := readKCL(t, kc, stream)
	seen := map[string]int{}
	for _, d := range kcl {
		seen[d]++
	}
	lost, dups := 0, 0
	for d := range written {
		if seen[d] == 0 {
			lost++
		}
	}
	for d, k := range seen {
		if k > 1 {
			dups += k - 1
		}
		if written[d] == 0 {
			t.Errorf("the KCL reader read %s, never reported written", d)
		}
	}
	t.Logf("%d records reported written, %d read by the KCL rule, %d aggregates dropped by it", len(written), len(kcl), outside)
	if lost > 0 || dups > 0 {
		t.Errorf("KCL-rule reader: %d of %d records reported written are missing, %d duplicated", lost, len(written), dups)
	}
	if len(written) != 2*n {
		t.Errorf("%d records reported written; want %d", len(written), 2*n)
	}
}

// split splits the stream's first open shard at its midpoint and waits for
// the stream to be ACTIVE again.
func split(t *testing.T, kc *kinesis.Client, stream string) {
	t.Helper()
	ls, err := kc.ListShards(t.Context(), &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatal(err)
	}
	first := ls.Shards[0]
	start, _ := new(big.Int).SetString(aws.ToString(first.HashKeyRange.StartingHashKey), 10)
	end, _ := new(big.Int).SetString(aws.ToString(first.HashKeyRange.EndingHashKey), 10)
	mid := new(big.Int).Rsh(new(big.Int).Add(start, end), 1)
	if _, err := kc.SplitShard(t.Context(), &kinesis.SplitShardInput{StreamName: aws.String(stream), ShardToSplit: first.ShardId,
		NewStartingHashKey: aws.String(mid.String())}); err != nil {
		t.Fatalf("split: %v", err)
	}
	waitActive(t, kc, stream)
}

// readKCL reads every user record of a stream as the KCL does: an
// aggregate is de-aggregated, and dropped whole when any member's hash key
// lies outside the range of the shard it was read from. It returns the
// records' data, and how many aggregates it dropped.
func readKCL(t *testing.T, kc *kinesis.Client, stream string) (out []string, dropped int) {
	t.Helper()
	ls, err := kc.ListShards(t.Context(), &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatal(err)
	}
	for _, sh := range ls.Shards {
		lo, _ := new(big.Int).SetString(aws.ToString(sh.HashKeyRange.StartingHashKey), 10)
		hi, _ := new(big.Int).SetString(aws.ToString(sh.HashKeyRange.EndingHashKey), 10)
		it, err := kc.GetShardIterator(t.Context(), &kinesis.GetShardIteratorInput{StreamName: aws.String(stream), ShardId: sh.ShardId,
			ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
		if err != nil {
			t.Fatal(err)
		}
		for iter := it.ShardIterator; iter != nil; {
			res, err := kc.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: iter})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res.Records {
				members, err := kpl.Decode(r.Data)
				if err != nil {
					out = append(out, string(r.Data))
					continue
				}
				inRange := true
				for _, m := range members {
					h := hashKey(m.PartitionKey, m.ExplicitHashKey)
					if h.Cmp(lo) < 0 || h.Cmp(hi) > 0 {
						inRange = false
					}
				}
				if !inRange {
					dropped++
					continue
				}
				for _, m := range members {
					out = append(out, string(m.Data))
				}
			}
			if len(res.Records) == 0 && aws.ToInt64(res.MillisBehindLatest) == 0 {
				break
			}
			iter = res.NextShardIterator
		}
	}
	return out, dropped
}

func hashKey(pk, ehk string) *big.Int {
	if ehk != "" {
		h, _ := new(big.Int).SetString(ehk, 10)
		return h
	}
	sum := md5.Sum([]byte(pk))
	return new(big.Int).SetBytes(sum[:])
}
