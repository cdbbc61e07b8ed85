package dynamostore_test

import (
	"testing"

	"github.com/shardflow/shardflow/internal/metrictest"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
)

// leasesTaken collects r and returns shardflow.lease.taken of stream "st".
func leasesTaken(t *testing.T, r *sdkmetric.ManualReader) int64 {
	t.Helper()
	return int64(metrictest.Total(metrictest.Collect(t, r), "shardflow.lease.taken", "stream=st"))
}

func TestANilMeterProviderRecordsThroughThePipelinesProvider(t *testing.T) {
	newReader := func() (*sdkmetric.ManualReader, *sdkmetric.MeterProvider) {
		r := sdkmetric.NewManualReader()
		return r, sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	}
	syncOne := func(t *testing.T, s *dynamostore.Store) {
		t.Helper()
		if held, err := s.SyncLeases(t.Context(), "st", []string{"a"}); err != nil || len(held) != 1 {
			t.Fatalf("SyncLeases = %v, %v", held, err)
		}
	}
	t.Run("in a pipeline, the pipeline's provider", func(t *testing.T) {
		s := newStore(t, &attemptsAPI{}, "t")
		r, mp := newReader()
		s.UsePipelineMeterProvider(mp)
		syncOne(t, s)
		if n := leasesTaken(t, r); n != 1 {
			t.Errorf("the pipeline's provider counted %d leases taken; want 1", n)
		}
	})
	t.Run("a provider of its own is kept", func(t *testing.T) {
		ownR, own := newReader()
		pipelineR, pipeline := newReader()
		s := newStore(t, &attemptsAPI{}, "t", func(o *dynamostore.Options) { o.MeterProvider = own })
		s.UsePipelineMeterProvider(pipeline)
		syncOne(t, s)
		if n, p := leasesTaken(t, ownR), leasesTaken(t, pipelineR); n != 1 || p != 0 {
			t.Errorf("own provider counted %d leases taken, the pipeline's %d; want 1 and 0", n, p)
		}
	})
}
