package kinesissource_test

import (
	"context"
	"fmt"
	"math/big"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/internal/awstest"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// runReal runs a pipeline in real time until cond holds or three minutes
// pass (a bound for a loaded machine, not a speed requirement).
func runReal(t *testing.T, pl *shardflow.Pipeline, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- pl.Run(ctx) }()
	deadline := time.Now().Add(3 * time.Minute)
	for !cond() && time.Now().Before(deadline) {
		select {
		case err := <-errc:
			cancel()
			t.Fatalf("Run ended early: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if !cond() {
		t.Fatalf("condition not met within three minutes")
	}
}

func emulatorOptions(store shardflow.CheckpointStore) func(*kinesissource.Options) {
	return func(o *kinesissource.Options) {
		o.Store = store
		o.InitialPosition = kinesissource.TrimHorizon()
		o.IdleInterval = 50 * time.Millisecond
		o.DiscoveryInterval = time.Second
	}
}

func TestEmulatorReadsFourShardsOnceInOrderAndResumes(t *testing.T) {
	c := awstest.KinesisClient(t, awstest.KinesisNoRetries)
	stream := awstest.CreateStream(t, c, 4)
	put(t, c, stream, 0, 800, 40)
	store := memory.New()

	first := &collector{}
	runReal(t, shardflow.Source(newSource(t, c, stream, emulatorOptions(store))).Sink(first),
		func() bool { return first.len() >= 800 })
	checkExactlyOnceInOrder(t, 800, first.data())

	// A restart from the checkpoints reads only what was written since.
	put(t, c, stream, 800, 1000, 40)
	second := &collector{}
	runReal(t, shardflow.Source(newSource(t, c, stream, emulatorOptions(store))).Sink(second),
		func() bool { return second.len() >= 200 })
	time.Sleep(500 * time.Millisecond)
	checkExactlyOnceInOrder(t, 1000, append(first.data(), second.data()...))
	if len(store.Checkpoints(stream)) != 4 {
		t.Errorf("checkpoints of %d shards; want 4", len(store.Checkpoints(stream)))
	}
}

func TestEmulatorSplitAndMergeWhileProducing(t *testing.T) {
	for _, m := range readModes {
		t.Run(m.name, func(t *testing.T) { testEmulatorSplitAndMergeWhileProducing(t, m) })
	}
}

func testEmulatorSplitAndMergeWhileProducing(t *testing.T, m readMode) {
	c := awstest.KinesisClient(t, awstest.KinesisNoRetries, awstest.KinesisLocalFanOut)
	stream := awstest.CreateStream(t, c, 2)
	store := memory.New()
	sink := &collector{}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- shardflow.Source(m.newSource(t, c, stream, emulatorOptions(store))).Sink(sink).Run(ctx)
	}()

	put(t, c, stream, 0, 300, 30)
	shards := listShards(t, c, stream)
	mid := new(big.Int).Lsh(big.NewInt(1), 126).String() // inside the first shard's range
	if _, err := c.SplitShard(t.Context(), &kinesis.SplitShardInput{StreamName: aws.String(stream),
		ShardToSplit: shards[0].ShardId, NewStartingHashKey: aws.String(mid)}); err != nil {
		t.Fatalf("split: %v", err)
	}
	waitActive(t, c, stream)
	put(t, c, stream, 300, 600, 30)
	// Merge the upper child of the split with the second original shard.
	var upper, second *string
	for _, s := range listShards(t, c, stream) {
		if s.SequenceNumberRange.EndingSequenceNumber != nil {
			continue
		}
		if aws.ToString(s.HashKeyRange.StartingHashKey) == mid {
			upper = s.ShardId
		}
		if aws.ToString(s.ShardId) == aws.ToString(shards[1].ShardId) {
			second = s.ShardId
		}
	}
	if _, err := c.MergeShards(t.Context(), &kinesis.MergeShardsInput{StreamName: aws.String(stream),
		ShardToMerge: upper, AdjacentShardToMerge: second}); err != nil {
		t.Fatalf("merge: %v", err)
	}
	waitActive(t, c, stream)
	put(t, c, stream, 600, 900, 30)

	deadline := time.Now().Add(3 * time.Minute)
	for sink.len() < 900 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	checkExactlyOnceInOrder(t, 900, sink.data())
	ended := 0
	for _, cp := range store.Checkpoints(stream) {
		if cp.ShardEnd {
			ended++
		}
	}
	if ended != 3 {
		t.Errorf("%d shards checkpointed at SHARD_END; want 3 (the split parent and both merge parents)", ended)
	}
}

func listShards(t *testing.T, c *kinesis.Client, stream string) []types.Shard {
	t.Helper()
	out, err := c.ListShards(t.Context(), &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatal(err)
	}
	return out.Shards
}

func waitActive(t *testing.T, c *kinesis.Client, stream string) {
	t.Helper()
	for range 200 {
		out, err := c.DescribeStreamSummary(t.Context(), &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(stream)})
		if err == nil && out.StreamDescriptionSummary.StreamStatus == types.StreamStatusActive {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("stream %s not ACTIVE after resharding", stream)
}

func TestEmulatorSurvivesThrottlingServerErrorsAndResets(t *testing.T) {
	plain := awstest.KinesisClient(t)
	stream := awstest.CreateStream(t, plain, 2)
	put(t, plain, stream, 0, 600, 20)

	faults := &awstest.FaultClient{Decide: func(op string, n int) awstest.Fault {
		if op != "GetRecords" && op != "GetShardIterator" && op != "ListShards" {
			return awstest.Pass
		}
		switch n % 6 {
		case 1:
			return awstest.Throttle
		case 3:
			return awstest.ServerError
		case 4:
			return awstest.ResetBefore
		case 5:
			return awstest.ResetAfter
		}
		return awstest.Pass
	}}
	c := awstest.KinesisClient(t, awstest.KinesisNoRetries, awstest.KinesisFaults(faults))
	sink := &collector{}
	runReal(t, shardflow.Source(newSource(t, c, stream, func(o *kinesissource.Options) {
		o.InitialPosition = kinesissource.TrimHorizon()
		o.Limit = 50
		o.IdleInterval = 50 * time.Millisecond
	})).Sink(sink), func() bool { return sink.len() >= 600 })
	time.Sleep(300 * time.Millisecond)
	checkExactlyOnceInOrder(t, 600, sink.data())
	for _, f := range []awstest.Fault{awstest.Throttle, awstest.ServerError, awstest.ResetBefore, awstest.ResetAfter} {
		if faults.Injected(f) == 0 {
			t.Errorf("no %s was injected", f)
		}
	}
	t.Logf("injected: %d throttles, %d 500s, %d resets before, %d after", faults.Injected(awstest.Throttle),
		faults.Injected(awstest.ServerError), faults.Injected(awstest.ResetBefore), faults.Injected(awstest.ResetAfter))
}

func TestEmulatorDeaggregatesKPLRecords(t *testing.T) {
	c := awstest.KinesisClient(t, awstest.KinesisNoRetries)
	stream := awstest.CreateStream(t, c, 1)
	var want []gotRecord
	for a := range 3 {
		var users []testUserRecord
		for i := range 50 {
			u := testUserRecord{key: fmt.Sprintf("k%d", i%7), data: fmt.Sprintf("a%d-u%d", a, i)}
			if i%5 == 0 {
				u.ehk = fmt.Sprint(i * 1000003)
			}
			users = append(users, u)
			want = append(want, gotRecord{u.data, u.key, u.ehk, uint64(i)})
		}
		if _, err := c.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String(stream),
			Data: aggregate(users), PartitionKey: aws.String("k0")}); err != nil {
			t.Fatal(err)
		}
	}
	sink := &collector{}
	runReal(t, shardflow.Source(newSource(t, c, stream, emulatorOptions(nil))).Sink(sink), func() bool { return sink.len() >= 150 })
	if diff := cmp.Diff(want, records(sink)); diff != "" {
		t.Errorf("user records mismatch (-want +got):\n%s", diff)
	}
}

