package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow/internal/metrictest"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/smithy-go"
	"github.com/google/go-cmp/cmp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
)

// relayMetricsRun relays n records of the fake's stream "in" (2 shards) to
// "out" (1 shard) with a memory checkpoint store, until every one is
// written, then stops the relay and returns its metrics: each instrument's
// int64 sum or gauge, summed over its attributes. faults, if not nil,
// injects faults into the fake before the relay starts. Call it inside a
// synctest bubble.
func relayMetricsRun(t *testing.T, n int, faults func(*kinesisfake.Fake)) map[string]int64 {
	t.Helper()
	f := kinesisfake.New()
	for name, shards := range map[string]int32{"in": 2, "out": 1} {
		if _, err := f.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(shards)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if _, err := f.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String("in"),
			PartitionKey: aws.String(fmt.Sprintf("key-%02d", i%20)), Data: fmt.Appendf(nil, "record-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if faults != nil {
		faults(f)
	}
	reader := sdkmetric.NewManualReader()
	c, err := parseRelayFlags([]string{"--from", "in", "--to", "out", "--log-level", "error"}, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c.meterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	store := memory.New()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	var stats relayStats
	go func() { done <- runRelay(ctx, f, store, c, &stats) }()
	for written := 0; written < n; {
		select {
		case err := <-done:
			cancel()
			t.Fatalf("relay returned %v with %d of %d records written", err, written, n)
		case <-time.After(100 * time.Millisecond): // virtual time: the source polls, the sink lingers
		}
		recs, err := f.Records("out", "shardId-000000000000")
		if err != nil {
			t.Fatal(err)
		}
		written = len(recs)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("relay: %v", err)
	}
	if store.Saves() == 0 {
		t.Errorf("the relay saved no checkpoint")
	}
	return sumMetrics(t, reader)
}

// sumMetrics collects r and returns each sum or gauge, summed over its
// data points.
func sumMetrics(t *testing.T, r *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	for p, v := range metrictest.Collect(t, r) {
		got[p.Name] += int64(v)
	}
	return got
}

// pick returns the named metrics of got. The SDK exports no counter that
// was never added to: a missing one is 0. (The fault test sees the source's
// and the sink's failure counters non-zero, so their names are checked.)
func pick(got map[string]int64, names ...string) map[string]int64 {
	out := map[string]int64{}
	for _, name := range names {
		out[name] = got[name]
	}
	return out
}

// TestRelayMetricsCountEveryRecordOnce relays a known number of records
// with an SDK meter provider as the pipeline's: the source, the sink, the
// stages and the checkpoint saves all record through it, and the counts
// agree.
func TestRelayMetricsCountEveryRecordOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 500
		got := relayMetricsRun(t, n, nil)
		want := map[string]int64{
			"shardflow.source.records":              n,
			"shardflow.sink.records":                n,
			"shardflow.stage.records.failed":        0,
			"shardflow.stage.records.dropped":       0,
			"shardflow.sink.failed_entries":         0,
			"shardflow.sink.records.given_up":       0,
			"shardflow.sink.putrecords.errors":      0,
			"shardflow.source.getrecords.errors":    0,
			"shardflow.source.getrecords.throttles": 0,
			"shardflow.checkpoint.failures":         0,
		}
		if diff := cmp.Diff(want, pick(got, slices.Collect(maps.Keys(want))...)); diff != "" {
			t.Errorf("metrics mismatch (-want +got):\n%s\nall: %v", diff, got)
		}
		if got["shardflow.checkpoint.saves"] <= 0 {
			t.Errorf("shardflow.checkpoint.saves = %d; want some", got["shardflow.checkpoint.saves"])
		}
	})
}

// TestRelayMetricsCountInjectedFaults throttles some GetRecords calls,
// fails others, and fails some PutRecords entries: the metrics count each
// injected fault, and every record is still counted read and written once.
func TestRelayMetricsCountInjectedFaults(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n, throttles, errs = 500, 6, 3
		var throttled, errored, failed int64 // under the fake's lock
		rng := rand.New(rand.NewPCG(3, 4))
		got := relayMetricsRun(t, n, func(f *kinesisfake.Fake) {
			f.InjectError(func(op string, _ any) error {
				switch {
				case op != "GetRecords":
				case throttled < throttles:
					throttled++
					return &types.ProvisionedThroughputExceededException{Message: aws.String("injected")}
				case errored < errs:
					errored++
					return &smithy.GenericAPIError{Code: "InternalFailure", Message: "injected", Fault: smithy.FaultServer}
				}
				return nil
			})
			f.FailEntries(func(stream string, _ types.PutRecordsRequestEntry) string {
				if stream != "out" || rng.Float64() >= 0.2 {
					return ""
				}
				failed++
				return []string{"ProvisionedThroughputExceededException", "InternalFailure"}[failed%2]
			})
		})
		if throttled != throttles || errored != errs || failed < n/10 {
			t.Fatalf("injected %d throttles, %d errors and %d failed entries: too few to count", throttled, errored, failed)
		}
		want := map[string]int64{
			"shardflow.source.records":              n,
			"shardflow.sink.records":                n,
			"shardflow.source.getrecords.throttles": throttled,
			"shardflow.source.getrecords.errors":    errored,
			"shardflow.sink.failed_entries":         failed,
			"shardflow.sink.retries":                failed, // each refused entry is sent again once per refusal
			"shardflow.sink.records.given_up":       0,
			"shardflow.stage.records.failed":        0,
		}
		if diff := cmp.Diff(want, pick(got, slices.Collect(maps.Keys(want))...)); diff != "" {
			t.Errorf("metrics mismatch (-want +got):\n%s\nall: %v", diff, got)
		}
	})
}
