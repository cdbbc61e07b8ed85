package kinesissource_test

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

var _ kinesissource.API = (*kinesisfake.Fake)(nil)

// newStream creates a stream of n shards on a new fake.
func newStream(t *testing.T, name string, n int32) *kinesisfake.Fake {
	t.Helper()
	f := kinesisfake.New()
	if _, err := f.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(n)}); err != nil {
		t.Fatal(err)
	}
	return f
}

// putter is what test helpers write records with: the fake or an SDK client.
type putter interface {
	PutRecords(context.Context, *kinesis.PutRecordsInput, ...func(*kinesis.Options)) (*kinesis.PutRecordsOutput, error)
}

// put writes records "key-k:i" for i in [from, to) with partition keys
// key-0..key-(keys-1).
func put(t *testing.T, c putter, stream string, from, to, keys int) {
	t.Helper()
	for i := from; i < to; {
		var entries []types.PutRecordsRequestEntry
		for ; i < to && len(entries) < 500; i++ {
			key := fmt.Sprintf("key-%d", i%keys)
			entries = append(entries, types.PutRecordsRequestEntry{Data: []byte(fmt.Sprintf("%s:%d", key, i)), PartitionKey: aws.String(key)})
		}
		out, err := c.PutRecords(t.Context(), &kinesis.PutRecordsInput{StreamName: aws.String(stream), Records: entries})
		if err != nil || aws.ToInt32(out.FailedRecordCount) != 0 {
			t.Fatalf("put: %v (%v)", err, out)
		}
	}
}

// collector is a sink of records that remembers what it got, per shard.
type collector struct {
	mu   sync.Mutex
	recs []shardflow.Record
}

func (c *collector) Write(_ context.Context, r shardflow.Record, ack shardflow.Ack) error {
	c.mu.Lock()
	c.recs = append(c.recs, r)
	c.mu.Unlock()
	ack.Done(nil)
	return nil
}
func (c *collector) Flush(context.Context) error { return nil }

func (c *collector) data() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.recs))
	for i, r := range c.recs {
		out[i] = string(r.Data)
	}
	return out
}

func (c *collector) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.recs)
}

// runUntil runs the pipeline until cond holds (checked as virtual time
// passes), then cancels it and returns Run's error. Call inside synctest.
func runUntil(t *testing.T, pl *shardflow.Pipeline, cond func() bool) error {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- pl.Run(ctx) }()
	deadline := time.Now().Add(time.Hour)
	for !cond() {
		select {
		case err := <-errc:
			cancel()
			return err
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("condition not met within an hour of virtual time")
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	return <-errc
}

// checkExactlyOnceInOrder checks that got holds each of want exactly once,
// and that the records of each partition key came in order.
func checkExactlyOnceInOrder(t *testing.T, want int, got []string) {
	t.Helper()
	seen := map[string]int{}
	last := map[string]int{}
	for _, d := range got {
		seen[d]++
		key, n, _ := strings.Cut(d, ":")
		var i int
		fmt.Sscan(n, &i)
		if prev, ok := last[key]; ok && i <= prev {
			t.Errorf("key %s: record %d after %d: order broken", key, i, prev)
		}
		last[key] = i
	}
	for d, n := range seen {
		if n != 1 {
			t.Errorf("record %s read %d times", d, n)
		}
	}
	if len(seen) != want {
		t.Errorf("read %d distinct records; want %d", len(seen), want)
	}
}

func newSource(t *testing.T, f kinesissource.API, stream string, optFns ...func(*kinesissource.Options)) *kinesissource.Source {
	t.Helper()
	src, err := kinesissource.New(f, stream, optFns...)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func testReadsEveryShardOnceInOrderAndCheckpoints(t *testing.T, m readMode) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 4)
		put(t, f, "in", 0, 2000, 40)
		store := memory.New()
		var calls, records atomic.Int64
		src := m.newSource(t, f, "in", func(o *kinesissource.Options) {
			o.Store = store
			o.InitialPosition = kinesissource.TrimHorizon()
			o.Limit = 300
			o.OnGetRecords = func(ev kinesissource.GetRecordsEvent) {
				calls.Add(1)
				records.Add(int64(ev.Records))
			}
		})
		sink := &collector{}
		err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool { return sink.len() >= 2000 })
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
		checkExactlyOnceInOrder(t, 2000, sink.data())
		if records.Load() != 2000 {
			t.Errorf("OnGetRecords counted %d records; want 2000", records.Load())
		}
		// Each shard's checkpoint is its last record's sequence number.
		ids, _ := f.Shards("in")
		for _, id := range ids {
			recs, _ := f.Records("in", id)
			cp, _ := store.Checkpoint("in", id)
			if want := aws.ToString(recs[len(recs)-1].SequenceNumber); cp.SequenceNumber != want {
				t.Errorf("shard %s checkpointed at %s; want %s", id, cp.SequenceNumber, want)
			}
		}
	})
}

