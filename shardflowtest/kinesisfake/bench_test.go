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

// BenchmarkPutRecords measures the fake's write path: ns and allocations
// per record of 500-entry PutRecords calls to a 4-shard stream, with no
// limits (the default) and with AWSLimits' write rates raised so high
// that no entry is refused but every entry pays the bookkeeping.
func BenchmarkPutRecords(b *testing.B) {
	for _, bc := range []struct {
		name   string
		shards int32
		opts   func(*kinesisfake.Options)
	}{
		{"limits off", 4, func(*kinesisfake.Options) {}},
		{"AWSLimits", 4, func(o *kinesisfake.Options) {
			o.Limits = kinesisfake.AWSLimits()
			// Wide enough never to throttle: every entry pays the
			// bookkeeping and is written, as with limits off.
			o.Limits.ShardWriteRecordsPerSecond, o.Limits.ShardWriteBytesPerSecond = 1<<30, 1<<40
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			f := kinesisfake.New(bc.opts)
			if _, err := f.CreateStream(b.Context(), &kinesis.CreateStreamInput{StreamName: aws.String("s"), ShardCount: aws.Int32(bc.shards)}); err != nil {
				b.Fatal(err)
			}
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
