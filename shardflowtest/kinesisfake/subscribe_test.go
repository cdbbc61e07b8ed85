package kinesisfake_test

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
)

// The fake serves the calls of enhanced fan-out with the SDK's signatures.
var _ interface {
	RegisterStreamConsumer(context.Context, *kinesis.RegisterStreamConsumerInput, ...func(*kinesis.Options)) (*kinesis.RegisterStreamConsumerOutput, error)
	DescribeStreamConsumer(context.Context, *kinesis.DescribeStreamConsumerInput, ...func(*kinesis.Options)) (*kinesis.DescribeStreamConsumerOutput, error)
	DeregisterStreamConsumer(context.Context, *kinesis.DeregisterStreamConsumerInput, ...func(*kinesis.Options)) (*kinesis.DeregisterStreamConsumerOutput, error)
	ListStreamConsumers(context.Context, *kinesis.ListStreamConsumersInput, ...func(*kinesis.Options)) (*kinesis.ListStreamConsumersOutput, error)
	SubscribeToShard(context.Context, *kinesis.SubscribeToShardInput, ...func(*kinesis.Options)) (*kinesis.SubscribeToShardOutput, error)
} = (*kinesisfake.Fake)(nil)

const shard0 = "shardId-000000000000"

// setup makes a stream "s" of n shards and registers consumer "c".
func setup(t *testing.T, n int32, optFns ...func(*kinesisfake.Options)) (*kinesisfake.Fake, string) {
	t.Helper()
	f := kinesisfake.New(optFns...)
	if _, err := f.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String("s"), ShardCount: aws.Int32(n)}); err != nil {
		t.Fatal(err)
	}
	out, err := f.RegisterStreamConsumer(t.Context(), &kinesis.RegisterStreamConsumerInput{StreamARN: aws.String(kinesisfake.StreamARN("s")), ConsumerName: aws.String("c")})
	if err != nil {
		t.Fatal(err)
	}
	return f, aws.ToString(out.Consumer.ConsumerARN)
}

func putN(t *testing.T, f *kinesisfake.Fake, from, to int, size int) {
	t.Helper()
	for i := from; i < to; i++ {
		data := fmt.Appendf(nil, "r%d", i)
		if size > len(data) {
			data = append(data, make([]byte, size-len(data))...)
		}
		if _, err := f.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String("s"), Data: data, PartitionKey: aws.String("k")}); err != nil {
			t.Fatal(err)
		}
	}
}

func subscribe(t *testing.T, f *kinesisfake.Fake, consumerARN, shard string, pos types.StartingPosition) *kinesis.SubscribeToShardEventStream {
	t.Helper()
	out, err := f.SubscribeToShard(t.Context(), &kinesis.SubscribeToShardInput{ConsumerARN: aws.String(consumerARN), ShardId: aws.String(shard), StartingPosition: &pos})
	if err != nil {
		t.Fatalf("SubscribeToShard: %v", err)
	}
	return out.GetStream()
}

// next returns the next event of es, or nil once the stream ended.
func next(t *testing.T, es *kinesis.SubscribeToShardEventStream) *types.SubscribeToShardEvent {
	t.Helper()
	ev, ok := <-es.Events()
	if !ok {
		return nil
	}
	e, ok := ev.(*types.SubscribeToShardEventStreamMemberSubscribeToShardEvent)
	if !ok {
		t.Fatalf("event of type %T", ev)
	}
	return &e.Value
}

func data(recs []types.Record) []string {
	var out []string
	for _, r := range recs {
		out = append(out, string(r.Data))
	}
	return out
}

