package kinesissource_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// hangingShard is the fake, except that GetRecords on one shard hangs,
// until its context ends, after its first answers calls.
type hangingShard struct {
	*kinesisfake.Fake
	shard   string
	answers int

	mu    sync.Mutex
	iters map[string]string // iterator -> shard
	calls int               // GetRecords calls on shard
}

func (h *hangingShard) GetShardIterator(ctx context.Context, in *kinesis.GetShardIteratorInput, optFns ...func(*kinesis.Options)) (*kinesis.GetShardIteratorOutput, error) {
	out, err := h.Fake.GetShardIterator(ctx, in, optFns...)
	if err == nil {
		h.mu.Lock()
		h.iters[aws.ToString(out.ShardIterator)] = aws.ToString(in.ShardId)
		h.mu.Unlock()
	}
	return out, err
}

func (h *hangingShard) GetRecords(ctx context.Context, in *kinesis.GetRecordsInput, optFns ...func(*kinesis.Options)) (*kinesis.GetRecordsOutput, error) {
	h.mu.Lock()
	shard := h.iters[aws.ToString(in.ShardIterator)]
	hang := false
	if shard == h.shard {
		h.calls++
		hang = h.calls > h.answers
	}
	h.mu.Unlock()
	if hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	out, err := h.Fake.GetRecords(ctx, in, optFns...)
	if err == nil && out.NextShardIterator != nil {
		h.mu.Lock()
		h.iters[aws.ToString(out.NextShardIterator)] = shard
		h.mu.Unlock()
	}
	return out, err
}

// upperHalf is a hash key in the upper half of the key space: shard 1 of
// a stream of two.
const upperHalf = "170141183460469231731687303715884105729" // 2^127 + 1

func TestAShardWhoseGetRecordsHangsIsReportedStalledAtTheSource(t *testing.T) {
	t.Run("after its first call", func(t *testing.T) { synctest.Test(t, func(t *testing.T) { testHang(t, 1) }) })
	// Only the heartbeat once the shard's iterator is obtained puts it
	// under watch.
	t.Run("from its first call", func(t *testing.T) { synctest.Test(t, func(t *testing.T) { testHang(t, 0) }) })
}

// testHang runs a pipeline over two shards for two minutes with a
// StallTimeout of one: GetRecords of shard 0 hangs after answers calls, and
// shard 1 gets a record every 30s. Only shard 0 must be reported, at stage
// "source", once.
func testHang(t *testing.T, answers int) {
	f := newStream(t, "in", 2)
	const hung, slow = "shardId-000000000000", "shardId-000000000001"
	api := &hangingShard{Fake: f, shard: hung, answers: answers, iters: map[string]string{}}
	src := newSource(t, api, "in", func(o *kinesissource.Options) { o.InitialPosition = kinesissource.TrimHorizon() })

	start := time.Now()
	type report struct {
		shardflow.StallReport
		at time.Duration
	}
	var mu sync.Mutex
	var reports []report
	sink := &collector{}
	pl := shardflow.Source(src, func(o *shardflow.Options) {
		o.StallTimeout = time.Minute
		o.OnStall = func(r shardflow.StallReport) {
			mu.Lock()
			reports = append(reports, report{r, time.Since(start)})
			mu.Unlock()
		}
	}).Sink(sink)

	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- pl.Run(ctx) }()
	// The healthy shard gets one record every 30s, handled at once.
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			if _, err := f.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: aws.String("in"), Data: []byte("slow"),
				PartitionKey: aws.String("k"), ExplicitHashKey: aws.String(upperHalf)}); err != nil {
				t.Errorf("put: %v", err)
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(30 * time.Second):
			}
		}
	})
	time.Sleep(2 * time.Minute)
	synctest.Wait()

	mu.Lock()
	got := append([]report(nil), reports...)
	mu.Unlock()
	var hungReports int
	for _, r := range got {
		switch {
		case r.ShardID == slow:
			t.Errorf("the healthy slow shard was reported: %+v", r)
		case r.ShardID == hung && r.Stage == "source" && !r.Recovered && r.Stream == "in":
			hungReports++
			if r.at > 2*time.Minute {
				t.Errorf("the hung shard was reported after %v; want within 2 minutes", r.at)
			}
			if r.For < time.Minute {
				t.Errorf("the hung shard was reported stalled for %v; want at least the StallTimeout, 1m", r.For)
			}
		default:
			t.Errorf("unexpected report: %+v", r)
		}
	}
	if hungReports != 1 {
		t.Errorf("the hung shard was reported %d times; want once: %+v", hungReports, got)
	}
	if n := sink.len(); n < 4 {
		t.Errorf("the slow shard delivered %d records in 2 minutes; want 4 or more", n)
	}
	cancel()
	wg.Wait()
	if err := <-errc; err != nil {
		t.Fatalf("Run = %v", err)
	}
}