func testRestartResumesFromTheCheckpointWithoutLossOrRepeat(t *testing.T, m readMode) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 3)
		put(t, f, "in", 0, 600, 30)
		store := memory.New()
		opts := func(o *kinesissource.Options) {
			o.Store = store
			o.InitialPosition = kinesissource.TrimHorizon()
			o.Limit = 50
		}
		first := &collector{}
		// Hold the pipeline back so that the first run stops part-way.
		slow := func(context.Context, shardflow.Record) error { time.Sleep(time.Millisecond); return nil }
		if err := runUntil(t, shardflow.Source(m.newSource(t, f, "in", opts)).Tap(slow).Sink(first), func() bool { return first.len() >= 250 }); err != nil {
			t.Fatal(err)
		}
		put(t, f, "in", 600, 900, 30)
		second := &collector{}
		if err := runUntil(t, shardflow.Source(m.newSource(t, f, "in", opts)).Sink(second),
			func() bool { return first.len()+second.len() >= 900 }); err != nil {
			t.Fatal(err)
		}
		if first.len() >= 900 || second.len() == 0 {
			t.Fatalf("first run read %d, second %d: the test needs both to read", first.len(), second.len())
		}
		checkExactlyOnceInOrder(t, 900, append(first.data(), second.data()...))
	})
}

func testStartingPositions(t *testing.T, m readMode) {
	tests := []struct {
		name  string
		start func(t0 time.Time) kinesissource.StartingPosition
		want  []string
	}{
		{"LATEST reads only what is written after the start", func(time.Time) kinesissource.StartingPosition { return kinesissource.Latest() }, []string{"new"}},
		{"TRIM_HORIZON reads everything retained", func(time.Time) kinesissource.StartingPosition { return kinesissource.TrimHorizon() }, []string{"old", "mid", "new"}},
		{"AT_TIMESTAMP reads from the first record at or after the time", func(t0 time.Time) kinesissource.StartingPosition {
			return kinesissource.AtTimestamp(t0.Add(time.Minute))
		}, []string{"mid", "new"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				t0 := time.Now()
				f := newStream(t, "in", 1)
				putOne(t, f, "old")
				time.Sleep(time.Minute)
				putOne(t, f, "mid")
				src := m.newSource(t, f, "in", func(o *kinesissource.Options) { o.InitialPosition = tc.start(t0) })
				sink := &collector{}
				ctx, cancel := context.WithCancel(t.Context())
				errc := make(chan error, 1)
				go func() { errc <- shardflow.Source(src).Sink(sink).Run(ctx) }()
				time.Sleep(5 * time.Second) // the reader is at the tip
				putOne(t, f, "new")
				time.Sleep(5 * time.Second)
				cancel()
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(tc.want, sink.data()); diff != "" {
					t.Errorf("records mismatch (-want +got):\n%s", diff)
				}
			})
		})
	}
}