func TestSubscriptionsPushRecordsWithContinuationAndLag(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, arn := setup(t, 1)
		putN(t, f, 0, 3, 0)
		time.Sleep(time.Second)
		es := subscribe(t, f, arn, shard0, types.StartingPosition{Type: types.ShardIteratorTypeTrimHorizon})
		defer es.Close()
		recs, _ := f.Records("s", shard0)

		ev := next(t, es)
		if diff := cmp.Diff([]string{"r0", "r1", "r2"}, data(ev.Records)); diff != "" {
			t.Errorf("first event (-want +got):\n%s", diff)
		}
		if got, want := aws.ToString(ev.ContinuationSequenceNumber), aws.ToString(recs[2].SequenceNumber); got != want {
			t.Errorf("continuation %s; want the last record's %s", got, want)
		}
		if aws.ToInt64(ev.MillisBehindLatest) != 0 {
			t.Errorf("MillisBehindLatest %d at the tip; want 0", aws.ToInt64(ev.MillisBehindLatest))
		}
		// A record written now is pushed at once.
		start := time.Now()
		putN(t, f, 3, 4, 0)
		ev = next(t, es)
		if diff := cmp.Diff([]string{"r3"}, data(ev.Records)); diff != "" || time.Since(start) > 0 {
			t.Errorf("pushed event after %v (-want +got):\n%s", time.Since(start), diff)
		}
		// With nothing new, an empty event every EventInterval keeps the
		// continuation.
		start = time.Now()
		ev = next(t, es)
		if len(ev.Records) != 0 || time.Since(start) != kinesisfake.EventInterval {
			t.Errorf("an event of %d records after %v; want an empty one after %v", len(ev.Records), time.Since(start), kinesisfake.EventInterval)
		}
		recs, _ = f.Records("s", shard0)
		if got, want := aws.ToString(ev.ContinuationSequenceNumber), aws.ToString(recs[3].SequenceNumber); got != want {
			t.Errorf("continuation of an empty event %s; want %s", got, want)
		}
	})
}

func TestAContinuationResumesWithoutGapOrRepeat(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, arn := setup(t, 1, func(o *kinesisfake.Options) { o.SubscriptionDuration = time.Minute })
		putN(t, f, 0, 5, 0)
		es := subscribe(t, f, arn, shard0, types.StartingPosition{Type: types.ShardIteratorTypeTrimHorizon})
		var got []string
		var cont string
		for ev := next(t, es); ev != nil; ev = next(t, es) {
			got = append(got, data(ev.Records)...)
			cont = aws.ToString(ev.ContinuationSequenceNumber)
			if len(got) == 5 {
				putN(t, f, 5, 7, 0)
			}
		}
		if err := es.Err(); err != nil {
			t.Fatalf("a subscription that ran its length ended with %v; want nil", err)
		}
		es.Close()
		putN(t, f, 7, 9, 0)
		es = subscribe(t, f, arn, shard0, types.StartingPosition{Type: types.ShardIteratorTypeAfterSequenceNumber, SequenceNumber: aws.String(cont)})
		defer es.Close()
		got = append(got, data(next(t, es).Records)...)
		if diff := cmp.Diff([]string{"r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"}, got); diff != "" {
			t.Errorf("records (-want +got):\n%s", diff)
		}
	})
}

func TestSubscriptionLengthIsConfigurable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		for _, d := range []time.Duration{0, 20 * time.Second} {
			f, arn := setup(t, 1, func(o *kinesisfake.Options) { o.SubscriptionDuration = d })
			start := time.Now()
			es := subscribe(t, f, arn, shard0, types.StartingPosition{Type: types.ShardIteratorTypeLatest})
			for next(t, es) != nil {
			}
			want := d
			if d == 0 {
				want = kinesisfake.DefaultSubscriptionDuration
			}
			if got := time.Since(start); got != want || es.Err() != nil {
				t.Errorf("SubscriptionDuration %v: the stream ended after %v with %v; want after %v with nil", d, got, es.Err(), want)
			}
			es.Close()
			synctest.Wait()
			if n := f.Subscriptions(); n != 0 {
				t.Errorf("%d subscriptions open after the stream ended", n)
			}
		}
	})
}

