package kinesissource_test

// Enhanced fan-out against polling, in one run:
//
//	go test -run '^$' -bench 'FanOut' -benchtime 1x ./source/kinesis/
//
// (kinesis-local rows need scripts/emulators.sh start; without it they
// skip loudly.) Figures are real time on a shared machine: noisy.

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
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

// benchModes are the read modes benchmarked: polling with the source's
// defaults (IdleInterval 1s), and enhanced fan-out.
var benchModes = []struct {
	name string
	opts func(app string) func(*kinesissource.Options)
}{
	{"polling", func(string) func(*kinesissource.Options) { return func(*kinesissource.Options) {} }},
	{"enhanced-fan-out", func(app string) func(*kinesissource.Options) {
		return func(o *kinesissource.Options) { o.EnhancedFanOut = &kinesissource.EnhancedFanOut{ConsumerName: app} }
	}},
}

// BenchmarkFanOutLatency measures the latency from the start of a
// PutRecord call to the pipeline's handler on a 2-shard stream, for polling
// with the source's defaults and for enhanced fan-out, on the in-memory
// fake (no network, no propagation delay at all) and on kinesis-local. Two
// loads: busy, a record every 10-30ms (a poller at the tip finds records at
// every call, so it polls every 200ms), and sparse, a record every 0.5-1.5s
// (a poller mostly finds nothing and waits IdleInterval, 1s). Put times are
// jittered so that samples fall at every point of a polling cycle. It
// reports the 50th and 99th percentiles (of 30 samples when sparse: the
// 99th is the worst).
func BenchmarkFanOutLatency(b *testing.B) {
	loads := []struct {
		name     string
		samples  int // on the fake; half on kinesis-local when busy
		gap, jit time.Duration
	}{
		{"busy", 300, 10 * time.Millisecond, 20 * time.Millisecond},
		{"sparse", 30, 500 * time.Millisecond, time.Second},
	}
	backends := []struct {
		name   string
		stream func(b *testing.B) (kinesissource.FanOutAPI, string)
	}{
		{"fake", func(b *testing.B) (kinesissource.FanOutAPI, string) {
			f := kinesisfake.New()
			if _, err := f.CreateStream(context.Background(), &kinesis.CreateStreamInput{StreamName: aws.String("lat"), ShardCount: aws.Int32(2)}); err != nil {
				b.Fatal(err)
			}
			return f, "lat"
		}},
		{"kinesis-local", func(b *testing.B) (kinesissource.FanOutAPI, string) {
			c := awstest.KinesisClient(b, awstest.KinesisNoRetries, awstest.KinesisLocalFanOut)
			return c, awstest.CreateStream(b, c, 2)
		}},
	}
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			for _, l := range loads {
				b.Run(l.name, func(b *testing.B) {
					samples := l.samples
					if be.name == "kinesis-local" && l.name == "busy" {
						samples /= 2 // the emulator is slow to write
					}
					for _, m := range benchModes {
						b.Run(m.name, func(b *testing.B) {
							var p50, p99 time.Duration
							for range b.N {
								client, stream := be.stream(b)
								p50, p99 = putToHandler(b, client, stream, m.opts("latency"), samples, l.gap, l.jit)
							}
							b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
							b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
						})
					}
				})
			}
		})
	}
}

// putToHandler puts samples records one at a time, gap plus up to jit
// apart, and returns the 50th and 99th percentiles of the time from the
// start of each put to the handler.
func putToHandler(b *testing.B, client kinesissource.FanOutAPI, stream string, mode func(*kinesissource.Options), samples int, gap, jit time.Duration) (p50, p99 time.Duration) {
	src, err := kinesissource.New(client, stream, mode, func(o *kinesissource.Options) {
		o.InitialPosition = kinesissource.TrimHorizon()
		o.Logger = discardLogger()
	})
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	sent := make([]time.Time, samples)
	latency := make([]time.Duration, 0, samples)
	warm := make(chan struct{})
	var warmOnce sync.Once
	handle := func(_ context.Context, r shardflow.Record) error {
		now := time.Now()
		if string(r.Data) == "warm-up" {
			warmOnce.Do(func() { close(warm) })
			return nil
		}
		i, err := strconv.Atoi(string(r.Data))
		if err != nil {
			return err
		}
		mu.Lock()
		latency = append(latency, now.Sub(sent[i]))
		mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- shardflow.Source(src, func(o *shardflow.Options) { o.Logger = discardLogger() }).
			Sink(shardflow.SinkFunc[shardflow.Record](handle)).Run(ctx)
	}()
	put := func(data string) {
		if _, err := client.(interface {
			PutRecord(context.Context, *kinesis.PutRecordInput, ...func(*kinesis.Options)) (*kinesis.PutRecordOutput, error)
		}).PutRecord(ctx, &kinesis.PutRecordInput{StreamName: aws.String(stream), Data: []byte(data), PartitionKey: aws.String(strconv.Itoa(rand.IntN(1000)))}); err != nil {
			b.Fatal(err)
		}
	}
	// Sample once every shard is read: the warm-up record came through and
	// a poll cycle or two passed.
	put("warm-up")
	select {
	case <-warm:
	case err := <-errc:
		b.Fatalf("Run = %v", err)
	case <-time.After(3 * time.Minute): // a bound on a hang, not a speed claim
		b.Fatal("the warm-up record did not come through in 3 minutes")
	}
	time.Sleep(2 * time.Second)
	b.ResetTimer()
	for i := range samples {
		mu.Lock()
		sent[i] = time.Now()
		mu.Unlock()
		put(strconv.Itoa(i))
		time.Sleep(gap + rand.N(jit))
	}
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := len(latency)
		mu.Unlock()
		if n == samples {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d records came through in 3 minutes", n, samples)
		}
	}
	b.StopTimer()
	cancel()
	if err := <-errc; err != nil {
		b.Fatalf("Run = %v", err)
	}
	slices.Sort(latency)
	return latency[len(latency)/2], latency[(len(latency)*99+99)/100-1]
}

