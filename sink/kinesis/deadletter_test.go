package kinesissink_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/smithy-go"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
)

// dlqFake returns a fake with a one-shard stream "dlq" and a sink to it.
func dlqFake(t *testing.T) (*kinesisfake.Fake, *kinesissink.Sink) {
	t.Helper()
	f := kinesisfake.New()
	if _, err := f.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String("dlq"), ShardCount: aws.Int32(1)}); err != nil {
		t.Fatal(err)
	}
	dlq, err := kinesissink.New(f, "dlq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dlq.Close(context.Background()) })
	return f, dlq
}

// deadLetters reads the documents of stream "dlq" back, with their
// partition keys.
func deadLetters(t *testing.T, f *kinesisfake.Fake) ([]kinesissink.DeadLetterRecord, []string) {
	t.Helper()
	recs, err := f.Records("dlq", "shardId-000000000000")
	if err != nil {
		t.Fatal(err)
	}
	docs := make([]kinesissink.DeadLetterRecord, len(recs))
	keys := make([]string, len(recs))
	for i, r := range recs {
		if err := json.Unmarshal(r.Data, &docs[i]); err != nil {
			t.Fatalf("dead letter %d is not JSON: %v: %s", i, err, r.Data)
		}
		keys[i] = aws.ToString(r.PartitionKey)
	}
	return docs, keys
}

// aggregateSource emits the user records of one KPL aggregate: the same
// sequence number, sub-sequence numbers 0, 1, 2, ..., and the aggregate's
// arrival time.
type aggregateSource struct {
	seq     string
	arrived time.Time
	recs    []shardflow.Record
}

func (s *aggregateSource) Run(ctx context.Context, shards *shardflow.Shards[shardflow.Record]) error {
	lane, err := shards.Open("orders", "shardId-000000000004", nil)
	if err != nil {
		return err
	}
	for i, r := range s.recs {
		pos := shardflow.Position{SequenceNumber: s.seq, SubSequenceNumber: uint64(i), Partial: i < len(s.recs)-1}
		if err := lane.EmitArrived(ctx, pos, s.arrived, r); err != nil {
			return err
		}
	}
	return nil
}

var errUndecodable = errors.New("undecodable")

func TestDeadLetterToWritesEachFailedRecordWithItsProvenance(t *testing.T) {
	f, dlq := dlqFake(t)
	arrived := time.Date(2026, 3, 1, 12, 30, 0, 0, time.UTC)
	const seq = "49590338271490256608559692538361571095921575989136588898"
	src := &aggregateSource{seq: seq, arrived: arrived, recs: []shardflow.Record{
		{PartitionKey: "alice", Data: []byte(`{"id":1}`)},
		{PartitionKey: "bob", Data: []byte(`garbage`)},
		{PartitionKey: "carol", Data: []byte(`{"id":3}`)},
	}}
	sink := shardflowtest.NewSink[int]()
	calls := 0
	decode := func(_ context.Context, r shardflow.Record) (int, error) {
		var v struct{ ID int }
		if err := json.Unmarshal(r.Data, &v); err != nil {
			calls++
			return 0, fmt.Errorf("call %d: %w", calls, errUndecodable)
		}
		return v.ID, nil
	}
	before := time.Now()
	err := shardflow.Source[shardflow.Record](src, func(o *shardflow.Options) {
		o.Retry = shardflow.RetryPolicy{MaxAttempts: 2, InitialInterval: time.Millisecond}
	}).
		DeadLetter(kinesissink.DeadLetterTo[shardflow.Record](dlq, nil)).
		Map(decode, shardflow.WithName("decode")).
		Sink(sink).Run(t.Context())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if diff := cmp.Diff([]int{1, 3}, sink.Items()); diff != "" {
		t.Errorf("decoded values (-want +got):\n%s", diff)
	}
	docs, keys := deadLetters(t, f)
	if len(docs) != 1 {
		t.Fatalf("%d dead letters; want 1", len(docs))
	}
	value, _ := json.Marshal(src.recs[1])
	want := kinesissink.DeadLetterRecord{Stream: "orders", ShardID: "shardId-000000000004", SequenceNumber: seq, SubSequenceNumber: 1,
		Stage: "decode", Attempts: 2, FirstError: "call 1: undecodable", LastError: "after 2 attempts: call 2: undecodable",
		ArrivedAt: arrived, Value: value}
	if diff := cmp.Diff(want, docs[0], cmpopts.IgnoreFields(kinesissink.DeadLetterRecord{}, "DeadLetteredAt")); diff != "" {
		t.Errorf("dead letter mismatch (-want +got):\n%s", diff)
	}
	if at := docs[0].DeadLetteredAt; at.Before(before.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
		t.Errorf("dead_lettered_at %v; want the time of the run", at)
	}
	if keys[0] != "shardId-000000000004" {
		t.Errorf("partition key %q; want the source shard's id", keys[0])
	}
}