func TestASecondSubscriptionWithinFiveSecondsIsRefusedAndLaterTakesOver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, arn := setup(t, 1)
		first := subscribe(t, f, arn, shard0, types.StartingPosition{Type: types.ShardIteratorTypeLatest})
		defer first.Close()
		next(t, first)
		time.Sleep(kinesisfake.ResubscribeInterval - time.Millisecond)
		_, err := f.SubscribeToShard(t.Context(), &kinesis.SubscribeToShardInput{ConsumerARN: aws.String(arn), ShardId: aws.String(shard0),
			StartingPosition: &types.StartingPosition{Type: types.ShardIteratorTypeLatest}})
		if _, ok := errors.AsType[*types.ResourceInUseException](err); !ok {
			t.Fatalf("a second subscription within 5s: %v; want ResourceInUseException", err)
		}
		time.Sleep(time.Millisecond)
		second := subscribe(t, f, arn, shard0, types.StartingPosition{Type: types.ShardIteratorTypeLatest})
		defer second.Close()
		for next(t, first) != nil {
		}
		if _, ok := errors.AsType[*types.ResourceInUseException](first.Err()); !ok {
			t.Errorf("the subscription taken over ended with %v; want ResourceInUseException", first.Err())
		}
		if next(t, second) == nil {
			t.Errorf("the new subscription has no event: %v", second.Err())
		}
	})
}

func TestTheLastEventOfAClosedShardHasItsChildrenAndNoContinuation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, arn := setup(t, 1)
		putN(t, f, 0, 2, 0)
		es := subscribe(t, f, arn, shard0, types.StartingPosition{Type: types.ShardIteratorTypeTrimHorizon})
		defer es.Close()
		if ev := next(t, es); len(ev.Records) != 2 || ev.ContinuationSequenceNumber == nil || ev.ChildShards != nil {
			t.Fatalf("first event %+v; want 2 records, a continuation and no children", ev)
		}
		mid := new(big.Int).Lsh(big.NewInt(1), 127).String()
		if _, err := f.SplitShard(t.Context(), &kinesis.SplitShardInput{StreamName: aws.String("s"), ShardToSplit: aws.String(shard0), NewStartingHashKey: aws.String(mid)}); err != nil {
			t.Fatal(err)
		}
		ev := next(t, es)
		var children []string
		for _, c := range ev.ChildShards {
			children = append(children, aws.ToString(c.ShardId))
		}
		if diff := cmp.Diff([]string{"shardId-000000000001", "shardId-000000000002"}, children); diff != "" || ev.ContinuationSequenceNumber != nil {
			t.Errorf("last event: continuation %v, children (-want +got):\n%s", ev.ContinuationSequenceNumber, diff)
		}
		if ev := next(t, es); ev != nil || es.Err() != nil {
			t.Errorf("after the last event: %+v, %v; want the end of the stream", ev, es.Err())
		}
	})
}