func putOne(t *testing.T, f *kinesisfake.Fake, data string) {
	t.Helper()
	if _, err := f.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String("in"), Data: []byte(data), PartitionKey: aws.String("k")}); err != nil {
		t.Fatal(err)
	}
}

func TestSurvivesThrottlingTransientErrorsAndExpiredIterators(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 2)
		put(t, f, "in", 0, 1000, 20)
		var n atomic.Int64
		f.InjectError(func(op string, _ any) error {
			if op != "GetRecords" && op != "GetShardIterator" && op != "ListShards" {
				return nil
			}
			switch i := n.Add(1); {
			case i%3 == 0:
				return &types.ProvisionedThroughputExceededException{Message: aws.String("slow down")}
			case i%7 == 0:
				return &types.InternalFailureException{Message: aws.String("internal")}
			case i%11 == 0 && op == "GetRecords":
				return &types.ExpiredIteratorException{Message: aws.String("expired")}
			}
			return nil
		})
		var throttles atomic.Int64
		src := newSource(t, f, "in", func(o *kinesissource.Options) {
			o.InitialPosition = kinesissource.TrimHorizon()
			o.Limit = 25
			o.OnGetRecords = func(ev kinesissource.GetRecordsEvent) {
				if ev.Throttled {
					throttles.Add(1)
				}
			}
		})
		sink := &collector{}
		if err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool { return sink.len() >= 1000 }); err != nil {
			t.Fatalf("Run = %v", err)
		}
		time.Sleep(10 * time.Second) // nothing more must arrive
		checkExactlyOnceInOrder(t, 1000, sink.data())
		if throttles.Load() == 0 {
			t.Errorf("no throttled GetRecords call was reported to OnGetRecords")
		}
	})
}

func TestAnIteratorThatExpiresWhileThePipelineIsBusyIsReplaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 1)
		put(t, f, "in", 0, 10, 1)
		src := newSource(t, f, "in", func(o *kinesissource.Options) {
			o.InitialPosition = kinesissource.TrimHorizon()
			o.Limit = 5
		})
		sink := &collector{}
		slow := shardflow.Source(src, func(o *shardflow.Options) { o.MaxInFlight = 1 }).
			Tap(func(_ context.Context, r shardflow.Record) error {
				if string(r.Data) == "key-0:4" {
					// The reader, blocked in Emit meanwhile, holds an
					// iterator that expires; the records written now can
					// only be read through its replacement.
					time.Sleep(6 * time.Minute)
					put(t, f, "in", 10, 15, 1)
				}
				return nil
			}).Sink(sink)
		if err := runUntil(t, slow, func() bool { return sink.len() >= 15 }); err != nil {
			t.Fatal(err)
		}
		checkExactlyOnceInOrder(t, 15, sink.data())
		if n := f.Calls("GetShardIterator"); n != 2 {
			t.Errorf("%d GetShardIterator calls; want 2 (the start and the replacement)", n)
		}
	})
}

func TestNeverMoreThanFiveGetRecordsPerSecondPerShard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 2)
		put(t, f, "in", 0, 5000, 50)
		var mu sync.Mutex
		calls := map[string][]time.Time{}
		src := newSource(t, f, "in", func(o *kinesissource.Options) {
			o.InitialPosition = kinesissource.TrimHorizon()
			o.Limit = 10 // far behind the tip: the reader polls back to back
			o.IdleInterval = time.Millisecond
			o.OnGetRecords = func(ev kinesissource.GetRecordsEvent) {
				mu.Lock()
				calls[ev.ShardID] = append(calls[ev.ShardID], time.Now())
				mu.Unlock()
			}
		})
		start := time.Now()
		sink := &collector{}
		if err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool { return time.Since(start) > 10*time.Second }); err != nil {
			t.Fatal(err)
		}
		for shard, ts := range calls {
			for i := 5; i < len(ts); i++ {
				if d := ts[i].Sub(ts[i-5]); d < time.Second {
					t.Fatalf("shard %s: 6 GetRecords calls within %v", shard, d)
				}
			}
			if len(ts) < 40 {
				t.Errorf("shard %s: %d calls in 10s while far behind; want about 50 (back to back at the limit)", shard, len(ts))
			}
		}
	})
}

