package shardflow_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
)

// The quick start: Kinesis records are decoded to a struct, filtered, turned
// into strings and written to a sink. The in-memory source and sink of
// package shardflowtest stand in for Kinesis here; the Kinesis source and
// sink plug into the same places.
func Example() {
	type Order struct {
		ID     string
		Amount int
	}
	decode := func(_ context.Context, r shardflow.Record) (Order, error) {
		id, amount, ok := strings.Cut(string(r.Data), "=")
		if !ok {
			return Order{}, shardflow.Permanent(fmt.Errorf("record %s: no '='", r.SequenceNumber))
		}
		n, err := strconv.Atoi(amount)
		return Order{ID: id, Amount: n}, err
	}
	isLarge := func(_ context.Context, o Order) (bool, error) { return o.Amount >= 100, nil }
	describe := func(_ context.Context, o Order) (string, error) {
		return fmt.Sprintf("%s (%d)", o.ID, o.Amount), nil
	}

	store := memory.New()
	src := shardflowtest.NewSource[shardflow.Record]("orders", func(o *shardflowtest.SourceOptions) {
		o.Store = store
	}).AddShard("shardId-000000000000", shardflowtest.Records("orders", "shardId-000000000000",
		"o-1=250", "o-2=20", "o-3=120")...)
	sink := shardflowtest.NewSink[string]()

	// Each Map may change the element type: Record, then Order, then string.
	err := shardflow.Source(src).
		Map(decode).
		Filter(isLarge).
		Map(describe).
		Sink(sink).
		Run(context.Background())
	if err != nil {
		fmt.Println("pipeline failed:", err)
		return
	}
	fmt.Println(sink.Items())
	cp, _ := store.Checkpoint("orders", "shardId-000000000000")
	fmt.Println("checkpointed at sequence number", cp.SequenceNumber)
	// Output:
	// [o-1 (250) o-3 (120)]
	// checkpointed at sequence number 3
}

// A record that fails a stage stops the pipeline by default. Run returns a
// *StageError naming the stage, shard and position, and the shard's
// checkpoint stays before the failed record, so it is read again after a
// restart.
func ExampleStageError() {
	store := memory.New()
	src := shardflowtest.NewSource[string]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).
		AddShard("shard-a", "1", "2", "three", "4")
	err := shardflow.Source(src).
		Map(func(_ context.Context, s string) (int, error) {
			n, err := strconv.Atoi(s)
			return n, shardflow.Permanent(err) // no use retrying bad input
		}, shardflow.WithName("parse")).
		Sink(shardflowtest.NewSink[int]()).
		Run(context.Background())

	if se, ok := errors.AsType[*shardflow.StageError](err); ok {
		fmt.Printf("stage %s failed at %s/%s sequence %s\n", se.Stage, se.Stream, se.ShardID, se.Position.SequenceNumber)
	}
	cp, _ := store.Checkpoint("s", "shard-a")
	fmt.Println("checkpoint:", cp.SequenceNumber)
	// Output:
	// stage parse failed at s/shard-a sequence 3
	// checkpoint: 2
}

// With a dead-letter handler, records that fail a stage are handed over
// with their error and the pipeline goes on; the checkpoint passes them once
// the handler returned nil. The handler takes the stage's input (a string
// here), which the compiler checks.
func ExampleStream_DeadLetter() {
	store := memory.New()
	src := shardflowtest.NewSource[string]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).
		AddShard("shard-a", "1", "2", "three", "4")
	sink := shardflowtest.NewSink[int]()
	err := shardflow.Source(src).
		DeadLetter(func(_ context.Context, s string, err error) error {
			fmt.Printf("dead letter %q: %v\n", s, err)
			return nil
		}).
		Map(func(_ context.Context, s string) (int, error) {
			n, err := strconv.Atoi(s)
			return n, shardflow.Permanent(err)
		}).
		Sink(sink).
		Run(context.Background())
	cp, _ := store.Checkpoint("s", "shard-a")
	fmt.Println(sink.Items(), err, "checkpoint:", cp.SequenceNumber)
	// Output:
	// dead letter "three": strconv.Atoi: parsing "three": invalid syntax
	// [1 2 4] <nil> checkpoint: 4
}

// Batch hands slices to handlers that work better on many values at once,
// like a bulk insert. Each batch holds at most MaxCount values and waits at
// most Linger for more.
func ExampleBatch() {
	src := shardflowtest.NewSource[int]("s").AddShard("shard-a", 1, 2, 3, 4, 5, 6, 7)
	sink := shardflowtest.NewSink[int]()
	err := shardflow.Batch(shardflow.Source(src), shardflow.BatchOptions[int]{MaxCount: 3}).
		Map(func(_ context.Context, batch []int) (int, error) {
			sum := 0
			for _, n := range batch {
				sum += n
			}
			return sum, nil
		}).
		Sink(sink).
		Run(context.Background())
	fmt.Println(sink.Items(), err)
	// Output:
	// [6 15 7] <nil>
}

