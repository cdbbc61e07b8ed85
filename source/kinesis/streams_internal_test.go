package kinesissource

import (
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"

	"github.com/shardflow/shardflow"
)

// countingLoads is a shardflow.LoadRecorder that adds up what it is told.
type countingLoads struct{ reads, records, bytes atomic.Int64 }

func (c *countingLoads) RecordLoad(_, _ string, records, bytes int) {
	c.reads.Add(1)
	c.records.Add(int64(records))
	c.bytes.Add(int64(bytes))
}

// nopStore is a checkpoint store that is never called.
type nopStore struct{ shardflow.CheckpointStore }

// Reporting the load of a read, which happens on every read, allocates
// nothing.
func TestRecordingTheLoadOfAReadDoesNotAllocate(t *testing.T) {
	loads := &countingLoads{}
	src, err := New(nopAPI{}, "in", func(o *Options) {
		o.Store = struct {
			nopStore
			*countingLoads
		}{countingLoads: loads}
	})
	if err != nil {
		t.Fatal(err)
	}
	if src.loads == nil {
		t.Fatal("a store that is a LoadRecorder is not used as one")
	}
	c := &coordinator{src: src, st: src.streams[0], loads: src.loads}
	r := &reader{src: src, c: c, st: c.st, shardID: "shardId-000000000000"}
	recs := make([]types.Record, 100)
	for i := range recs {
		recs[i].Data = make([]byte, 40)
	}
	var bytes int
	if n := testing.AllocsPerRun(100, func() { bytes = r.recordLoad(recs) }); n != 0 {
		t.Errorf("recording the load of a read allocates %v times; want 0", n)
	}
	if bytes != 4000 {
		t.Errorf("recordLoad = %d bytes; want 4000", bytes)
	}
	// AllocsPerRun runs the function once more than asked, to warm up.
	if r, n, b := loads.reads.Load(), loads.records.Load(), loads.bytes.Load(); r != 101 || n != 101*100 || b != 101*4000 {
		t.Errorf("recorded %d reads of %d records and %d bytes; want 101 of 10100 and 404000", r, n, b)
	}
}

// BenchmarkRecordLoad is the cost per read of reporting its load: the sum
// of 100 records' bytes and one call of the store.
func BenchmarkRecordLoad(b *testing.B) {
	loads := &countingLoads{}
	src, err := New(nopAPI{}, "in", func(o *Options) {
		o.Store = struct {
			nopStore
			*countingLoads
		}{countingLoads: loads}
	})
	if err != nil {
		b.Fatal(err)
	}
	c := &coordinator{src: src, st: src.streams[0], loads: src.loads}
	r := &reader{src: src, c: c, st: c.st, shardID: "shardId-000000000000"}
	recs := make([]types.Record, 100)
	for i := range recs {
		recs[i].Data = make([]byte, 40)
	}
	b.ReportAllocs()
	for b.Loop() {
		r.recordLoad(recs)
	}
}
