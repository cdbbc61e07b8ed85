package kinesissink_test

import (
	"context"
	"crypto/md5"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/shardflow/shardflow/internal/awstest"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
)

// discardClient accepts every PutRecords entry at no cost, routing it as a
// stream of 4 equal shards would (the top two bits of the hash key), so
// benchmarks measure the producer, not a server.
type discardClient struct {
	fake *kinesisfake.Fake // for ListShards of the same 4-shard stream
}

var shardIDs = [4]*string{aws.String("shardId-000000000000"), aws.String("shardId-000000000001"),
	aws.String("shardId-000000000002"), aws.String("shardId-000000000003")}

func (c *discardClient) PutRecords(_ context.Context, in *kinesis.PutRecordsInput, _ ...func(*kinesis.Options)) (*kinesis.PutRecordsOutput, error) {
	out := &kinesis.PutRecordsOutput{Records: make([]types.PutRecordsResultEntry, len(in.Records)), FailedRecordCount: aws.Int32(0)}
	seq := aws.String("49590338271490256608559692538361571095921575989136588898")
	for i, e := range in.Records {
		var top byte
		if e.ExplicitHashKey != nil {
			top = 0 // benchmarks do not use explicit hash keys
		} else {
			sum := md5.Sum([]byte(*e.PartitionKey))
			top = sum[0] >> 6
		}
		out.Records[i] = types.PutRecordsResultEntry{ShardId: shardIDs[top], SequenceNumber: seq}
	}
	return out, nil
}

func (c *discardClient) ListShards(ctx context.Context, in *kinesis.ListShardsInput, optFns ...func(*kinesis.Options)) (*kinesis.ListShardsOutput, error) {
	return c.fake.ListShards(ctx, in, optFns...)
}

// noRateLimit turns Options.RateLimit off: the discard client takes any
// rate.
func noRateLimit(o *kinesissink.Options) { o.RateLimit = -1 }

// quiet keeps the producer's lifecycle logs out of the figures.
func quiet(o *kinesissink.Options) { o.Logger = slog.New(slog.DiscardHandler) }

func benchKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "user-" + strconv.Itoa(i)
	}
	return keys
}

// benchProducer puts b.N 100-byte records through a Producer into the
// discard client and reports records/s and the process's CPU time per
// record (every goroutine's: the request goroutines' and the garbage
// collector's too). The partition keys are 10,000 keys in turn. The discard
// client has no write limits, so Options.RateLimit is off unless fns turn
// it on.
func benchProducer(b *testing.B, fns ...func(*kinesissink.Options)) {
	benchProducerKeys(b, 10000, fns...)
}

// benchProducerKeys is benchProducer with nkeys partition keys in turn; 0:
// a key of its own for every record, as bench/peers puts them (made before
// the timer starts).
func benchProducerKeys(b *testing.B, nkeys int, fns ...func(*kinesissink.Options)) {
	client := &discardClient{fake: newFake(b, 4)}
	fns = append([]func(*kinesissink.Options){noRateLimit}, fns...)
	p, err := kinesissink.NewProducer(client, stream, append(fns, quiet)...)
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 100)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(100)
	put := func(key string) {
		if err := p.PutEntry(ctx, kinesissink.Entry{Data: data, PartitionKey: key}, nil); err != nil {
			b.Fatal(err)
		}
	}
	var cpu0 time.Duration
	if nkeys > 0 {
		keys := benchKeys(nkeys)
		cpu0 = cpuTime()
		i := 0
		for b.Loop() {
			put(keys[i%len(keys)])
			i++
		}
	} else {
		// b.N is known before the loop only in this form.
		keys := benchKeys(b.N)
		b.ResetTimer()
		cpu0 = cpuTime()
		for i := range b.N {
			put(keys[i])
		}
		b.StopTimer()
	}
	if err := p.Close(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	if cpu := cpuTime() - cpu0; cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/record")
	}
}

// BenchmarkProducer is the producer's cost per 100-byte record, request
// handling included, with a server that costs nothing.
func BenchmarkProducer(b *testing.B) {
	benchProducer(b, func(o *kinesissink.Options) {})
}

// BenchmarkProducerAggregated is the same with KPL aggregation: records per
// second per core packed into aggregates and sent.
func BenchmarkProducerAggregated(b *testing.B) {
	benchProducer(b, func(o *kinesissink.Options) { o.Aggregate = true })
}

// BenchmarkProducerAggregatedDistinctKeys is BenchmarkProducerAggregated
// with a partition key of its own for every record, as bench/peers puts
// them: no key repeats, so nothing about a key can be reused.
func BenchmarkProducerAggregatedDistinctKeys(b *testing.B) {
	benchProducerKeys(b, 0, func(o *kinesissink.Options) { o.Aggregate = true })
}

// BenchmarkProducerOrderedAggregated adds ordered mode.
func BenchmarkProducerOrderedAggregated(b *testing.B) {
	benchProducer(b, func(o *kinesissink.Options) { o.Aggregate = true; o.Ordered = true })
}

// BenchmarkProducerSDKMetrics is the three benchmarks above with the
// sink's metrics recorded by an OpenTelemetry SDK provider (with a manual
// reader, never collected), where they use the global provider, a no-op.
// The difference is the cost of the metrics per record.
func BenchmarkProducerSDKMetrics(b *testing.B) {
	modes := []struct {
		name string
		fn   func(*kinesissink.Options)
	}{
		{"plain", func(*kinesissink.Options) {}},
		{"aggregated", func(o *kinesissink.Options) { o.Aggregate = true }},
		{"ordered-aggregated", func(o *kinesissink.Options) { o.Aggregate = true; o.Ordered = true }},
	}
	for _, mode := range modes {
		b.Run(mode.name, func(b *testing.B) {
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			benchProducer(b, mode.fn, func(o *kinesissink.Options) { o.MeterProvider = mp })
		})
	}
}

// The emulator benchmarks write b.N records of 100 bytes to kinesis-local:
// with the Producer, and with a hand-written loop of 500-entry PutRecords
// calls (the floor), in the same run. Run them with a fixed count, e.g.
// -benchtime 3000x: the emulator takes about 1,000 records/s.
func BenchmarkEmulatorProducer(b *testing.B) {
	client := awstest.KinesisClient(b, awstest.KinesisNoRetries)
	out := awstest.CreateStream(b, client, 4)
	p, err := kinesissink.NewProducer(client, out, quiet)
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 100)
	ctx := context.Background()
	b.SetBytes(100)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if err := p.Put(ctx, data, strconv.Itoa(i)); err != nil {
			b.Fatal(err)
		}
	}
	// Close waits for every record's outcome: that is when they are written.
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := p.Close(cctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
}

func BenchmarkEmulatorRawPutRecords(b *testing.B) {
	client := awstest.KinesisClient(b, awstest.KinesisNoRetries)
	out := awstest.CreateStream(b, client, 4)
	data := make([]byte, 100)
	ctx := context.Background()
	b.SetBytes(100)
	batch := make([]types.PutRecordsRequestEntry, 0, 500)
	put := func() {
		for len(batch) > 0 {
			res, err := client.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String(out), Records: batch})
			if err != nil {
				b.Fatal(err)
			}
			var failed []types.PutRecordsRequestEntry
			for i, r := range res.Records {
				if r.ErrorCode != nil {
					failed = append(failed, batch[i])
				}
			}
			batch = append(batch[:0], failed...)
		}
	}
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		batch = append(batch, types.PutRecordsRequestEntry{Data: data, PartitionKey: aws.String(fmt.Sprint(i))})
		if len(batch) == 500 {
			put()
		}
	}
	put()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
}
