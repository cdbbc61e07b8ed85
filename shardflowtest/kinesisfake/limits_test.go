package kinesisfake_test

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/smithy-go"
	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
)

// newStream returns a fake with a stream "s" of n shards.
func newStream(t *testing.T, n int32, optFns ...func(*kinesisfake.Options)) *kinesisfake.Fake {
	t.Helper()
	f := kinesisfake.New(optFns...)
	if _, err := f.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String("s"), ShardCount: aws.Int32(n)}); err != nil {
		t.Fatal(err)
	}
	return f
}

func withLimits(l kinesisfake.Limits) func(*kinesisfake.Options) {
	return func(o *kinesisfake.Options) { o.Limits = &l }
}

// entries returns n entries of size bytes of data and partition key "k",
// routed to shard i of a stream of shards shards.
func entries(n, size, i, shards int) []types.PutRecordsRequestEntry {
	// The first hash key of shard i of an evenly split key space.
	h := new(big.Int).Lsh(big.NewInt(1), 128)
	h.Div(h, big.NewInt(int64(shards)))
	h.Mul(h, big.NewInt(int64(i)))
	out := make([]types.PutRecordsRequestEntry, n)
	for j := range out {
		out[j] = types.PutRecordsRequestEntry{Data: make([]byte, size), PartitionKey: aws.String("k"), ExplicitHashKey: aws.String(h.String())}
	}
	return out
}

// putRecords calls PutRecords to stream "s" and returns how many entries
// were written and how many throttled, checking that every failed entry
// is a throttle in Kinesis' words and that written ones come first.
func putRecords(t *testing.T, f *kinesisfake.Fake, es []types.PutRecordsRequestEntry) (written, throttled int) {
	t.Helper()
	out, err := f.PutRecords(t.Context(), &kinesis.PutRecordsInput{StreamName: aws.String("s"), Records: es})
	if err != nil {
		t.Fatalf("PutRecords: %v", err)
	}
	for i, r := range out.Records {
		if r.ErrorCode == nil {
			if r.SequenceNumber == nil || r.ShardId == nil {
				t.Fatalf("entry %d neither failed nor written: %+v", i, r)
			}
			written++
			continue
		}
		throttled++
		if aws.ToString(r.ErrorCode) != "ProvisionedThroughputExceededException" || !throttleMessage.MatchString(aws.ToString(r.ErrorMessage)) {
			t.Fatalf("entry %d failed with %q: %q; want a throttle", i, aws.ToString(r.ErrorCode), aws.ToString(r.ErrorMessage))
		}
	}
	if got := int(aws.ToInt32(out.FailedRecordCount)); got != throttled {
		t.Errorf("FailedRecordCount %d; %d entries failed", got, throttled)
	}
	return written, throttled
}

// throttleMessage is Kinesis' message of a shard's throttle.
var throttleMessage = regexp.MustCompile(`^Rate exceeded for shard shardId-\d{12} in stream s under account 000000000000\.$`)