func testReshardingReadsParentsBeforeChildren(t *testing.T, m readMode) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 2)
		store := memory.New()
		src := m.newSource(t, f, "in", func(o *kinesissource.Options) {
			o.Store = store
			o.InitialPosition = kinesissource.TrimHorizon()
			o.Limit = 20
			o.DiscoveryInterval = time.Hour // children must start because their parents ended
		})
		sink := &collector{}
		// Hold records of parents back a little so children have data before
		// their parents are finished.
		pl := shardflow.Source(src).Tap(func(context.Context, shardflow.Record) error {
			time.Sleep(5 * time.Millisecond)
			return nil
		}).Sink(sink)
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() { errc <- pl.Run(ctx) }()

		put(t, f, "in", 0, 300, 30)
		time.Sleep(300 * time.Millisecond)
		// Split shard 0 in the middle of its range; write; merge shard 1 with
		// the upper child of the split; write more.
		mid := new(big.Int).Lsh(big.NewInt(1), 126).String() // inside shard 0: [0, 2^127)
		if _, err := f.SplitShard(t.Context(), &kinesis.SplitShardInput{StreamName: aws.String("in"),
			ShardToSplit: aws.String("shardId-000000000000"), NewStartingHashKey: aws.String(mid)}); err != nil {
			t.Fatal(err)
		}
		put(t, f, "in", 300, 600, 30)
		if _, err := f.MergeShards(t.Context(), &kinesis.MergeShardsInput{StreamName: aws.String("in"),
			ShardToMerge: aws.String("shardId-000000000003"), AdjacentShardToMerge: aws.String("shardId-000000000001")}); err != nil {
			t.Fatal(err)
		}
		put(t, f, "in", 600, 900, 30)
		deadline := time.Now().Add(10 * time.Minute)
		for sink.len() < 900 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		checkExactlyOnceInOrder(t, 900, sink.data())
		want := map[string]bool{"shardId-000000000000": true, "shardId-000000000001": true, "shardId-000000000003": true}
		for shard, cp := range store.Checkpoints("in") {
			if cp.ShardEnd != want[shard] {
				t.Errorf("shard %s: ShardEnd %v; want %v", shard, cp.ShardEnd, want[shard])
			}
		}
	})
}

func testErrorsThatStopTheSource(t *testing.T, m readMode) {
	t.Run("a missing stream", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := kinesisfake.New()
			err := shardflow.Source(m.newSource(t, f, "nope")).Sink(&collector{}).Run(t.Context())
			var rnf *types.ResourceNotFoundException
			if !errors.As(err, &rnf) {
				t.Fatalf("Run = %v; want a ResourceNotFoundException", err)
			}
		})
	})
	t.Run("a checkpoint Kinesis refuses is a typed error", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f, store := streamWithRefusedCheckpoint(t)
			err := shardflow.Source(m.newSource(t, f, "in", func(o *kinesissource.Options) { o.Store = store })).Sink(&collector{}).Run(t.Context())
			var cee *kinesissource.CheckpointExpiredError
			if !errors.As(err, &cee) || cee.ShardID != "shardId-000000000000" || cee.Checkpoint != "12345" {
				t.Fatalf("Run = %v; want a CheckpointExpiredError for the shard at 12345", err)
			}
		})
	})
	t.Run("with FallbackToTrimHorizon a refused checkpoint restarts at the trim horizon", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f, store := streamWithRefusedCheckpoint(t)
			sink := &collector{}
			src := m.newSource(t, f, "in", func(o *kinesissource.Options) {
				o.Store = store
				o.FallbackToTrimHorizon = true
			})
			if err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool { return sink.len() >= 3 }); err != nil {
				t.Fatal(err)
			}
			checkExactlyOnceInOrder(t, 3, sink.data())
		})
	})
}

