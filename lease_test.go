package shardflow_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
)

// losingStore refuses checkpoints of one shard as a store whose lease was
// taken by another instance would.
type losingStore struct {
	*memory.Store
	lose string
}

func (s losingStore) Save(ctx context.Context, stream, shard string, cp shardflow.Checkpoint) error {
	if shard == s.lose {
		return fmt.Errorf("conditional write refused: %w", shardflow.ErrLeaseLost)
	}
	return s.Store.Save(ctx, stream, shard, cp)
}

// slowSource emits n records per shard, one every 100ms, and stops reading a
// shard whose lane reports its lease lost.
type slowSource struct {
	shards []string
	n      int
	store  shardflow.CheckpointStore
	mu     sync.Mutex
	lost   []string
}

func (s *slowSource) Run(ctx context.Context, shards *shardflow.Shards[int]) error {
	var wg sync.WaitGroup
	errc := make(chan error, len(s.shards))
	for _, id := range s.shards {
		lane, err := shards.Open("s", id, s.store)
		if err != nil {
			return err
		}
		wg.Go(func() {
			for i := 1; i <= s.n; i++ {
				err := lane.Emit(ctx, shardflow.Position{SequenceNumber: fmt.Sprint(i)}, i)
				if errors.Is(err, shardflow.ErrLeaseLost) {
					s.mu.Lock()
					s.lost = append(s.lost, id)
					s.mu.Unlock()
					return
				}
				if err != nil {
					errc <- err
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	close(errc)
	return <-errc
}

func TestLosingALeaseStopsOnlyThatShard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := losingStore{Store: memory.New(), lose: "b"}
		src := &slowSource{shards: []string{"a", "b"}, n: 30, store: store}
		sink := shardflowtest.NewSink[int]()
		err := shardflow.Source[int](src, func(o *shardflow.Options) { o.CheckpointInterval = time.Second }).
			Sink(sink).Run(t.Context())
		if err != nil {
			t.Fatalf("Run = %v; want nil: a lost lease is not a pipeline failure", err)
		}
		if diff := cmp.Diff([]string{"b"}, src.lost); diff != "" {
			t.Errorf("shards whose Emit reported the lost lease (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(map[string]shardflow.Checkpoint{"a": seq(30)}, store.Checkpoints("s")); diff != "" {
			t.Errorf("checkpoints mismatch (-want +got):\n%s", diff)
		}
		// Shard a ran to the end; shard b stopped at the first checkpoint
		// interval, after about 10 of its records.
		if n := len(sink.Items()); n < 35 || n > 45 {
			t.Errorf("sink got %d values; want the 30 of shard a and about 10 of shard b", n)
		}
	})
}

// A handler that waits on its context when the shard's lease is lost sees
// the lane's context end and fails: that is the lost lease, not a failure of
// the pipeline, which goes on with its other shards.
func TestAHandlerCutShortByALostLeaseDoesNotFailThePipeline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := losingStore{Store: memory.New(), lose: "b"}
		src := &slowSource{shards: []string{"a", "b"}, n: 30, store: store}
		sink := shardflowtest.NewSink[int]()
		err := shardflow.Source[int](src, func(o *shardflow.Options) {
			o.CheckpointInterval = time.Second
			o.Retry = shardflow.NoRetry
		}).Map(func(ctx context.Context, v int) (int, error) {
			if v == 5 {
				// The 5th records (at 0.5s) wait 5s; shard b's is still
				// waiting when its lease is found lost at the checkpoint
				// after 1s, and sees its context end.
				select {
				case <-ctx.Done():
					return 0, context.Cause(ctx)
				case <-time.After(5 * time.Second):
				}
			}
			return v, nil
		}).Sink(sink).Run(t.Context())
		if err != nil {
			t.Fatalf("Run = %v; want nil: a lost lease is not a pipeline failure", err)
		}
		if diff := cmp.Diff(map[string]shardflow.Checkpoint{"a": seq(30)}, store.Checkpoints("s")); diff != "" {
			t.Errorf("checkpoints mismatch (-want +got):\n%s", diff)
		}
	})
}

// closingSource emits n records of one shard, waits until the first done
// are done, then closes the lane with a context that runs out while the
// rest are still in flight, as a source handing a shard over does.
type closingSource struct {
	store    shardflow.CheckpointStore
	n        int
	done     <-chan struct{}
	closeErr chan error
}

func (s *closingSource) Run(ctx context.Context, shards *shardflow.Shards[int]) error {
	lane, err := shards.Open("s", "shard-1", s.store)
	if err != nil {
		return err
	}
	for i := 1; i <= s.n; i++ {
		if err := lane.Emit(ctx, shardflow.Position{SequenceNumber: strconv.Itoa(i)}, i); err != nil {
			return err
		}
	}
	<-s.done
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s.closeErr <- lane.Close(cctx)
	return nil
}

// ctxStore is a memory store whose Save fails once its context is done, as
// a store that calls a service does.
type ctxStore struct{ *memory.Store }

func (s ctxStore) Save(ctx context.Context, stream, shard string, cp shardflow.Checkpoint) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.Store.Save(ctx, stream, shard, cp)
}

// TestACloseThatTimesOutStillSavesWhatFinished: the hand-over's wait ran
// out, but the records finished before it are checkpointed, so the next
// owner does not read them again.
func TestACloseThatTimesOutStillSavesWhatFinished(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memory.New()
		release := make(chan struct{})
		threeDone := make(chan struct{})
		handler := func(ctx context.Context, v int) (int, error) {
			if v == 3 {
				close(threeDone)
			}
			if v == 4 {
				select { // blocks past the hand-over's wait
				case <-release:
				case <-ctx.Done():
					return 0, ctx.Err()
				}
			}
			return v, nil
		}
		src := &closingSource{store: ctxStore{store}, n: 6, done: threeDone, closeErr: make(chan error, 1)}
		pl := shardflow.Source[int](src, fastRetry, func(o *shardflow.Options) {
			o.Logger = slog.New(slog.DiscardHandler)
			o.CheckpointInterval = time.Hour // only Close saves
		}).
			Map(handler).Sink(shardflowtest.NewSink[int]())
		errc := runAsync(t.Context(), pl)
		if err := <-src.closeErr; !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Close = %v; want its wait's deadline exceeded", err)
		}
		if cp, _ := store.Checkpoint("s", "shard-1"); cp != seq(3) {
			t.Errorf("checkpoint after the timed-out Close = %+v; want %+v (records 1-3 finished)", cp, seq(3))
		}
		close(release)
		<-errc
	})
}