func TestWriteLimits(t *testing.T) {
	t.Run("a shard takes a burst of 1,000 records, refuses the next, and refills at 1,000 per second", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newStream(t, 1, withLimits(kinesisfake.Limits{ShardWriteRecordsPerSecond: 1000}))
			for range 2 {
				if w, thr := putRecords(t, f, entries(500, 10, 0, 1)); w != 500 || thr != 0 {
					t.Fatalf("a burst within 1,000 records: %d written, %d throttled; want all written", w, thr)
				}
			}
			_, err := f.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String("s"), Data: []byte("x"), PartitionKey: aws.String("k")})
			pte, ok := errors.AsType[*types.ProvisionedThroughputExceededException](err)
			if !ok {
				t.Fatalf("the 1,001st record (PutRecord): %v; want ProvisionedThroughputExceededException", err)
			}
			if want := "Rate exceeded for shard shardId-000000000000 in stream s under account 000000000000."; pte.ErrorMessage() != want {
				t.Errorf("message %q; want %q", pte.ErrorMessage(), want)
			}
			if w, thr := putRecords(t, f, entries(10, 10, 0, 1)); w != 0 || thr != 10 {
				t.Fatalf("with the bucket empty: %d written, %d throttled; want all throttled", w, thr)
			}
			time.Sleep(100 * time.Millisecond) // virtual: refills 100 records
			if w, thr := putRecords(t, f, entries(150, 10, 0, 1)); w != 100 || thr != 50 {
				t.Errorf("100ms later: %d written, %d throttled; want 100 and 50", w, thr)
			}
			time.Sleep(time.Hour) // the bucket holds one second's worth, no more
			if w, thr := putRecords(t, f, entries(500, 10, 0, 1)); w != 500 || thr != 0 {
				t.Fatalf("after an idle hour: %d written, %d throttled", w, thr)
			}
			if w, thr := putRecords(t, f, entries(500, 10, 0, 1)); w != 500 || thr != 0 {
				t.Fatalf("after an idle hour: %d written, %d throttled", w, thr)
			}
			if w, thr := putRecords(t, f, entries(1, 10, 0, 1)); w != 0 || thr != 1 {
				t.Errorf("after an idle hour, the 1,001st record: %d written, %d throttled; want it throttled", w, thr)
			}
			if got, want := f.Throttled("PutRecords"), 10+50+1; got != want {
				t.Errorf("Throttled(PutRecords) = %d; want %d", got, want)
			}
			if got := f.Throttled("PutRecord"); got != 1 {
				t.Errorf("Throttled(PutRecord) = %d; want 1", got)
			}
			stats, err := f.ShardStats("s")
			if err != nil {
				t.Fatal(err)
			}
			want := []kinesisfake.ShardStats{{ShardID: "shardId-000000000000",
				WrittenRecords: 2100, WrittenBytes: 2100 * 11, ThrottledRecords: 62, ThrottledBytes: 10*11 + 50*11 + 1*11 + 2}}
			if diff := cmp.Diff(want, stats); diff != "" {
				t.Errorf("ShardStats mismatch (-want +got):\n%s", diff)
			}
		})
	})
	t.Run("a shard takes 1 MiB per second, partition keys counted", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newStream(t, 1, withLimits(kinesisfake.Limits{ShardWriteBytesPerSecond: 1 << 20}))
			// Four records of 256 KiB of data and a 1-byte key: 4 bytes too
			// many for 1 MiB, so the fourth is refused.
			if w, thr := putRecords(t, f, entries(4, 256<<10, 0, 1)); w != 3 || thr != 1 {
				t.Fatalf("4 × (256 KiB + key): %d written, %d throttled; want 3 and 1", w, thr)
			}
			// A record that fits what is left (256 KiB - 3 bytes) goes
			// through: a refused entry does not block smaller ones.
			if w, thr := putRecords(t, f, entries(2, 256<<10-4, 0, 1)); w != 1 || thr != 1 {
				t.Fatalf("2 × (256 KiB - 3): %d written, %d throttled; want 1 and 1", w, thr)
			}
			time.Sleep(time.Second / 4)
			if w, thr := putRecords(t, f, entries(2, 256<<10-1, 0, 1)); w != 1 || thr != 1 {
				t.Errorf("a quarter second later, 2 × 256 KiB: %d written, %d throttled; want 1 and 1", w, thr)
			}
		})
	})
	t.Run("each shard has its own allowance", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newStream(t, 2, withLimits(kinesisfake.Limits{ShardWriteRecordsPerSecond: 1000}))
			batch := append(entries(300, 1, 0, 2), entries(200, 1, 1, 2)...)
			for _, want := range []int{500, 500, 500, 300} {
				if w, _ := putRecords(t, f, batch); w != want {
					t.Fatalf("%d written; want %d", w, want)
				}
			}
			stats, err := f.ShardStats("s")
			if err != nil {
				t.Fatal(err)
			}
			got := [][2]int{{stats[0].WrittenRecords, stats[0].ThrottledRecords}, {stats[1].WrittenRecords, stats[1].ThrottledRecords}}
			if diff := cmp.Diff([][2]int{{1000, 200}, {800, 0}}, got); diff != "" {
				t.Errorf("written and throttled per shard mismatch (-want +got):\n%s", diff)
			}
		})
	})
	t.Run("a rate too high to matter refuses nothing", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newStream(t, 1, withLimits(kinesisfake.Limits{ShardWriteRecordsPerSecond: 1 << 40, ShardWriteBytesPerSecond: 1 << 50}))
			for range 10 {
				if w, thr := putRecords(t, f, entries(500, 10<<10, 0, 1)); w != 500 || thr != 0 {
					t.Fatalf("%d written, %d throttled; want all written", w, thr)
				}
			}
		})
	})
	t.Run("without limits, nothing is throttled", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newStream(t, 1)
			for range 10 {
				if w, thr := putRecords(t, f, entries(500, 10<<10, 0, 1)); w != 500 || thr != 0 {
					t.Fatalf("%d written, %d throttled; want all written", w, thr)
				}
			}
		})
	})
}