func TestConsumerLifecycle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, arn := setup(t, 1, func(o *kinesisfake.Options) { o.ConsumerStatusDelay = 3 * time.Second })
		ctx := t.Context()
		status := func(in *kinesis.DescribeStreamConsumerInput) (types.ConsumerStatus, error) {
			out, err := f.DescribeStreamConsumer(ctx, in)
			if err != nil {
				return "", err
			}
			return out.ConsumerDescription.ConsumerStatus, nil
		}
		byARN := &kinesis.DescribeStreamConsumerInput{ConsumerARN: aws.String(arn)}
		byName := &kinesis.DescribeStreamConsumerInput{StreamARN: aws.String(kinesisfake.StreamARN("s")), ConsumerName: aws.String("c")}
		if s, err := status(byARN); s != types.ConsumerStatusCreating {
			t.Errorf("a new consumer is %q (%v); want CREATING", s, err)
		}
		_, err := f.SubscribeToShard(ctx, &kinesis.SubscribeToShardInput{ConsumerARN: aws.String(arn), ShardId: aws.String(shard0),
			StartingPosition: &types.StartingPosition{Type: types.ShardIteratorTypeLatest}})
		if _, ok := errors.AsType[*types.ResourceInUseException](err); !ok {
			t.Errorf("subscribing a CREATING consumer: %v; want ResourceInUseException", err)
		}
		time.Sleep(3 * time.Second)
		if s, err := status(byName); s != types.ConsumerStatusActive {
			t.Errorf("after the delay the consumer is %q (%v); want ACTIVE", s, err)
		}
		_, err = f.RegisterStreamConsumer(ctx, &kinesis.RegisterStreamConsumerInput{StreamARN: aws.String(kinesisfake.StreamARN("s")), ConsumerName: aws.String("c")})
		if _, ok := errors.AsType[*types.ResourceInUseException](err); !ok {
			t.Errorf("registering a name twice: %v; want ResourceInUseException", err)
		}
		for i := 1; i < kinesisfake.MaxConsumersPerStream; i++ {
			if _, err := f.RegisterStreamConsumer(ctx, &kinesis.RegisterStreamConsumerInput{StreamARN: aws.String(kinesisfake.StreamARN("s")), ConsumerName: aws.String(fmt.Sprint("c", i))}); err != nil {
				t.Fatal(err)
			}
		}
		_, err = f.RegisterStreamConsumer(ctx, &kinesis.RegisterStreamConsumerInput{StreamARN: aws.String(kinesisfake.StreamARN("s")), ConsumerName: aws.String("one-too-many")})
		if _, ok := errors.AsType[*types.LimitExceededException](err); !ok {
			t.Errorf("registering a 21st consumer: %v; want LimitExceededException", err)
		}
		var names []string
		in := &kinesis.ListStreamConsumersInput{StreamARN: aws.String(kinesisfake.StreamARN("s")), MaxResults: aws.Int32(7)}
		for {
			out, err := f.ListStreamConsumers(ctx, in)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range out.Consumers {
				names = append(names, aws.ToString(c.ConsumerName))
			}
			if out.NextToken == nil {
				break
			}
			in.NextToken = out.NextToken
		}
		if len(names) != kinesisfake.MaxConsumersPerStream || names[0] != "c" {
			t.Errorf("listed %v; want the %d consumers, the first registered first", names, kinesisfake.MaxConsumersPerStream)
		}

		es := subscribe(t, f, arn, shard0, types.StartingPosition{Type: types.ShardIteratorTypeLatest})
		defer es.Close()
		next(t, es)
		if _, err := f.DeregisterStreamConsumer(ctx, &kinesis.DeregisterStreamConsumerInput{ConsumerARN: aws.String(arn)}); err != nil {
			t.Fatal(err)
		}
		for next(t, es) != nil {
		}
		if _, ok := errors.AsType[*types.ResourceNotFoundException](es.Err()); !ok {
			t.Errorf("a subscription of a deregistered consumer ended with %v; want ResourceNotFoundException", es.Err())
		}
		if s, err := status(byARN); s != types.ConsumerStatusDeleting {
			t.Errorf("a deregistered consumer is %q (%v); want DELETING", s, err)
		}
		time.Sleep(3 * time.Second)
		if _, err := status(byARN); err == nil {
			t.Errorf("a deregistered consumer still exists after the delay")
		} else if _, ok := errors.AsType[*types.ResourceNotFoundException](err); !ok {
			t.Errorf("describing a deregistered consumer: %v; want ResourceNotFoundException", err)
		}
		// Registered again under the same name, it has a new ARN.
		time.Sleep(time.Second)
		out, err := f.RegisterStreamConsumer(ctx, &kinesis.RegisterStreamConsumerInput{StreamARN: aws.String(kinesisfake.StreamARN("s")), ConsumerName: aws.String("c")})
		if err != nil || aws.ToString(out.Consumer.ConsumerARN) == arn {
			t.Errorf("registering a consumer again: %v, ARN %v; want a new ARN", err, out)
		}
	})
}

func TestInjectedSubscriptionErrors(t *testing.T) {
	tests := []struct {
		name  string
		err   error
		check func(error) bool
	}{
		{"an exception Kinesis sends in the stream reaches the reader typed", &types.InternalFailureException{Message: aws.String("boom")},
			func(err error) bool { _, ok := errors.AsType[*types.InternalFailureException](err); return ok }},
		{"any other error breaks the connection", errors.New("connection reset by peer"),
			func(err error) bool { return err != nil }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f, arn := setup(t, 1)
				putN(t, f, 0, 3, 0)
				n := 0
				f.InjectSubscriptionError(func(consumerARN, shardID string) error {
					if consumerARN != arn || shardID != shard0 {
						t.Errorf("injection asked for %s %s", consumerARN, shardID)
					}
					if n++; n == 2 {
						return tc.err
					}
					return nil
				})
				es := subscribe(t, f, arn, shard0, types.StartingPosition{Type: types.ShardIteratorTypeTrimHorizon})
				defer es.Close()
				if ev := next(t, es); len(ev.Records) != 3 {
					t.Fatalf("first event of %d records; want 3", len(ev.Records))
				}
				for next(t, es) != nil {
				}
				if !tc.check(es.Err()) {
					t.Errorf("the stream ended with %v", es.Err())
				}
			})
		})
	}
}

