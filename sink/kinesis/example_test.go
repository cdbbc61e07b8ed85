package kinesissink_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
)

// A pipeline that writes each order to a Kinesis stream, keyed by customer
// so a customer's orders stay in order. The in-memory fake stands in for a
// *kinesis.Client (created with aws.NopRetryer{}: the sink retries itself).
func ExampleNew() {
	client := kinesisfake.New()
	_, _ = client.CreateStream(context.Background(), &kinesis.CreateStreamInput{StreamName: aws.String("orders-out"), ShardCount: aws.Int32(2)})

	type Order struct{ ID, Customer string }
	store := memory.New()
	src := shardflowtest.NewSource[Order]("orders", func(o *shardflowtest.SourceOptions) { o.Store = store }).
		AddShard("shard-0", Order{"o-1", "alice"}, Order{"o-2", "bob"}, Order{"o-3", "alice"})

	sink, err := kinesissink.New(client, "orders-out", func(o *kinesissink.Options) {
		o.Ordered = true // keep each customer's orders in order, even across retries
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	toEntry := kinesissink.ToEntry(
		func(_ context.Context, o Order) ([]byte, error) { return []byte(o.ID), nil },
		kinesissink.KeyFromField(func(o Order) string { return o.Customer }))

	if err := shardflow.Source(src).Map(toEntry).Sink(sink).Run(context.Background()); err != nil {
		fmt.Println("pipeline failed:", err)
		return
	}
	cp, _ := store.Checkpoint("orders", "shard-0")
	fmt.Println("every order written; checkpointed at", cp.SequenceNumber)
	// Output:
	// every order written; checkpointed at 3
}

// A standalone producer in a program that stops on SIGINT or SIGTERM: Close
// gets a deadline of its own, so buffered records are still sent after the
// signal, and what could not be sent in time is reported.
func ExampleProducer() {
	client := kinesisfake.New()
	_, _ = client.CreateStream(context.Background(), &kinesis.CreateStreamInput{StreamName: aws.String("events"), ShardCount: aws.Int32(1)})

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	producer, err := kinesissink.NewProducer(client, "events")
	if err != nil {
		fmt.Println(err)
		return
	}
	for i := range 3 {
		// Put blocks while the buffer is full, and returns when ctx ends.
		if err := producer.Put(ctx, fmt.Appendf(nil, "event %d", i), "device-7"); err != nil {
			fmt.Println("put:", err)
			break
		}
	}
	// One record with its own result: shard and sequence number, or the
	// error it failed with.
	_ = producer.PutEntry(ctx, kinesissink.Entry{Data: []byte("last"), PartitionKey: "device-7"}, func(r kinesissink.Result) {
		fmt.Println("last event written to", r.ShardID, "error:", r.Err)
	})

	// The signal context may be done by now: close with a fresh deadline.
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := producer.Close(closeCtx); err != nil {
		fmt.Println("not everything was written:", err)
	}
	recs, _ := client.Records("events", "shardId-000000000000")
	fmt.Println(len(recs), "records written")
	// Output:
	// last event written to shardId-000000000000 error: <nil>
	// 4 records written
}

// A producer held to each shard's write limit: 1.5 MB of aggregated
// records into one shard of a fake that enforces Kinesis' limits, which
// takes 1 MiB at once, then 1 MiB/s. The producer waits for the shard's
// budget instead of being throttled, and Close returns once every record
// is written, about half a second later.
func ExampleOptions_rateLimit() {
	f := kinesisfake.New(func(o *kinesisfake.Options) { o.Limits = kinesisfake.AWSLimits() })
	ctx := context.Background()
	if _, err := f.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String("events"), ShardCount: aws.Int32(1)}); err != nil {
		panic(err)
	}
	p, err := kinesissink.NewProducer(f, "events", func(o *kinesissink.Options) {
		o.Aggregate = true
		o.RateLimit = 1 // the default with Aggregate: 100 % of the limit
		o.Logger = slog.New(slog.DiscardHandler)
	})
	if err != nil {
		panic(err)
	}
	var written atomic.Int64
	data := make([]byte, 1000)
	for i := range 1500 {
		err := p.PutEntry(ctx, kinesissink.Entry{Data: data, PartitionKey: strconv.Itoa(i)}, func(r kinesissink.Result) {
			if r.Err == nil {
				written.Add(1)
			}
		})
		if err != nil {
			panic(err)
		}
	}
	if err := p.Close(ctx); err != nil {
		panic(err)
	}
	fmt.Println("written:", written.Load())
	// Output:
	// written: 1500
}
