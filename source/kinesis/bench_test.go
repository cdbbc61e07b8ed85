package kinesissource_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/awstest"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// readAll runs Source → counting sink until n records arrived.
func readAll(b *testing.B, client kinesissource.API, stream string, n int64) {
	src, err := kinesissource.New(client, stream, func(o *kinesissource.Options) {
		o.InitialPosition = kinesissource.TrimHorizon()
		o.IdleInterval = 10 * time.Millisecond
	})
	if err != nil {
		b.Fatal(err)
	}
	readSource(b, src, n)
}

// readSource runs src → counting sink until n records arrived.
func readSource(b *testing.B, src *kinesissource.Source, n int64) {
	var count atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- shardflow.Source(src).Sink(shardflow.SinkFunc[shardflow.Record](func(context.Context, shardflow.Record) error {
			if count.Add(1) == n {
				cancel()
			}
			return nil
		})).Run(ctx)
	}()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	if count.Load() < n {
		b.Fatalf("read %d of %d records", count.Load(), n)
	}
}

// rawRead is the floor: a hand-written aws-sdk-go-v2 GetRecords loop, one
// goroutine per shard from TRIM_HORIZON until the shard has no more records.
func rawRead(b *testing.B, c kinesissource.API, stream string, n int64) {
	ctx := context.Background()
	shards, err := c.ListShards(ctx, &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		b.Fatal(err)
	}
	var count atomic.Int64
	var wg sync.WaitGroup
	for _, sh := range shards.Shards {
		wg.Go(func() {
			it, err := c.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: aws.String(stream), ShardId: sh.ShardId,
				ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
			if err != nil {
				b.Error(err)
				return
			}
			iter := it.ShardIterator
			for iter != nil {
				out, err := c.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: iter})
				if err != nil {
					b.Error(err)
					return
				}
				count.Add(int64(len(out.Records)))
				if len(out.Records) == 0 && aws.ToInt64(out.MillisBehindLatest) == 0 {
					return
				}
				iter = out.NextShardIterator
			}
		})
	}
	wg.Wait()
	if count.Load() != n {
		b.Fatalf("raw loop read %d of %d records", count.Load(), n)
	}
}

func fill(b *testing.B, c interface {
	PutRecords(context.Context, *kinesis.PutRecordsInput, ...func(*kinesis.Options)) (*kinesis.PutRecordsOutput, error)
}, stream string, n int) {
	data := make([]byte, 100)
	for i := 0; i < n; {
		var entries []types.PutRecordsRequestEntry
		for ; i < n && len(entries) < 500; i++ {
			entries = append(entries, types.PutRecordsRequestEntry{Data: data, PartitionKey: aws.String(fmt.Sprint(i))})
		}
		out, err := c.PutRecords(context.Background(), &kinesis.PutRecordsInput{StreamName: aws.String(stream), Records: entries})
		if err != nil || aws.ToInt32(out.FailedRecordCount) != 0 {
			b.Fatalf("fill: %v", err)
		}
	}
}

// BenchmarkReadFake reads 40,000 100-byte records from 4 shards of the
// in-memory fake: source → pipeline → counting sink, next to the raw loop.
// The source is bound by the Kinesis limit it keeps (5 GetRecords calls per
// second per shard).
func BenchmarkReadFake(b *testing.B) {
	const n = 40000
	f := kinesisfake.New()
	if _, err := f.CreateStream(context.Background(), &kinesis.CreateStreamInput{StreamName: aws.String("bench"), ShardCount: aws.Int32(4)}); err != nil {
		b.Fatal(err)
	}
	fill(b, f, "bench", n)
	b.Run("source", func(b *testing.B) {
		for b.Loop() {
			readAll(b, f, "bench", n)
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("raw", func(b *testing.B) {
		for b.Loop() {
			rawRead(b, f, "bench", n)
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
	})
}

// BenchmarkReadFakeStreams reads 20,000 100-byte records from four
// 1-shard streams, through one source of the four (NewStreams), next to
// one 4-shard stream through New: what reading several streams costs over
// reading one. Each shard's records come in one GetRecords call, so the
// 5 calls per second the source keeps per shard do not bound it.
func BenchmarkReadFakeStreams(b *testing.B) {
	const n = 20000
	f := kinesisfake.New()
	ctx := context.Background()
	if _, err := f.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String("one"), ShardCount: aws.Int32(4)}); err != nil {
		b.Fatal(err)
	}
	fill(b, f, "one", n)
	// Each 1-shard stream holds as many records as a shard of "one", so
	// that both read with as many GetRecords calls per shard.
	ids, _ := f.Shards("one")
	var streams []kinesissource.Stream
	for i, id := range ids {
		recs, _ := f.Records("one", id)
		name := fmt.Sprint("s", i)
		if _, err := f.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(1)}); err != nil {
			b.Fatal(err)
		}
		fill(b, f, name, len(recs))
		streams = append(streams, kinesissource.Stream{Name: name})
	}
	b.Run("four streams of one shard", func(b *testing.B) {
		for b.Loop() {
			src, err := kinesissource.NewStreams(f, streams, func(o *kinesissource.Options) {
				o.InitialPosition = kinesissource.TrimHorizon()
				o.IdleInterval = 10 * time.Millisecond
			})
			if err != nil {
				b.Fatal(err)
			}
			readSource(b, src, n)
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("one stream of four shards", func(b *testing.B) {
		for b.Loop() {
			readAll(b, f, "one", n)
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
	})
}

// BenchmarkReadEmulator does the same against kinesis-local with 4,000
// records (the emulator is slow to fill).
func BenchmarkReadEmulator(b *testing.B) {
	const n = 4000
	c := awstest.KinesisClient(b, awstest.KinesisNoRetries)
	stream := awstest.CreateStream(b, c, 4)
	fill(b, c, stream, n)
	b.Run("source", func(b *testing.B) {
		for b.Loop() {
			readAll(b, c, stream, n)
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("raw", func(b *testing.B) {
		for b.Loop() {
			rawRead(b, c, stream, n)
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
	})
}