func TestReadLimits(t *testing.T) {
	const recSize = 64 << 10 // 64 KiB records: 32 per second per shard
	t.Run("GetRecords: five calls per second per shard, shared by every reader", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f, _ := setup(t, 1, func(o *kinesisfake.Options) { o.ReadLimits = true })
			it, err := f.GetShardIterator(t.Context(), &kinesis.GetShardIteratorInput{StreamName: aws.String("s"), ShardId: aws.String(shard0), ShardIteratorType: types.ShardIteratorTypeLatest})
			if err != nil {
				t.Fatal(err)
			}
			ok, throttled := 0, 0
			for range 12 {
				_, err := f.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: it.ShardIterator})
				switch _, thr := errors.AsType[*types.ProvisionedThroughputExceededException](err); {
				case err == nil:
					ok++
				case thr:
					throttled++
				default:
					t.Fatal(err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			// Calls at 0, 0.1, ... 1.1s: those at 0-0.4s are served, those
			// at 0.5-0.9s refused (5 within the second before), those at
			// 1.0s and 1.1s served again.
			if ok != 7 || throttled != 5 {
				t.Errorf("%d calls served, %d throttled in 1.2s; want 7 and 5", ok, throttled)
			}
		})
	})
	t.Run("GetRecords: 2 MiB per second per shard", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f, _ := setup(t, 1, func(o *kinesisfake.Options) { o.ReadLimits = true })
			putN(t, f, 0, 10*32, recSize)
			it, err := f.GetShardIterator(t.Context(), &kinesis.GetShardIteratorInput{StreamName: aws.String("s"), ShardId: aws.String(shard0), ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
			if err != nil {
				t.Fatal(err)
			}
			iter, n, start := it.ShardIterator, 0, time.Now()
			for n < 10*32 {
				out, err := f.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: iter, Limit: aws.Int32(40)})
				if err == nil {
					n += len(out.Records)
					iter = out.NextShardIterator
				} else if _, ok := errors.AsType[*types.ProvisionedThroughputExceededException](err); !ok {
					t.Fatal(err)
				}
				time.Sleep(200 * time.Millisecond)
			}
			// 20 MiB at 2 MiB/s after a first 2 MiB allowance.
			if d := time.Since(start); d < 8*time.Second || d > 11*time.Second {
				t.Errorf("read 20 MiB in %v; want about 9s at 2 MiB/s", d)
			}
		})
	})
	t.Run("subscriptions: 2 MiB per second per shard for each consumer", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f, arn := setup(t, 1, func(o *kinesisfake.Options) { o.ReadLimits = true })
			other, err := f.RegisterStreamConsumer(t.Context(), &kinesis.RegisterStreamConsumerInput{StreamARN: aws.String(kinesisfake.StreamARN("s")), ConsumerName: aws.String("other")})
			if err != nil {
				t.Fatal(err)
			}
			putN(t, f, 0, 10*32, recSize)
			done := make(chan time.Duration, 2)
			for _, c := range []string{arn, aws.ToString(other.Consumer.ConsumerARN)} {
				go func() {
					start := time.Now()
					es := subscribe(t, f, c, shard0, types.StartingPosition{Type: types.ShardIteratorTypeTrimHorizon})
					defer es.Close()
					for n := 0; n < 10*32; {
						n += len(next(t, es).Records)
					}
					done <- time.Since(start)
				}()
			}
			for range 2 {
				// 20 MiB at 2 MiB/s each, whatever the other consumer reads.
				if d := <-done; d < 9*time.Second || d > 11*time.Second {
					t.Errorf("a consumer read 20 MiB in %v; want about 10s at 2 MiB/s", d)
				}
			}
		})
	})
}
