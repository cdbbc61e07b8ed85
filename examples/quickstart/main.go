// Command quickstart runs a shardflow pipeline over the in-memory test kit
// and prints what it did: which records came out, which went to the
// dead-letter handler, where each shard was checkpointed, and how fast the
// pipeline core ran on a million records. It needs no AWS and no emulator.
//
//	GOTOOLCHAIN=go1.27.3 go run ./examples/quickstart
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"maps"
	"os"
	"os/signal"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
)

type order struct {
	ID       string `json:"id"`
	Customer string `json:"customer"`
	Amount   int    `json:"amount"`
}

func decode(_ context.Context, r shardflow.Record) (order, error) {
	var o order
	if err := json.Unmarshal(r.Data, &o); err != nil {
		return order{}, shardflow.Permanent(fmt.Errorf("decode record %s: %w", r.SequenceNumber, err))
	}
	return o, nil
}

func isLarge(_ context.Context, o order) (bool, error) { return o.Amount >= 100, nil }

func summarize(_ context.Context, o order) (string, error) {
	return fmt.Sprintf("%s: %s spent %d", o.ID, o.Customer, o.Amount), nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := sample(ctx); err != nil {
		log.Fatal(err)
	}
	if err := throughput(ctx); err != nil {
		log.Fatal(err)
	}
}

// sample runs a small data set of three shards, one bad record included.
func sample(ctx context.Context) error {
	store := memory.New()
	src := shardflowtest.NewSource[shardflow.Record]("orders", func(o *shardflowtest.SourceOptions) { o.Store = store }).
		AddShard("shardId-000000000000", shardflowtest.Records("orders", "shardId-000000000000",
			`{"id":"o-1","customer":"ana","amount":250}`,
			`{"id":"o-2","customer":"bo","amount":20}`,
			`{"id":"o-3","customer":"cy","amount":120}`)...).
		AddShard("shardId-000000000001", shardflowtest.Records("orders", "shardId-000000000001",
			`{"id":"o-4","customer":"di","amount":75}`,
			`not json`,
			`{"id":"o-6","customer":"ed","amount":990}`)...).
		AddShard("shardId-000000000002", shardflowtest.Records("orders", "shardId-000000000002",
			`{"id":"o-7","customer":"fay","amount":100}`)...)

	var mu sync.Mutex
	var out, dead []string
	err := shardflow.Source(src).
		DeadLetter(func(_ context.Context, r shardflow.Record, err error) error {
			mu.Lock()
			defer mu.Unlock()
			dead = append(dead, fmt.Sprintf("%s/%s: %v", r.ShardID, r.SequenceNumber, err))
			return nil
		}).
		Map(decode, shardflow.WithName("decode")).
		Filter(isLarge).
		Map(summarize).
		Sink(shardflow.SinkFunc[string](func(_ context.Context, s string) error {
			mu.Lock()
			defer mu.Unlock()
			out = append(out, s)
			return nil
		})).
		Run(ctx)
	if err != nil {
		return fmt.Errorf("sample pipeline: %w", err)
	}

	slices.Sort(out)
	fmt.Println("== sample: 7 orders on 3 shards -> decode -> amount >= 100 -> summary")
	fmt.Printf("records out (%d):\n", len(out))
	for _, s := range out {
		fmt.Println("  ", s)
	}
	fmt.Printf("dead letters (%d):\n", len(dead))
	for _, s := range dead {
		fmt.Println("  ", s)
	}
	fmt.Println("checkpoints:")
	cps := store.Checkpoints("orders")
	for _, shard := range slices.Sorted(maps.Keys(cps)) {
		fmt.Printf("   %s at sequence number %s\n", shard, cps[shard].SequenceNumber)
	}
	return nil
}

// throughput runs a million records on four shards through Map, Filter and
// a counting sink, with checkpoint tracking on.
func throughput(ctx context.Context) error {
	const shards, perShard = 4, 250_000
	store := memory.New()
	src := shardflowtest.NewSource[int]("numbers", func(o *shardflowtest.SourceOptions) { o.Store = store })
	vals := make([]int, perShard)
	for i := range vals {
		vals[i] = i
	}
	for s := range shards {
		src.AddShard(fmt.Sprintf("shardId-%012d", s), vals...)
	}
	var kept atomic.Int64
	start := time.Now()
	err := shardflow.Source(src).
		Map(func(_ context.Context, n int) (int, error) { return 2 * n, nil }).
		Filter(func(_ context.Context, n int) (bool, error) { return n%3 != 0, nil }).
		Sink(shardflow.SinkFunc[int](func(context.Context, int) error { kept.Add(1); return nil })).
		Run(ctx)
	if err != nil {
		return fmt.Errorf("throughput pipeline: %w", err)
	}
	elapsed := time.Since(start)
	total := shards * perShard
	fmt.Println("== throughput: 4 shards x 250,000 records -> map -> filter -> counting sink")
	fmt.Printf("records in %d, out %d, in %v: %.0f records/s, %.0f ns/record\n",
		total, kept.Load(), elapsed.Round(time.Millisecond),
		float64(total)/elapsed.Seconds(), float64(elapsed.Nanoseconds())/float64(total))
	cps := store.Checkpoints("numbers")
	for _, shard := range slices.Sorted(maps.Keys(cps)) {
		fmt.Printf("   %s checkpointed at sequence number %s\n", shard, cps[shard].SequenceNumber)
	}
	return nil
}
