package kinesissource_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow/internal/metrictest"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/google/go-cmp/cmp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// meterProvider returns a provider whose metrics the reader collects.
func meterProvider() (*sdkmetric.ManualReader, *sdkmetric.MeterProvider) {
	r := sdkmetric.NewManualReader()
	return r, sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
}

// point is one int64 data point, by metric name and attributes.
type point struct {
	name  string
	attrs string // "k=v,k=v" in key order
}

// collect returns every sum and gauge data point r holds, as int64.
func collect(t *testing.T, r *sdkmetric.ManualReader) map[point]int64 {
	t.Helper()
	out := map[point]int64{}
	for p, v := range metrictest.Collect(t, r) {
		out[point{p.Name, p.Attrs}] = int64(v)
	}
	return out
}

func shardAttrs(stream, shard string) string { return "shard=" + shard + ",stream=" + stream }

// total sums a metric over all its data points.
func total(got map[point]int64, name string) int64 {
	var n int64
	for p, v := range got {
		if p.name == name {
			n += v
		}
	}
	return n
}

// runCollecting runs pl until cond holds, lets every goroutine of the
// bubble settle, collects r, then stops the pipeline. Call inside synctest.
func runCollecting(t *testing.T, pl *shardflow.Pipeline, r *sdkmetric.ManualReader, cond func() bool) map[point]int64 {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- pl.Run(ctx) }()
	deadline := time.Now().Add(time.Hour)
	for !cond() {
		select {
		case err := <-errc:
			cancel()
			t.Fatalf("Run returned %v before the condition held", err)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("condition not met within an hour of virtual time")
		}
		time.Sleep(100 * time.Millisecond)
	}
	synctest.Wait()
	got := collect(t, r)
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run = %v", err)
	}
	return got
}

func TestSourceMetricsCountTheRecordsBytesAndCallsOfEachShard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 2)
		put(t, f, "in", 0, 500, 20)
		r, mp := meterProvider()
		src := newSource(t, f, "in", func(o *kinesissource.Options) {
			o.InitialPosition = kinesissource.TrimHorizon()
			o.Limit = 60
			o.MeterProvider = mp
		})
		sink := &collector{}
		got := runCollecting(t, shardflow.Source(src).Sink(sink), r, func() bool { return sink.len() >= 500 })

		want := map[point]int64{{"shardflow.source.shards.held", "stream=in"}: 2}
		ids, _ := f.Shards("in")
		for _, id := range ids {
			recs, _ := f.Records("in", id)
			var bytes int64
			for _, rec := range recs {
				bytes += int64(len(rec.Data))
			}
			a := shardAttrs("in", id)
			want[point{"shardflow.source.records", a}] = int64(len(recs))
			want[point{"shardflow.source.bytes", a}] = bytes
			want[point{"shardflow.source.behind_latest", a}] = 0 // at the tip
			if got[point{"shardflow.source.getrecords.calls", a}] < int64(len(recs)/60+1) {
				t.Errorf("shard %s: %d GetRecords calls counted; want at least %d", id, got[point{"shardflow.source.getrecords.calls", a}], len(recs)/60+1)
			}
			want[point{"shardflow.source.getrecords.calls", a}] = got[point{"shardflow.source.getrecords.calls", a}]
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("source metrics mismatch (-want +got):\n%s", diff)
		}
		if n := total(got, "shardflow.source.getrecords.calls"); n != int64(f.Calls("GetRecords")) {
			t.Errorf("%d GetRecords calls counted; the fake served %d", n, f.Calls("GetRecords"))
		}
		if n := total(got, "shardflow.source.records"); n != 500 {
			t.Errorf("%d records counted; want 500", n)
		}
	})
}

