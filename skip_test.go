package shardflow_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
)

// steppedSource runs steps on the lane of one shard "a" of stream "s", then
// waits for the end of ctx.
type steppedSource struct {
	store shardflow.CheckpointStore
	steps func(ctx context.Context, l *shardflow.Lane[int]) error
}

func (s steppedSource) Run(ctx context.Context, shards *shardflow.Shards[int]) error {
	l, err := shards.Open("s", "a", s.store)
	if err != nil {
		return err
	}
	if err := s.steps(ctx, l); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

func TestSkippedRecordsMoveTheCheckpointOnlyOnceEverythingBeforeIsDone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memory.New()
		src := steppedSource{store: store, steps: func(ctx context.Context, l *shardflow.Lane[int]) error {
			if err := l.Emit(ctx, seq(1).Position, 1); err != nil {
				return err
			}
			if err := l.Skip(ctx, seq(2).Position); err != nil {
				return err
			}
			return l.Skip(ctx, seq(3).Position)
		}}
		sink := &holdSink[int]{}
		ctx, cancel := context.WithCancel(t.Context())
		errc := runAsync(ctx, shardflow.Source(src, func(o *shardflow.Options) { o.CheckpointInterval = time.Second }).Sink(sink))
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if diff := cmp.Diff([]int{1}, sink.vals); diff != "" {
			t.Fatalf("sink got (-want +got):\n%s", diff)
		}
		if cp, ok := store.Checkpoint("s", "a"); ok {
			t.Fatalf("checkpoint %+v saved while record 1, before the skipped ones, is in flight", cp)
		}
		sink.ack(nil, 0)
		time.Sleep(5 * time.Second)
		if cp, _ := store.Checkpoint("s", "a"); cp != seq(3) {
			t.Errorf("checkpoint = %+v; want %+v, past the skipped records", cp, seq(3))
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	})
}

func TestAShardOfSkippedRecordsOnlyIsCheckpointed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memory.New()
		src := steppedSource{store: store, steps: func(ctx context.Context, l *shardflow.Lane[int]) error {
			for i := 1; i <= 5; i++ {
				if err := l.Skip(ctx, seq(i).Position); err != nil {
					return err
				}
			}
			return nil
		}}
		sink := &holdSink[int]{}
		ctx, cancel := context.WithCancel(t.Context())
		errc := runAsync(ctx, shardflow.Source(src, func(o *shardflow.Options) { o.CheckpointInterval = time.Second }).Sink(sink))
		time.Sleep(5 * time.Second)
		if cp, _ := store.Checkpoint("s", "a"); cp != seq(5) {
			t.Errorf("checkpoint = %+v; want %+v", cp, seq(5))
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if sink.len() != 0 {
			t.Errorf("the sink got %v; want nothing", sink.vals)
		}
	})
}
