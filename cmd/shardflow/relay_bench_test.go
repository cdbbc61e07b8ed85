package main

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow/internal/awstest"
)

// BenchmarkRelayOnKinesisLocal measures the relay, ordered (the default)
// and with --unordered, on the Kinesis emulator: 3,000 records of 100
// partition keys from a 2-shard stream to a 2-shard stream. Each iteration
// uses fresh streams; run it with -benchtime=1x -count=N.
//
//	go test -run '^$' -bench RelayOnKinesisLocal -benchtime=1x -count=3 ./cmd/shardflow/
func BenchmarkRelayOnKinesisLocal(b *testing.B) {
	const records, keys = 3000, 100
	for _, mode := range []string{"ordered", "unordered"} {
		b.Run(mode, func(b *testing.B) {
			kc := awstest.KinesisClient(b)
			var total time.Duration
			for b.Loop() {
				b.StopTimer()
				in, out := awstest.CreateStream(b, kc, 2), awstest.CreateStream(b, kc, 2)
				for i := 0; i < records; i += 500 {
					entries := make([]types.PutRecordsRequestEntry, 500)
					for j := range entries {
						n := i + j
						entries[j] = types.PutRecordsRequestEntry{Data: fmt.Appendf(nil, "record-%05d", n), PartitionKey: aws.String(fmt.Sprintf("key-%03d", n%keys))}
					}
					if res, err := kc.PutRecords(b.Context(), &kinesis.PutRecordsInput{StreamName: aws.String(in), Records: entries}); err != nil || aws.ToInt32(res.FailedRecordCount) != 0 {
						b.Fatalf("put the input: %v", err)
					}
				}
				args := []string{"--from", in, "--to", out, "--log-level", "error"}
				if mode == "unordered" {
					args = append(args, "--unordered")
				}
				c, err := parseRelayFlags(args, io.Discard, io.Discard)
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(b.Context())
				var stats relayStats
				done := make(chan error, 1)
				b.StartTimer()
				start := time.Now()
				go func() { done <- runRelay(ctx, kc, nil, c, &stats) }()
				for stats.written.Load() < records {
					select {
					case err := <-done:
						b.Fatalf("relay stopped early: %v", err)
					case <-time.After(10 * time.Millisecond):
					}
				}
				total += time.Since(start)
				b.StopTimer()
				cancel()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(records*b.N)/total.Seconds(), "records/s")
		})
	}
}