// An aggregate written to shard 0 of a 2-shard stream with a user record of
// shard 1 is delivered whole by default and dropped whole with
// DropMisroutedAggregates, the hash ranges coming from a real ListShards.
func TestEmulatorMisroutedAggregates(t *testing.T) {
	c := awstest.KinesisClient(t, awstest.KinesisNoRetries)
	for _, drop := range []bool{false, true} {
		t.Run(fmt.Sprintf("DropMisroutedAggregates=%v", drop), func(t *testing.T) {
			stream := awstest.CreateStream(t, c, 2)
			var seqs []string
			for _, data := range [][]byte{
				aggregate([]testUserRecord{{key: "a", ehk: lowEHK, data: "a1"}, {key: "a", ehk: highEHK, data: "a2"}}),
				[]byte("plain"),
			} {
				out, err := c.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String(stream), Data: data,
					PartitionKey: aws.String("p"), ExplicitHashKey: aws.String(lowEHK)})
				if err != nil {
					t.Fatal(err)
				}
				if id := aws.ToString(out.ShardId); id != shard0 {
					t.Fatalf("record written to %s; want %s", id, shard0)
				}
				seqs = append(seqs, aws.ToString(out.SequenceNumber))
			}
			store := memory.New()
			var misrouted atomic.Int64
			src := newSource(t, c, stream, emulatorOptions(store), func(o *kinesissource.Options) {
				o.DropMisroutedAggregates = drop
				o.OnGetRecords = func(ev kinesissource.GetRecordsEvent) { misrouted.Add(int64(ev.MisroutedAggregates)) }
			})
			sink := &collector{}
			runReal(t, shardflow.Source(src, func(o *shardflow.Options) { o.CheckpointInterval = 100 * time.Millisecond }).Sink(sink), func() bool {
				cp, _ := store.Checkpoint(stream, shard0)
				return cp.SequenceNumber == seqs[1]
			})
			want := []string{"a1", "a2", "plain"}
			if drop {
				want = []string{"plain"}
			}
			if diff := cmp.Diff(want, sink.data()); diff != "" {
				t.Errorf("records mismatch (-want +got):\n%s", diff)
			}
			if misrouted.Load() != 1 {
				t.Errorf("%d misrouted aggregates counted; want 1", misrouted.Load())
			}
		})
	}
}