// streamWithRefusedCheckpoint returns a 1-shard stream of 3 records whose
// shard is checkpointed at 12345, a sequence number the fake refuses as a
// starting point, as Kinesis does for one older than the retention.
func streamWithRefusedCheckpoint(t *testing.T) (*kinesisfake.Fake, *memory.Store) {
	t.Helper()
	f := newStream(t, "in", 1)
	put(t, f, "in", 0, 3, 1)
	store := memory.New()
	if err := store.Save(t.Context(), "in", "shardId-000000000000", shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: "12345"}}); err != nil {
		t.Fatal(err)
	}
	f.InjectError(refuseSequenceIterators)
	return f, store
}

// refuseSequenceIterators refuses to start after a sequence number, as
// Kinesis does for one older than the stream's retention: in
// GetShardIterator when polling, in SubscribeToShard with enhanced fan-out.
func refuseSequenceIterators(op string, in any) error {
	refused := &types.InvalidArgumentException{Message: aws.String("sequence number older than the trim horizon")}
	switch in := in.(type) {
	case *kinesis.GetShardIteratorInput:
		if in.ShardIteratorType == types.ShardIteratorTypeAfterSequenceNumber {
			return refused
		}
	case *kinesis.SubscribeToShardInput:
		if in.StartingPosition.Type == types.ShardIteratorTypeAfterSequenceNumber && aws.ToString(in.StartingPosition.SequenceNumber) == "12345" {
			return refused
		}
	}
	return nil
}

func testAddressingAndPaging(t *testing.T, m readMode) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 5)
		put(t, f, "in", 0, 200, 20)
		src := m.newSource(t, f, kinesisfake.StreamARN("in"), func(o *kinesissource.Options) {
			o.InitialPosition = kinesissource.TrimHorizon()
			o.ListShardsPageSize = 2
		})
		if src.Stream() != "in" {
			t.Errorf("Stream() = %q; want the name from the ARN", src.Stream())
		}
		sink := &collector{}
		if err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool { return sink.len() >= 200 }); err != nil {
			t.Fatal(err)
		}
		checkExactlyOnceInOrder(t, 200, sink.data())
		shards := map[string]bool{}
		for _, r := range sink.recs {
			shards[r.ShardID] = true
		}
		if len(shards) != 5 {
			t.Errorf("records came from %d shards; want all 5 (ListShards paging)", len(shards))
		}
	})
}

