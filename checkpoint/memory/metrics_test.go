package memory_test

import (
	"testing"

	"github.com/shardflow/shardflow/internal/metrictest"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/shardflow/shardflow/checkpoint/memory"
)

// leasesTaken collects r and returns shardflow.lease.taken of stream "st".
func leasesTaken(t *testing.T, r *sdkmetric.ManualReader) int64 {
	t.Helper()
	return int64(metrictest.Total(metrictest.Collect(t, r), "shardflow.lease.taken", "stream=st"))
}

func TestANilInstanceMeterProviderRecordsThroughThePipelinesProvider(t *testing.T) {
	newReader := func() (*sdkmetric.ManualReader, *sdkmetric.MeterProvider) {
		r := sdkmetric.NewManualReader()
		return r, sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	}
	syncOne := func(t *testing.T, in *memory.Instance) {
		t.Helper()
		if held, err := in.SyncLeases(t.Context(), "st", []string{"a"}); err != nil || len(held) != 1 {
			t.Fatalf("SyncLeases = %v, %v", held, err)
		}
	}
	t.Run("in a pipeline, the pipeline's provider", func(t *testing.T) {
		in, err := memory.New().Instance("a")
		if err != nil {
			t.Fatal(err)
		}
		r, mp := newReader()
		in.UsePipelineMeterProvider(mp)
		syncOne(t, in)
		if n := leasesTaken(t, r); n != 1 {
			t.Errorf("the pipeline's provider counted %d leases taken; want 1", n)
		}
	})
	t.Run("a provider of its own is kept", func(t *testing.T) {
		ownR, own := newReader()
		pipelineR, pipeline := newReader()
		in, err := memory.New().Instance("a", func(o *memory.InstanceOptions) { o.MeterProvider = own })
		if err != nil {
			t.Fatal(err)
		}
		in.UsePipelineMeterProvider(pipeline)
		syncOne(t, in)
		if n, p := leasesTaken(t, ownR), leasesTaken(t, pipelineR); n != 1 || p != 0 {
			t.Errorf("own provider counted %d leases taken, the pipeline's %d; want 1 and 0", n, p)
		}
	})
}