func TestDeadLetterToWritesTheValuesBisectIsolates(t *testing.T) {
	f, dlq := dlqFake(t)
	src := shardflowtest.NewSource[int]("numbers").AddShard("shard-0", 1, 2, 3, 4, 5, 6, 7, 8)
	var written []int
	write := func(_ context.Context, b []int) error {
		for _, v := range b {
			if v == 6 {
				return errors.New("6 is refused")
			}
		}
		written = append(written, b...)
		return nil
	}
	batches := shardflow.Batch(shardflow.Source[int](src), shardflow.BatchOptions[int]{MaxCount: 8})
	err := batches.DeadLetter(kinesissink.DeadLetterTo[[]int](dlq, nil)).
		Sink(shardflow.SinkFunc[[]int](write), shardflow.WithRetry(shardflow.RetryPolicy{MaxAttempts: 1, Bisect: true})).
		Run(t.Context())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if diff := cmp.Diff([]int{1, 2, 3, 4, 5, 7, 8}, written); diff != "" {
		t.Errorf("values written (-want +got):\n%s", diff)
	}
	docs, _ := deadLetters(t, f)
	if len(docs) != 1 {
		t.Fatalf("%d dead letters; want 1", len(docs))
	}
	d := docs[0]
	if string(d.Value) != "[6]" || d.SequenceNumber != "6" || d.Records != nil || d.Stage != "sink" || d.LastError != "6 is refused" {
		t.Errorf("dead letter %+v; want the value [6] of record 6 at the sink", d)
	}
}

func TestDeadLetterToListsTheRecordsOfAWholeBatchAndKeepsDataThatIsNotJSON(t *testing.T) {
	f, dlq := dlqFake(t)
	src := shardflowtest.NewSource[int]("numbers").AddShard("shard-0", 1, 2, 3)
	batches := shardflow.Batch(shardflow.Source[int](src, func(o *shardflow.Options) { o.Retry = shardflow.NoRetry }),
		shardflow.BatchOptions[int]{MaxCount: 3})
	csv := func(b []int) ([]byte, error) {
		s := ""
		for _, v := range b {
			s += strconv.Itoa(v) + ";"
		}
		return []byte(s), nil
	}
	err := batches.DeadLetter(kinesissink.DeadLetterTo(dlq, csv)).
		Sink(shardflow.SinkFunc[[]int](func(context.Context, []int) error { return errors.New("down") })).
		Run(t.Context())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	docs, _ := deadLetters(t, f)
	if len(docs) != 1 {
		t.Fatalf("%d dead letters; want 1", len(docs))
	}
	wantRecords := []kinesissink.DeadLetterPosition{{SequenceNumber: "1"}, {SequenceNumber: "2"}, {SequenceNumber: "3"}}
	if d := docs[0]; string(d.Data) != "1;2;3;" || d.Value != nil || !cmp.Equal(wantRecords, d.Records) || !d.ArrivedAt.IsZero() {
		t.Errorf("dead letter %+v; want data 1;2;3;, no value, the batch's three records, no arrival time", d)
	}
}

// A dead letter that cannot be written stops the pipeline, as any failing
// dead-letter handler does: the record is not checkpointed.
func TestDeadLetterToFailsWhenTheDeadLetterIsNotWritten(t *testing.T) {
	f, dlq := dlqFake(t)
	f.InjectError(func(op string, _ any) error {
		if op == "PutRecords" {
			return &smithy.GenericAPIError{Code: "AccessDeniedException", Message: "not allowed", Fault: smithy.FaultClient}
		}
		return nil
	})
	store := memory.New()
	src := shardflowtest.NewSource[int]("numbers", func(o *shardflowtest.SourceOptions) { o.Store = store }).AddShard("shard-0", 1, 2, 3)
	err := shardflow.Source[int](src, func(o *shardflow.Options) { o.Retry = shardflow.NoRetry }).
		DeadLetter(kinesissink.DeadLetterTo[int](dlq, nil)).
		Map(func(_ context.Context, v int) (int, error) {
			if v == 2 {
				return 0, errUndecodable
			}
			return v, nil
		}).Sink(shardflowtest.NewSink[int]()).Run(t.Context())
	if se, ok := errors.AsType[*shardflow.StageError](err); !ok || !errors.Is(err, errUndecodable) || se.Position.SequenceNumber != "2" {
		t.Fatalf("Run = %v; want a *StageError of record 2 with the handler's and the dead letter's errors", err)
	}
	if cp, _ := store.Checkpoint("numbers", "shard-0"); cp.SequenceNumber != "1" {
		t.Errorf("checkpoint at %q; want 1, before the record whose dead letter failed", cp.SequenceNumber)
	}
}

// Records a stage fails go, with where they came from and why, to a dead-
// letter stream as JSON; the pipeline goes on.
func ExampleDeadLetterTo() {
	client := kinesisfake.New()
	_, _ = client.CreateStream(context.Background(), &kinesis.CreateStreamInput{StreamName: aws.String("orders-dlq"), ShardCount: aws.Int32(1)})
	dlq, err := kinesissink.New(client, "orders-dlq")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer dlq.Close(context.Background())

	src := shardflowtest.NewSource[string]("orders").AddShard("shard-0", "7", "seven", "9")
	parse := func(_ context.Context, s string) (int, error) {
		n, err := strconv.Atoi(s)
		return n, shardflow.Permanent(err)
	}
	err = shardflow.Source(src).
		DeadLetter(kinesissink.DeadLetterTo[string](dlq, nil)).
		Map(parse, shardflow.WithName("parse")).
		Sink(shardflowtest.NewSink[int]()).
		Run(context.Background())
	fmt.Println("pipeline:", err)

	recs, _ := client.Records("orders-dlq", "shardId-000000000000")
	var d kinesissink.DeadLetterRecord
	_ = json.Unmarshal(recs[0].Data, &d)
	fmt.Printf("%s/%s #%s, stage %s, %d attempt: %s\n", d.Stream, d.ShardID, d.SequenceNumber, d.Stage, d.Attempts, d.Value)
	fmt.Println(d.LastError)
	// Output:
	// pipeline: <nil>
	// orders/shard-0 #2, stage parse, 1 attempt: "seven"
	// strconv.Atoi: parsing "seven": invalid syntax
}