func TestNewRejectsBadOptions(t *testing.T) {
	f := kinesisfake.New()
	tests := []struct {
		name   string
		stream string
		opt    func(*kinesissource.Options)
		field  string
	}{
		{"an empty stream", "", nil, "stream"},
		{"an ARN that is not a stream's", "arn:aws:kinesis:us-east-1:1:table/x", nil, "stream"},
		{"a GetRecords limit over 10,000", "s", func(o *kinesissource.Options) { o.Limit = 10001 }, "Options.Limit"},
		{"a negative GetRecords limit", "s", func(o *kinesissource.Options) { o.Limit = -1 }, "Options.Limit"},
		{"AT_TIMESTAMP without a time", "s", func(o *kinesissource.Options) { o.InitialPosition = kinesissource.AtTimestamp(time.Time{}) }, "Options.InitialPosition"},
		{"a negative IdleInterval", "s", func(o *kinesissource.Options) { o.IdleInterval = -time.Second }, "Options.IdleInterval"},
		{"a negative DiscoveryInterval", "s", func(o *kinesissource.Options) { o.DiscoveryInterval = -time.Second }, "Options.DiscoveryInterval"},
		{"a negative HandoffTimeout", "s", func(o *kinesissource.Options) { o.HandoffTimeout = -time.Second }, "Options.HandoffTimeout"},
		{"a ListShards page over 10,000", "s", func(o *kinesissource.Options) { o.ListShardsPageSize = 10001 }, "Options.ListShardsPageSize"},
		{"a negative outage budget", "s", func(o *kinesissource.Options) { o.Retry.Timeout = -time.Second }, "Options.Retry.Timeout"},
		{"a retry multiplier below 1", "s", func(o *kinesissource.Options) { o.Retry.Multiplier = 0.5 }, "Options.Retry.Multiplier"},
		{"a HandoffTimeout as long as the store's LeaseDuration", "s", func(o *kinesissource.Options) {
			o.Store = leaseView{me: "a"} // LeaseDuration 10s
			o.HandoffTimeout = 10 * time.Second
		}, "Options.HandoffTimeout"},
		{"a HandoffTimeout longer than the store's LeaseDuration", "s", func(o *kinesissource.Options) {
			o.Store = leaseView{me: "a"}
			o.HandoffTimeout = time.Minute
		}, "Options.HandoffTimeout"},
	}
	efo := func(e kinesissource.EnhancedFanOut) func(*kinesissource.Options) {
		return func(o *kinesissource.Options) { o.EnhancedFanOut = &e }
	}
	tests = append(tests, []struct {
		name   string
		stream string
		opt    func(*kinesissource.Options)
		field  string
	}{
		{"enhanced fan-out with neither a consumer name nor an ARN", "s", efo(kinesissource.EnhancedFanOut{}), "Options.EnhancedFanOut.ConsumerName"},
		{"enhanced fan-out with both a consumer name and an ARN", "s", efo(kinesissource.EnhancedFanOut{ConsumerName: "a", ConsumerARN: kinesisfake.StreamARN("s") + "/consumer/a:1"}), "Options.EnhancedFanOut.ConsumerARN"},
		{"enhanced fan-out with a consumer name Kinesis refuses", "s", efo(kinesissource.EnhancedFanOut{ConsumerName: "my app"}), "Options.EnhancedFanOut.ConsumerName"},
		{"enhanced fan-out with a consumer name over 128 characters", "s", efo(kinesissource.EnhancedFanOut{ConsumerName: strings.Repeat("a", 129)}), "Options.EnhancedFanOut.ConsumerName"},
		{"enhanced fan-out with an ARN that is not a consumer's", "s", efo(kinesissource.EnhancedFanOut{ConsumerARN: kinesisfake.StreamARN("s")}), "Options.EnhancedFanOut.ConsumerARN"},
	}...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var fns []func(*kinesissource.Options)
			if tc.opt != nil {
				fns = append(fns, tc.opt)
			}
			_, err := kinesissource.New(f, tc.stream, fns...)
			ce, ok := errors.AsType[*shardflow.ConfigError](err)
			if !ok || ce.Field != tc.field {
				t.Fatalf("New = %v; want a *shardflow.ConfigError on %s", err, tc.field)
			}
		})
	}
	t.Run("enhanced fan-out with a client lacking SubscribeToShard", func(t *testing.T) {
		pollOnly := struct{ kinesissource.API }{f}
		_, err := kinesissource.New(pollOnly, "s", efo(kinesissource.EnhancedFanOut{ConsumerName: "app"}))
		if ce, ok := errors.AsType[*shardflow.ConfigError](err); !ok || ce.Field != "client" {
			t.Fatalf("New = %v; want a *shardflow.ConfigError on client", err)
		}
	})
	t.Run("a nil client", func(t *testing.T) {
		_, err := kinesissource.New(nil, "s")
		if ce, ok := errors.AsType[*shardflow.ConfigError](err); !ok || ce.Field != "client" {
			t.Fatalf("New = %v; want a *shardflow.ConfigError on client", err)
		}
	})
	t.Run("a HandoffTimeout below the store's LeaseDuration", func(t *testing.T) {
		_, err := kinesissource.New(f, "s", func(o *kinesissource.Options) {
			o.Store = leaseView{me: "a"}
			o.HandoffTimeout = 9 * time.Second
		})
		if err != nil {
			t.Fatalf("New = %v; want no error", err)
		}
	})
}