// BenchmarkFanOutThreeApplications has three applications read one stream
// on the fake with Kinesis' read limits on (Options.ReadLimits: 5 GetRecords
// calls and 2 MiB/s per shard shared by every poller; 2 MiB/s per shard for
// each enhanced fan-out consumer): each catches up with a backlog of 2,000
// records of 10 KiB (19.5 MiB) in the one shard, all three at once. It
// reports the records/s of the slowest application and the mean over the
// three (each application's records over its own time to read them).
func BenchmarkFanOutThreeApplications(b *testing.B) {
	const apps, records, size = 3, 2000, 10 << 10
	for _, m := range benchModes {
		b.Run(m.name, func(b *testing.B) {
			var slowest, mean float64
			for range b.N {
				f := kinesisfake.New(func(o *kinesisfake.Options) { o.ReadLimits = true })
				if _, err := f.CreateStream(context.Background(), &kinesis.CreateStreamInput{StreamName: aws.String("shared"), ShardCount: aws.Int32(1)}); err != nil {
					b.Fatal(err)
				}
				data := make([]byte, size)
				for i := 0; i < records; i += 100 {
					var entries []types.PutRecordsRequestEntry
					for j := i; j < i+100; j++ {
						entries = append(entries, types.PutRecordsRequestEntry{Data: data, PartitionKey: aws.String(strconv.Itoa(j))})
					}
					if _, err := f.PutRecords(context.Background(), &kinesis.PutRecordsInput{StreamName: aws.String("shared"), Records: entries}); err != nil {
						b.Fatal(err)
					}
				}
				rates := make([]float64, apps)
				var wg sync.WaitGroup
				start := time.Now()
				for a := range apps {
					wg.Go(func() {
						took := readBacklog(b, f, "shared", m.opts(fmt.Sprint("app-", a)), records)
						rates[a] = records / took.Seconds()
					})
				}
				wg.Wait()
				b.Logf("%s: %v in all; records/s per application %.0f", m.name, time.Since(start).Round(time.Millisecond), rates)
				slowest, mean = slices.Min(rates), 0
				for _, r := range rates {
					mean += r / apps
				}
			}
			b.ReportMetric(slowest, "records/s-slowest-app")
			b.ReportMetric(mean, "records/s-per-app")
		})
	}
}

// readBacklog runs one application, a source in mode from the trim
// horizon, until it read n records, and returns how long that took.
func readBacklog(b *testing.B, f *kinesisfake.Fake, stream string, mode func(*kinesissource.Options), n int64) time.Duration {
	src, err := kinesissource.New(f, stream, mode, func(o *kinesissource.Options) {
		o.InitialPosition = kinesissource.TrimHorizon()
		o.Logger = discardLogger()
	})
	if err != nil {
		b.Error(err)
		return 0
	}
	var count atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute) // a bound on a hang
	defer cancel()
	start := time.Now()
	var took time.Duration
	err = shardflow.Source(src, func(o *shardflow.Options) { o.Logger = discardLogger() }).
		Sink(shardflow.SinkFunc[shardflow.Record](func(context.Context, shardflow.Record) error {
			if count.Add(1) == n {
				took = time.Since(start)
				cancel()
			}
			return nil
		})).Run(ctx)
	if err != nil || count.Load() < n {
		b.Errorf("an application read %d of %d records: %v", count.Load(), n, err)
	}
	return took
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
