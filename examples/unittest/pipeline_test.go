package unittest_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/examples/unittest"
	"github.com/shardflow/shardflow/shardflowtest"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
)

func TestLargeOrders(t *testing.T) {
	// Two shards of input, one record of them not JSON.
	store := memory.New()
	src := shardflowtest.NewSource[shardflow.Record]("orders", func(o *shardflowtest.SourceOptions) { o.Store = store }).
		AddShard("shard-0", shardflowtest.Records("orders", "shard-0",
			`{"id":"o-1","customer":"ana","amount":250}`,
			`{"id":"o-2","customer":"bo","amount":20}`)...).
		AddShard("shard-1", shardflowtest.Records("orders", "shard-1",
			`not json`,
			`{"id":"o-4","customer":"cy","amount":900}`)...)
	sink := shardflowtest.NewSink[kinesissink.Entry]()
	var mu sync.Mutex
	var dead []string
	deadLetter := func(_ context.Context, r shardflow.Record, _ error) error {
		mu.Lock()
		defer mu.Unlock()
		dead = append(dead, r.ShardID+"/"+r.SequenceNumber)
		return nil
	}

	if err := unittest.LargeOrders(src, sink, 100, deadLetter).Run(t.Context()); err != nil {
		t.Fatalf("Run: %v", err)
	}

	// What the sink got, by partition key (shards run concurrently, so
	// compare as a set).
	got := map[string]string{}
	for _, e := range sink.Items() {
		got[e.PartitionKey] = string(e.Data)
	}
	want := map[string]string{
		"ana": `{"id":"o-1","customer":"ana","amount":250}`,
		"cy":  `{"id":"o-4","customer":"cy","amount":900}`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("sink mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"shard-1/1"}, dead); diff != "" {
		t.Errorf("dead letters mismatch (-want +got):\n%s", diff)
	}
	// Every record was finished (written, filtered out or dead-lettered), so
	// both shards are checkpointed at their last record.
	wantCP := map[string]shardflow.Checkpoint{
		"shard-0": {Position: shardflow.Position{SequenceNumber: "2"}},
		"shard-1": {Position: shardflow.Position{SequenceNumber: "2"}},
	}
	if diff := cmp.Diff(wantCP, store.Checkpoints("orders")); diff != "" {
		t.Errorf("checkpoints mismatch (-want +got):\n%s", diff)
	}
}

func TestAFailingSinkHoldsTheCheckpoint(t *testing.T) {
	store := memory.New()
	src := shardflowtest.NewSource[shardflow.Record]("orders", func(o *shardflowtest.SourceOptions) { o.Store = store }).
		AddShard("shard-0", shardflowtest.Records("orders", "shard-0",
			`{"id":"o-1","customer":"ana","amount":250}`,
			`{"id":"o-2","customer":"bo","amount":300}`,
			`{"id":"o-3","customer":"cy","amount":400}`)...)
	// The sink accepts o-2 but later reports it failed, as a Kinesis sink
	// whose retries ran out would.
	sink := shardflowtest.NewSink(func(o *shardflowtest.SinkOptions[kinesissink.Entry]) {
		o.AckErr = func(e kinesissink.Entry) error {
			if e.PartitionKey == "bo" {
				return context.DeadlineExceeded
			}
			return nil
		}
	})
	err := unittest.LargeOrders(src, sink, 100, nil).Run(t.Context())
	if se, ok := errors.AsType[*shardflow.StageError](err); !ok || se.Stage != "sink" {
		t.Fatalf("Run = %v; want the sink stage's error", err)
	}
	if cp, _ := store.Checkpoint("orders", "shard-0"); cp.SequenceNumber != "1" {
		t.Errorf("checkpoint %+v; want 1: the failed record and everything after it are read again", cp)
	}
}
