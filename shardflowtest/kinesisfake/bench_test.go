package kinesisfake_test

import (
	"fmt"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
)

// benchEntries returns a PutRecords batch of 500 entries of 100 bytes over
// 64 partition keys.
func benchEntries() []types.PutRecordsRequestEntry {
	entries := make([]types.PutRecordsRequestEntry, kinesisfake.MaxPutRecordsEntries)
	for i := range entries {
		entries[i] = types.PutRecordsRequestEntry{Data: make([]byte, 100), PartitionKey: aws.String(fmt.Sprintf("key-%d", i%64))}
	}
	return entries
}

// benchCases are the fake with no limits (the default), and with every
// limit on but set so high that nothing is refused: every call pays the
// bookkeeping, and the two do the same work otherwise.
var benchCases = []struct {
	name string
	opts func(*kinesisfake.Options)
}{
	{"limits off", func(*kinesisfake.Options) {}},
	{"limits on", func(o *kinesisfake.Options) {
		o.Limits = &kinesisfake.Limits{
			ShardWriteRecordsPerSecond: 1 << 30, ShardWriteBytesPerSecond: 1 << 40,
			GetRecordsCallsPerSecond: 1 << 30, ShardReadBytesPerSecond: 1 << 40, GetRecordsMaxBytes: 10 << 20,
			GetShardIteratorCallsPerSecond: 1 << 30, ListShardsCallsPerSecond: 1 << 30,
		}
	}},
}

func benchStream(b *testing.B, shards int32, opts func(*kinesisfake.Options)) *kinesisfake.Fake {
	f := kinesisfake.New(opts)
	if _, err := f.CreateStream(b.Context(), &kinesis.CreateStreamInput{StreamName: aws.String("s"), ShardCount: aws.Int32(shards)}); err != nil {
		b.Fatal(err)
	}
	return f
}

// BenchmarkPutRecords measures the fake's write path: 500-entry PutRecords
// calls to a 4-shard stream.
func BenchmarkPutRecords(b *testing.B) {
	for _, bc := range benchCases {
		b.Run(bc.name, func(b *testing.B) {
			f := benchStream(b, 4, bc.opts)
			in := &kinesis.PutRecordsInput{StreamName: aws.String("s"), Records: benchEntries()}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := f.PutRecords(b.Context(), in); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(in.Records)), "ns/record")
		})
	}
}

// BenchmarkGetRecords measures the fake's read path: a GetShardIterator and
// a GetRecords of 500 records of 100 bytes per iteration.
func BenchmarkGetRecords(b *testing.B) {
	for _, bc := range benchCases {
		b.Run(bc.name, func(b *testing.B) {
			f := benchStream(b, 1, bc.opts)
			for range 10 {
				if _, err := f.PutRecords(b.Context(), &kinesis.PutRecordsInput{StreamName: aws.String("s"), Records: benchEntries()}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				it, err := f.GetShardIterator(b.Context(), &kinesis.GetShardIteratorInput{StreamName: aws.String("s"), ShardId: aws.String(shard0), ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
				if err != nil {
					b.Fatal(err)
				}
				out, err := f.GetRecords(b.Context(), &kinesis.GetRecordsInput{ShardIterator: it.ShardIterator, Limit: aws.Int32(500)})
				if err != nil {
					b.Fatal(err)
				}
				if len(out.Records) != 500 {
					b.Fatalf("%d records; want 500", len(out.Records))
				}
			}
		})
	}
}
