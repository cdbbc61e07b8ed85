package kinesissource_test

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// Reading a stream with checkpoints. The in-memory fake stands in for a
// *kinesis.Client here; with AWS, build the source with
// kinesissource.NewFromConfig(cfg, "orders", ...) instead, which makes a
// client that leaves retries to the source.
func Example() {
	ctx := context.Background()
	client := kinesisfake.New()
	client.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String("orders"), ShardCount: aws.Int32(2)})
	client.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String("orders"), Records: []types.PutRecordsRequestEntry{
		{Data: []byte("order-1"), PartitionKey: aws.String("alice")},
		{Data: []byte("order-2"), PartitionKey: aws.String("bob")},
		{Data: []byte("order-3"), PartitionKey: aws.String("alice")},
	}})

	store := memory.New()
	src, err := kinesissource.New(client, "orders", func(o *kinesissource.Options) {
		o.Store = store
		o.InitialPosition = kinesissource.TrimHorizon()
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	// A stream has no end: this example stops the pipeline once it got the
	// three records. Run then drains and saves the final checkpoints.
	ctx, cancel := context.WithCancel(ctx)
	var mu sync.Mutex
	var got []string
	err = shardflow.Source(src).
		Map(func(_ context.Context, r shardflow.Record) (string, error) {
			return r.PartitionKey + ": " + string(r.Data), nil
		}).
		Sink(shardflow.SinkFunc[string](func(_ context.Context, s string) error {
			mu.Lock()
			defer mu.Unlock()
			if got = append(got, s); len(got) == 3 {
				cancel()
			}
			return nil
		})).
		Run(ctx)

	slices.Sort(got)
	fmt.Println(got, err)
	fmt.Println("shards checkpointed:", len(store.Checkpoints("orders")))
	// Output:
	// [alice: order-1 alice: order-3 bob: order-2] <nil>
	// shards checkpointed: 2
}

// Reading two streams in one pipeline, with one checkpoint store: each
// record carries the name of its stream. With a leasing store (the
// DynamoDB store), the instances of the pipeline share one lease table and
// divide the shards of every stream between them.
func ExampleNewStreams() {
	ctx := context.Background()
	client := kinesisfake.New()
	for _, name := range []string{"orders", "payments"} {
		client.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(1)})
	}
	put := func(stream, data string) {
		client.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: aws.String(stream), Data: []byte(data), PartitionKey: aws.String("alice")})
	}
	put("orders", "order-1")
	put("payments", "payment-1")
	put("orders", "order-2")

	store := memory.New()
	src, err := kinesissource.NewStreams(client, []kinesissource.Stream{
		{Name: "orders", InitialPosition: kinesissource.TrimHorizon()},
		// A zero InitialPosition means Options.InitialPosition.
		{Name: "payments"},
	}, func(o *kinesissource.Options) {
		o.Store = store
		o.InitialPosition = kinesissource.TrimHorizon()
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("streams:", src.Streams())

	ctx, cancel := context.WithCancel(ctx)
	var mu sync.Mutex
	var got []string
	err = shardflow.Source(src).
		Map(func(_ context.Context, r shardflow.Record) (string, error) {
			return r.Stream + ": " + string(r.Data), nil
		}).
		Sink(shardflow.SinkFunc[string](func(_ context.Context, s string) error {
			mu.Lock()
			defer mu.Unlock()
			if got = append(got, s); len(got) == 3 {
				cancel()
			}
			return nil
		})).
		Run(ctx)

	slices.Sort(got)
	fmt.Println(got, err)
	fmt.Println("checkpointed:", len(store.Checkpoints("orders")), "shard of orders,", len(store.Checkpoints("payments")), "of payments")
	// Output:
	// streams: [orders payments]
	// [orders: order-1 orders: order-2 payments: payment-1] <nil>
	// checkpointed: 1 shard of orders, 1 of payments
}