func TestRequestLimits(t *testing.T) {
	big := func(n int) []byte { return make([]byte, n) }
	one := func(data []byte) []types.PutRecordsRequestEntry {
		return []types.PutRecordsRequestEntry{{Data: data, PartitionKey: aws.String("k")}}
	}
	for _, tc := range []struct {
		name    string
		records []types.PutRecordsRequestEntry // PutRecords, or PutRecord of data when nil
		data    []byte
		check   func(error) bool
		want    string
	}{
		{name: "501 entries", records: entries(501, 1, 0, 1),
			check: isType[*types.ValidationException], want: "1 validation error detected: Value at 'records' failed to satisfy constraint: Member must have length less than or equal to 500"},
		{name: "no entry", records: []types.PutRecordsRequestEntry{},
			check: isType[*types.ValidationException], want: "1 validation error detected: Value at 'records' failed to satisfy constraint: Member must have length greater than or equal to 1"},
		{name: "more than 5 MiB in a request", records: append(entries(5, 1<<20-1, 0, 1), one([]byte("x"))...),
			check: isType[*types.InvalidArgumentException], want: "Records size exceeds 5 MB limit"},
		{name: "a PutRecords entry of more than 1 MiB of data", records: append(one([]byte("x")), one(big(1<<20+1))...),
			check: isType[*types.ValidationException], want: "1 validation error detected: Value at 'records.2.member.data' failed to satisfy constraint: Member must have length less than or equal to 1048576"},
		{name: "a PutRecord of more than 1 MiB of data", data: big(1<<20 + 1),
			check: isType[*types.ValidationException], want: "1 validation error detected: Value at 'data' failed to satisfy constraint: Member must have length less than or equal to 1048576"},
		{name: "a record of 1 MiB of data and a partition key", data: big(1 << 20),
			check: isType[*types.InvalidArgumentException], want: "record of 1048577 bytes (data + partition key) exceeds the limit of 1048576"},
	} {
		t.Run(tc.name+" is refused whole", func(t *testing.T) {
			f := newStream(t, 1)
			var err error
			if tc.records != nil {
				_, err = f.PutRecords(t.Context(), &kinesis.PutRecordsInput{StreamName: aws.String("s"), Records: tc.records})
			} else {
				_, err = f.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String("s"), Data: tc.data, PartitionKey: aws.String("k")})
			}
			if !tc.check(err) {
				t.Fatalf("error %T %v", err, err)
			}
			if msg := errorMessage(err); msg != tc.want {
				t.Errorf("message %q; want %q", msg, tc.want)
			}
			if recs, _ := f.Records("s", shard0); len(recs) != 0 {
				t.Errorf("%d records written", len(recs))
			}
		})
	}
}

func isType[E error](err error) bool {
	_, ok := errors.AsType[E](err)
	return ok
}

func errorMessage(err error) string {
	if ae, ok := errors.AsType[smithy.APIError](err); ok {
		return ae.ErrorMessage()
	}
	return ""
}