func TestSourceMetricsCountEveryThrottleAndErrorInjected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 2)
		put(t, f, "in", 0, 400, 20)
		var n, throttles, failures atomic.Int64
		f.InjectError(func(op string, _ any) error {
			if op != "GetRecords" {
				return nil
			}
			switch i := n.Add(1); {
			case i%3 == 0:
				throttles.Add(1)
				return &types.ProvisionedThroughputExceededException{Message: aws.String("slow down")}
			case i%5 == 0:
				throttles.Add(1)
				return &types.LimitExceededException{Message: aws.String("limit")}
			case i%7 == 0:
				failures.Add(1)
				return &types.InternalFailureException{Message: aws.String("internal")}
			}
			return nil
		})
		r, mp := meterProvider()
		src := newSource(t, f, "in", func(o *kinesissource.Options) {
			o.InitialPosition = kinesissource.TrimHorizon()
			o.Limit = 20
			o.MeterProvider = mp
		})
		sink := &collector{}
		got := runCollecting(t, shardflow.Source(src).Sink(sink), r, func() bool { return sink.len() >= 400 })
		if throttles.Load() == 0 || failures.Load() == 0 {
			t.Fatalf("injected %d throttles and %d failures; want some of each", throttles.Load(), failures.Load())
		}
		if n := total(got, "shardflow.source.getrecords.throttles"); n != throttles.Load() {
			t.Errorf("throttles counted %d; injected %d", n, throttles.Load())
		}
		var errs int64
		for p, v := range got {
			if p.name != "shardflow.source.getrecords.errors" {
				continue
			}
			if !strings.HasPrefix(p.attrs, "error_code=InternalFailureException,shard=") {
				t.Errorf("error counted with attributes %s; want error_code=InternalFailureException and the shard", p.attrs)
			}
			errs += v
		}
		if errs != failures.Load() {
			t.Errorf("errors counted %d; injected %d", errs, failures.Load())
		}
		if n := total(got, "shardflow.source.getrecords.calls"); n != int64(f.Calls("GetRecords")) {
			t.Errorf("%d GetRecords calls counted; the fake served %d", n, f.Calls("GetRecords"))
		}
		if n := total(got, "shardflow.source.records"); n != 400 {
			t.Errorf("%d records counted; want 400", n)
		}
	})
}

// names returns the names of the metrics in got that start with prefix.
func names(got map[point]int64, prefix string) []string {
	var out []string
	for p := range got {
		if strings.HasPrefix(p.name, prefix) {
			out = append(out, p.name)
		}
	}
	return out
}

func TestThePipelinesMeterProviderReachesTheSourceAndItsStore(t *testing.T) {
	type collected struct{ pipeline, source, store map[point]int64 }
	// run reads 50 records through a source whose store is a leasing
	// memory Instance, with the pipeline's provider and, if asked, the
	// source's and the store's own, and returns what each collected.
	run := func(t *testing.T, ownSource, ownStore bool) collected {
		f := newStream(t, "in", 1)
		put(t, f, "in", 0, 50, 5)
		rp, pipelineMP := meterProvider()
		rs, sourceMP := meterProvider()
		rt, storeMP := meterProvider()
		in, err := memory.New().Instance("a", func(o *memory.InstanceOptions) {
			if ownStore {
				o.MeterProvider = storeMP
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		src := newSource(t, f, "in", func(o *kinesissource.Options) {
			o.Store = in
			o.InitialPosition = kinesissource.TrimHorizon()
			if ownSource {
				o.MeterProvider = sourceMP
			}
		})
		sink := &collector{}
		pl := shardflow.Source(src, func(o *shardflow.Options) { o.MeterProvider = pipelineMP }).Sink(sink)
		got := runCollecting(t, pl, rp, func() bool { return sink.len() >= 50 })
		return collected{pipeline: got, source: collect(t, rs), store: collect(t, rt)}
	}
	sourceRecords := point{"shardflow.source.records", shardAttrs("in", "shardId-000000000000")}
	leasesTaken := point{"shardflow.lease.taken", "stream=in"}

	t.Run("a source and a store with no provider of their own record through the pipeline's", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c := run(t, false, false)
			if c.pipeline[sourceRecords] != 50 || c.pipeline[leasesTaken] != 1 {
				t.Errorf("the pipeline's provider got %d source records and %d leases taken; want 50 and 1",
					c.pipeline[sourceRecords], c.pipeline[leasesTaken])
			}
			if len(c.source)+len(c.store) != 0 {
				t.Errorf("providers not given to anyone got metrics: %v, %v", c.source, c.store)
			}
		})
	})
	t.Run("a source's own provider wins, and it still hands the pipeline's to its store", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c := run(t, true, false)
			if c.source[sourceRecords] != 50 {
				t.Errorf("the source's own provider got %d source records; want 50", c.source[sourceRecords])
			}
			if n := names(c.pipeline, "shardflow.source."); len(n) != 0 {
				t.Errorf("the pipeline's provider got source metrics %v though the source has its own", n)
			}
			if c.pipeline[leasesTaken] != 1 {
				t.Errorf("the pipeline's provider got %d leases taken; want 1, from the store given no provider", c.pipeline[leasesTaken])
			}
		})
	})
	t.Run("a store's own provider wins", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c := run(t, true, true)
			if c.store[leasesTaken] != 1 {
				t.Errorf("the store's own provider got %d leases taken; want 1", c.store[leasesTaken])
			}
			if n := names(c.store, "shardflow.source."); len(n) != 0 {
				t.Errorf("the store's provider got source metrics %v", n)
			}
			if n := append(names(c.pipeline, "shardflow.lease."), names(c.source, "shardflow.lease.")...); len(n) != 0 {
				t.Errorf("lease metrics %v went to other providers than the store's own", n)
			}
		})
	})
}
