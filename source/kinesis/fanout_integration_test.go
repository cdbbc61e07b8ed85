package kinesissource_test

import (
	"context"
	"testing"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/internal/awstest"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// Enhanced fan-out end to end on kinesis-local: the consumer is
// registered, records already in the stream and records written while it
// reads are pushed, each shard is checkpointed, and a restart resumes from
// the checkpoints, reading only what was written since.
func TestEmulatorEnhancedFanOutReadsCheckpointsAndResumesWithoutLoss(t *testing.T) {
	c := awstest.KinesisClient(t, awstest.KinesisNoRetries, awstest.KinesisLocalFanOut)
	stream := awstest.CreateStream(t, c, 2)
	put(t, c, stream, 0, 300, 20)
	store := memory.New()
	opts := func(o *kinesissource.Options) {
		emulatorOptions(store)(o)
		o.EnhancedFanOut = &kinesissource.EnhancedFanOut{ConsumerName: "app"}
	}

	first := &collector{}
	pl := shardflow.Source(newSource(t, c, stream, opts)).Sink(first)
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- pl.Run(ctx) }()
	waitReal(t, errc, func() bool { return first.len() >= 300 })
	put(t, c, stream, 300, 400, 20) // pushed to the open subscriptions
	waitReal(t, errc, func() bool { return first.len() >= 400 })
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run = %v", err)
	}
	checkExactlyOnceInOrder(t, 400, first.data())
	last := map[string]string{} // shard -> its last record's sequence number
	for _, r := range first.recs {
		last[r.ShardID] = r.SequenceNumber
	}
	for shard, cp := range store.Checkpoints(stream) {
		if cp.SequenceNumber != last[shard] {
			t.Errorf("shard %s checkpointed at %s; want its last record %s", shard, cp.SequenceNumber, last[shard])
		}
	}
	if len(store.Checkpoints(stream)) != 2 {
		t.Errorf("checkpoints of %d shards; want 2", len(store.Checkpoints(stream)))
	}

	// A restart resumes after the checkpoints: nothing lost, nothing again.
	put(t, c, stream, 400, 600, 20)
	second := &collector{}
	runReal(t, shardflow.Source(newSource(t, c, stream, opts)).Sink(second), func() bool { return second.len() >= 200 })
	checkExactlyOnceInOrder(t, 600, append(first.data(), second.data()...))
}

// waitReal waits, in real time, until cond holds, failing the test when
// Run ends first or after three minutes (a bound for a loaded machine, not
// a speed requirement).
func waitReal(t *testing.T, errc <-chan error, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for !cond() {
		select {
		case err := <-errc:
			t.Fatalf("Run ended early: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within three minutes")
		}
	}
}