// iterator returns a TRIM_HORIZON iterator of shard0 of stream "s".
func iterator(t *testing.T, f *kinesisfake.Fake) *string {
	t.Helper()
	it, err := f.GetShardIterator(t.Context(), &kinesis.GetShardIteratorInput{StreamName: aws.String("s"), ShardId: aws.String(shard0), ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
	if err != nil {
		t.Fatal(err)
	}
	return it.ShardIterator
}

// wantThrottle fails unless err is Kinesis' throttle of shard0 of "s".
func wantThrottle(t *testing.T, err error) {
	t.Helper()
	pte, ok := errors.AsType[*types.ProvisionedThroughputExceededException](err)
	if !ok {
		t.Fatalf("error %T %v; want ProvisionedThroughputExceededException", err, err)
	}
	if want := "Rate exceeded for shard " + shard0 + " in stream s under account 000000000000."; pte.ErrorMessage() != want {
		t.Errorf("message %q; want %q", pte.ErrorMessage(), want)
	}
}

func TestReadRateLimits(t *testing.T) {
	const mib = 1 << 20
	t.Run("a shard serves 5 GetRecords calls in any second and refuses the 6th", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newStream(t, 1, withLimits(kinesisfake.Limits{GetRecordsCallsPerSecond: 5}))
			it := iterator(t, f)
			for i := range 5 {
				if _, err := f.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: it}); err != nil {
					t.Fatalf("call %d: %v", i+1, err)
				}
			}
			_, err := f.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: it})
			wantThrottle(t, err)
			time.Sleep(time.Second)
			if _, err := f.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: it}); err != nil {
				t.Fatalf("a second later: %v", err)
			}
			stats, _ := f.ShardStats("s")
			if s := stats[0]; s.GetRecordsCalls != 6 || s.ThrottledGetRecords != 1 || s.GetShardIteratorCalls != 1 || f.Throttled("GetRecords") != 1 {
				t.Errorf("stats %+v, Throttled(GetRecords) %d; want 6 served, 1 throttled", s, f.Throttled("GetRecords"))
			}
		})
	})
	t.Run("a 10 MiB read overdraws 2 MiB per second: the shard's calls are refused until it is paid back", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newStream(t, 1, withLimits(kinesisfake.Limits{ShardReadBytesPerSecond: 2 * mib, GetRecordsMaxBytes: 10 * mib}))
			putN(t, f, 0, 10, mib-1) // 1 MiB each with the key "k"
			out, err := f.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: iterator(t, f)})
			if err != nil || len(out.Records) != 10 {
				t.Fatalf("first read: %d records, %v; want all 10 MiB", len(out.Records), err)
			}
			// 2 MiB allowed, 10 MiB taken: 8 MiB to pay back at 2 MiB/s.
			time.Sleep(4*time.Second - time.Millisecond)
			_, err = f.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: out.NextShardIterator})
			wantThrottle(t, err)
			time.Sleep(time.Millisecond)
			if _, err := f.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: out.NextShardIterator}); err != nil {
				t.Fatalf("4s after: %v", err)
			}
			stats, _ := f.ShardStats("s")
			if s := stats[0]; s.ReadRecords != 10 || s.ReadBytes != 10*mib || s.ThrottledGetRecords != 1 {
				t.Errorf("stats %+v; want 10 records, 10 MiB read, 1 call throttled", s)
			}
		})
	})
	t.Run("GetRecords returns at most 10 MiB, at least one record", func(t *testing.T) {
		f := newStream(t, 1, withLimits(kinesisfake.Limits{GetRecordsMaxBytes: 10 * mib}))
		putN(t, f, 0, 11, mib-1)
		out, err := f.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: iterator(t, f)})
		if err != nil || len(out.Records) != 10 {
			t.Fatalf("%d records, %v; want 10 (10 MiB)", len(out.Records), err)
		}
		if out, err = f.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: out.NextShardIterator}); err != nil || len(out.Records) != 1 {
			t.Fatalf("next call: %d records, %v; want the 11th", len(out.Records), err)
		}
		small := newStream(t, 1, withLimits(kinesisfake.Limits{GetRecordsMaxBytes: 100}))
		putN(t, small, 0, 2, 1000)
		if out, err := small.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: iterator(t, small)}); err != nil || len(out.Records) != 1 {
			t.Errorf("a record larger than the cap: %d records, %v; want it alone", len(out.Records), err)
		}
	})
	t.Run("without limits, one GetRecords returns 11 MiB and nothing is throttled", func(t *testing.T) {
		f := newStream(t, 1)
		putN(t, f, 0, 11, mib-1)
		it := iterator(t, f)
		for i := range 20 {
			out, err := f.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: it})
			if err != nil {
				t.Fatalf("call %d: %v", i+1, err)
			}
			if i == 0 && len(out.Records) != 11 {
				t.Fatalf("%d records; want 11", len(out.Records))
			}
		}
	})
}

