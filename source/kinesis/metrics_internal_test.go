package kinesissource

import (
	"context"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// Recording a GetRecords call in the metrics allocates nothing: the
// attribute sets are made once per shard.
func TestRecordingAGetRecordsCallDoesNotAllocate(t *testing.T) {
	src, err := New(nopAPI{}, "in", func(o *Options) {
		o.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	})
	if err != nil {
		t.Fatal(err)
	}
	c := &coordinator{src: src, st: src.streams[0], readers: map[string]*reader{}}
	met, reg := src.newMetrics([]*coordinator{c})
	defer func() { _ = reg.Unregister() }()
	c.met = met
	r := &reader{src: src, c: c, st: c.st, shardID: "shardId-000000000000"}
	r.met.init(c.met, &c.met.polls, "in", r.shardID)
	ev := GetRecordsEvent{Stream: "in", ShardID: r.shardID, Records: 100, UserRecords: 100, Bytes: 4096, MillisBehindLatest: 7}
	ctx := context.Background()
	r.report(ctx, ev) // the first measurement of each series may allocate it
	if n := testing.AllocsPerRun(100, func() { r.report(ctx, ev) }); n != 0 {
		t.Errorf("recording a call allocates %v times; want 0", n)
	}
}

// nopAPI is an API that is never called.
type nopAPI struct{ API }