// ByKey runs the stages after it on several workers per shard, so that a
// handler that waits (an API call, here) overlaps with the calls for other
// keys; each key's records still go through in order. The sink gets the
// keys interleaved in any order, and each key's values in order.
func ExampleByKey() {
	src := shardflowtest.NewSource[shardflow.Record]("orders").AddShard("shard-1",
		shardflow.Record{PartitionKey: "alice", Data: []byte("alice opens")},
		shardflow.Record{PartitionKey: "bob", Data: []byte("bob opens")},
		shardflow.Record{PartitionKey: "alice", Data: []byte("alice pays")},
		shardflow.Record{PartitionKey: "bob", Data: []byte("bob pays")},
		shardflow.Record{PartitionKey: "alice", Data: []byte("alice ships")},
	)
	var mu sync.Mutex
	byCustomer := map[string][]string{}
	callAPI := func(_ context.Context, r shardflow.Record) error {
		time.Sleep(time.Millisecond) // the call's round trip
		mu.Lock()
		defer mu.Unlock()
		byCustomer[r.PartitionKey] = append(byCustomer[r.PartitionKey], string(r.Data))
		return nil
	}
	keyed := shardflow.ByKey(shardflow.Source(src), 8, nil) // nil: by partition key
	err := keyed.Tap(callAPI).Sink(shardflowtest.NewSink[shardflow.Record]()).Run(context.Background())
	fmt.Println(byCustomer["alice"])
	fmt.Println(byCustomer["bob"], err)
	// Output:
	// [alice opens alice pays alice ships]
	// [bob opens bob pays] <nil>
}

// FlatMap turns one record into several values; the record counts as done
// only when all of them are.
func ExampleStream_FlatMap() {
	src := shardflowtest.NewSource[string]("s").AddShard("shard-a", "a b", "", "c")
	sink := shardflowtest.NewSink[string]()
	err := shardflow.Source(src).
		FlatMap(func(_ context.Context, line string) ([]string, error) { return strings.Fields(line), nil }).
		Sink(sink).
		Run(context.Background())
	fmt.Println(sink.Items(), err)
	// Output:
	// [a b c] <nil>
}

// Each turns a source into a for loop, for code that reads like
// kinesis-python's `for rec in KinesisConsumer(...)`. A record counts as done,
// and its shard's checkpoint may pass it, once the loop asks for the next one;
// breaking out saves the final checkpoints, so the next loop over the same
// store resumes at the record it broke out of.
func ExampleEach() {
	store := memory.New()
	newSource := func() *shardflowtest.Source[shardflow.Record] {
		return shardflowtest.NewSource[shardflow.Record]("orders", func(o *shardflowtest.SourceOptions) {
			o.Store = store
		}).AddShard("shardId-000000000000", shardflowtest.Records("orders", "shardId-000000000000",
			"o-1", "o-2", "stop", "o-4")...)
	}

	ctx := context.Background()
	for rec, err := range shardflow.Each(ctx, newSource()) {
		if err != nil {
			fmt.Println("source failed:", err)
			return
		}
		if string(rec.Data) == "stop" {
			break // "stop" is not done: the next loop starts with it
		}
		fmt.Println("first loop:", string(rec.Data))
	}
	cp, _ := store.Checkpoint("orders", "shardId-000000000000")
	fmt.Println("checkpointed at sequence number", cp.SequenceNumber)

	for rec, err := range shardflow.Each(ctx, newSource()) {
		if err != nil {
			fmt.Println("source failed:", err)
			return
		}
		fmt.Println("second loop:", string(rec.Data))
	}
	// Output:
	// first loop: o-1
	// first loop: o-2
	// checkpointed at sequence number 2
	// second loop: stop
	// second loop: o-4
}

// Metrics go through the OpenTelemetry metric API: give the pipeline a
// MeterProvider (here the SDK's, with a reader that is read by hand; a
// service would use an exporter such as Prometheus's) and its source, sink
// and checkpoint store record through it too.
func ExampleOptions_meterProvider() {
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))

	src := shardflowtest.NewSource[int]("numbers").AddShard("shard-1", 1, 2, 3, 4, 5, 6)
	even := func(_ context.Context, n int) (bool, error) { return n%2 == 0, nil }
	pl := shardflow.Source(src, func(o *shardflow.Options) { o.MeterProvider = provider }).
		Filter(even, shardflow.WithName("even")).
		Sink(shardflowtest.NewSink[int]())
	if err := pl.Run(context.Background()); err != nil {
		fmt.Println(err)
		return
	}

	var rm metricdata.ResourceMetrics
	_ = reader.Collect(context.Background(), &rm)
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "shardflow.stage.records.dropped" {
				continue
			}
			for _, p := range m.Data.(metricdata.Sum[int64]).DataPoints {
				stage, _ := p.Attributes.Value("stage")
				fmt.Printf("%s dropped %d\n", stage.AsString(), p.Value)
			}
		}
	}
	// Output: even dropped 3
}