func TestControlPlaneLimits(t *testing.T) {
	streamLimit := func(stream string) string {
		return "Rate exceeded for stream " + stream + " under account 000000000000."
	}
	type call func(ctx context.Context, f *kinesisfake.Fake, stream string, i int) error
	listShards := func(ctx context.Context, f *kinesisfake.Fake, stream string, _ int) error {
		_, err := f.ListShards(ctx, &kinesis.ListShardsInput{StreamName: aws.String(stream)})
		return err
	}
	describe := func(ctx context.Context, f *kinesisfake.Fake, stream string, _ int) error {
		_, err := f.DescribeStreamSummary(ctx, &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(stream)})
		return err
	}
	iterator := func(ctx context.Context, f *kinesisfake.Fake, stream string, _ int) error {
		_, err := f.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: aws.String(stream), ShardId: aws.String(shard0), ShardIteratorType: types.ShardIteratorTypeLatest})
		return err
	}
	register := func(ctx context.Context, f *kinesisfake.Fake, stream string, i int) error {
		_, err := f.RegisterStreamConsumer(ctx, &kinesis.RegisterStreamConsumerInput{StreamARN: aws.String(kinesisfake.StreamARN(stream)), ConsumerName: aws.String(fmt.Sprintf("c%d", i))})
		return err
	}
	for _, tc := range []struct {
		name     string
		limits   kinesisfake.Limits
		op       string
		n        int  // calls served in a second
		call     call // the i-th call, to stream "s" or "t"
		perShard bool // whether "t" has an allowance of its own; else shared (per account)
		wantType func(error) bool
		wantMsg  string
	}{
		{name: "ListShards: 1,000 calls per second per stream", limits: kinesisfake.Limits{ListShardsCallsPerSecond: 1000},
			op: "ListShards", n: 1000, call: listShards, perShard: true,
			wantType: isType[*types.LimitExceededException], wantMsg: streamLimit("s")},
		{name: "DescribeStreamSummary: 20 calls per second per account", limits: kinesisfake.Limits{DescribeStreamSummaryCallsPerSecond: 20},
			op: "DescribeStreamSummary", n: 20, call: describe,
			wantType: isType[*types.LimitExceededException], wantMsg: streamLimit("s")},
		{name: "GetShardIterator: 5 calls per second per shard", limits: kinesisfake.Limits{GetShardIteratorCallsPerSecond: 5},
			op: "GetShardIterator", n: 5, call: iterator, perShard: true,
			wantType: isType[*types.ProvisionedThroughputExceededException], wantMsg: "Rate exceeded for shard " + shard0 + " in stream s under account 000000000000."},
		{name: "RegisterStreamConsumer: 5 calls per second per account", limits: kinesisfake.Limits{RegisterStreamConsumerCallsPerSecond: 5},
			op: "RegisterStreamConsumer", n: 5, call: register,
			wantType: isType[*types.LimitExceededException], wantMsg: streamLimit("s")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newStream(t, 1, withLimits(tc.limits))
				if _, err := f.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String("t"), ShardCount: aws.Int32(1)}); err != nil {
					t.Fatal(err)
				}
				i := 0
				for ; i < tc.n; i++ {
					if err := tc.call(t.Context(), f, "s", i); err != nil {
						t.Fatalf("call %d of %d: %v", i+1, tc.n, err)
					}
				}
				err := tc.call(t.Context(), f, "s", i)
				if !tc.wantType(err) || errorMessage(err) != tc.wantMsg {
					t.Fatalf("call %d: %T %v; want %q", tc.n+1, err, err, tc.wantMsg)
				}
				i++
				err = tc.call(t.Context(), f, "t", i)
				if tc.perShard && err != nil {
					t.Errorf("a call for another stream: %v; want it served", err)
				}
				if !tc.perShard && !tc.wantType(err) {
					t.Errorf("a call for another stream: %v; want it refused (per account)", err)
				}
				if got, want := f.Throttled(tc.op), map[bool]int{true: 1, false: 2}[tc.perShard]; got != want {
					t.Errorf("Throttled(%s) = %d; want %d", tc.op, got, want)
				}
				time.Sleep(time.Second)
				if err := tc.call(t.Context(), f, "s", i+1); err != nil {
					t.Errorf("a second later: %v", err)
				}
			})
		})
	}
	t.Run("SubscribeToShard: 1 call per second per consumer and shard, before the 5-second rule", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f, arn := setup(t, 2, withLimits(kinesisfake.Limits{SubscribeToShardCallsPerSecond: 1}))
			sub := func(shard string) error {
				out, err := f.SubscribeToShard(t.Context(), &kinesis.SubscribeToShardInput{ConsumerARN: aws.String(arn), ShardId: aws.String(shard),
					StartingPosition: &types.StartingPosition{Type: types.ShardIteratorTypeLatest}})
				if err == nil {
					t.Cleanup(func() { out.GetStream().Close() })
				}
				return err
			}
			if err := sub(shard0); err != nil {
				t.Fatal(err)
			}
			err := sub(shard0)
			if want := "Rate exceeded for consumer " + arn + " and shard " + shard0 + "."; !isType[*types.LimitExceededException](err) || errorMessage(err) != want {
				t.Fatalf("a second call at once: %T %v; want LimitExceededException %q", err, err, want)
			}
			if err := sub("shardId-000000000001"); err != nil {
				t.Errorf("another shard: %v; want it served", err)
			}
			time.Sleep(time.Second)
			// The rate allows it; the 5-second rule still refuses it.
			if err := sub(shard0); !isType[*types.ResourceInUseException](err) {
				t.Errorf("a second later: %T %v; want ResourceInUseException", err, err)
			}
			if err := sub(shard0); !isType[*types.LimitExceededException](err) {
				t.Errorf("a failed call counts: %T %v; want LimitExceededException", err, err)
			}
			if got := f.Throttled("SubscribeToShard"); got != 2 {
				t.Errorf("Throttled(SubscribeToShard) = %d; want 2", got)
			}
		})
	})
}
