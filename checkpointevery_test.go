package shardflow_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
)

// savedStore is a memory store that notes, per shard, the record count of
// the last checkpoint saved (the sequence numbers of shardflowtest.Records
// count from 1), and can be made to fail its saves.
type savedStore struct {
	*memory.Store
	mu    sync.Mutex
	saved map[string]int
	saves int
	fail  atomic.Bool
}

func newSavedStore() *savedStore {
	return &savedStore{Store: memory.New(), saved: make(map[string]int)}
}

var errStoreDown = errors.New("store down")

func (s *savedStore) Save(ctx context.Context, stream, shardID string, cp shardflow.Checkpoint) error {
	if s.fail.Load() {
		return errStoreDown
	}
	if err := s.Store.Save(ctx, stream, shardID, cp); err != nil {
		return err
	}
	n, _ := strconv.Atoi(cp.SequenceNumber)
	s.mu.Lock()
	s.saved[shardID] = max(s.saved[shardID], n)
	s.saves++
	s.mu.Unlock()
	return nil
}

func (s *savedStore) last(shard string) (int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saved[shard], s.saves
}

// crashSink finishes each value at once and notes, at every value, how many
// a crash right then would deliver again: the values delivered so far past
// the last saved checkpoint.
type crashSink struct {
	store     *savedStore
	mu        sync.Mutex
	delivered map[string]int
	worst     int
}

func (s *crashSink) Write(_ context.Context, r shardflow.Record, ack shardflow.Ack) error {
	s.mu.Lock()
	s.delivered[r.ShardID]++
	saved, _ := s.store.last(r.ShardID)
	s.worst = max(s.worst, s.delivered[r.ShardID]-saved)
	s.mu.Unlock()
	ack.Done(nil)
	return nil
}

func (s *crashSink) Flush(context.Context) error { return nil }

func TestCheckpointEveryBoundsWhatACrashDeliversAgain(t *testing.T) {
	const n, every = 2000, 100
	for _, tc := range []struct {
		name  string
		every int
		bound int // the most a crash may deliver again
	}{
		{"with CheckpointEvery", every, every},
		// Without it, the interval (an hour here) is the only trigger: a
		// crash delivers everything again. This row shows the test can
		// tell the two apart.
		{"without it", 0, n},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newSavedStore()
			var recs []shardflow.Record
			for _, sh := range []string{"a", "b"} {
				data := make([]string, n)
				for i := range data {
					data[i] = strconv.Itoa(i)
				}
				recs = append(recs, shardflowtest.Records("s", sh, data...)...)
			}
			src := shardflowtest.NewSource[shardflow.Record]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).
				AddShard("a", recs[:n]...).AddShard("b", recs[n:]...)
			sink := &crashSink{store: store, delivered: make(map[string]int)}
			mustRun(t, shardflow.Source(src, func(o *shardflow.Options) {
				o.CheckpointInterval = time.Hour
				o.CheckpointEvery = tc.every
			}).Sink(sink))
			_, saves := store.last("a")
			t.Logf("CheckpointEvery %d: %d saves for %d records on 2 shards; a crash would deliver again at most %d records of a shard",
				tc.every, saves, 2*n, sink.worst)
			if tc.every > 0 && sink.worst > tc.bound {
				t.Errorf("a crash could deliver %d records of a shard again; want at most CheckpointEvery = %d", sink.worst, tc.bound)
			}
			if tc.every == 0 && sink.worst != n {
				t.Errorf("without CheckpointEvery a crash before the final save would deliver %d again; want all %d", sink.worst, n)
			}
			if tc.every > 0 && saves < 2*n/tc.every {
				t.Errorf("%d saves; want at least one per CheckpointEvery records (%d)", saves, 2*n/tc.every)
			}
		})
	}
}

func TestCheckpointEveryPausesReadingWhileCheckpointsCannotBeSaved(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const every = 10
		store := newSavedStore()
		store.fail.Store(true)
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).
			AddShard("a", ints(100)...)
		sink := shardflowtest.NewSink[int]()
		errc := runAsync(t.Context(), shardflow.Source(src, func(o *shardflow.Options) {
			o.CheckpointInterval = time.Hour
			o.CheckpointEvery = every
		}).Sink(sink))

		synctest.Wait()
		if got := len(sink.Items()); got != every {
			t.Fatalf("with the store down the sink got %d records; want CheckpointEvery = %d, then a pause", got, every)
		}
		time.Sleep(time.Minute) // virtual: no save lands, reading stays paused
		synctest.Wait()
		if got := len(sink.Items()); got != every {
			t.Fatalf("after a minute with the store down the sink got %d records; want still %d", got, every)
		}

		store.fail.Store(false)
		time.Sleep(time.Hour) // the next interval's save lands and reading goes on
		if err := <-errc; err != nil {
			t.Fatalf("Run: %v", err)
		}
		if got := len(sink.Items()); got != 100 {
			t.Errorf("sink got %d records; want all 100", got)
		}
		if saved, _ := store.last("a"); saved != 100 {
			t.Errorf("last checkpoint at record %d; want 100", saved)
		}
	})
}

// stuckStore never finishes a save of shard "a" until ctx ends.
type stuckStore struct{ *memory.Store }

func (s stuckStore) Save(ctx context.Context, stream, shardID string, cp shardflow.Checkpoint) error {
	if shardID == "a" {
		<-ctx.Done()
		return ctx.Err()
	}
	return s.Store.Save(ctx, stream, shardID, cp)
}

// A save that does not return holds up its own shard (CheckpointEvery
// pauses it), not the others: saves of different shards run concurrently.
func TestCheckpointEveryAStuckSaveHoldsUpOnlyItsShard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const every, n = 10, 200
		store := stuckStore{memory.New()}
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).
			AddShard("a", ints(n)...).AddShard("b", ints(n)...).AddShard("c", ints(n)...)
		sink := shardflowtest.NewSink[int]()
		ctx, cancel := context.WithCancel(t.Context())
		errc := runAsync(ctx, shardflow.Source(src, func(o *shardflow.Options) {
			o.CheckpointInterval = time.Hour
			o.CheckpointEvery = every
			o.DrainTimeout = time.Second
		}).Sink(sink))
		synctest.Wait()
		for _, sh := range []string{"b", "c"} {
			// Saved within CheckpointEvery of its end (the last records
			// wait for the interval's save).
			cp, _ := store.Checkpoint("s", sh)
			if at, _ := strconv.Atoi(cp.SequenceNumber); at < n-every {
				t.Errorf("shard %s checkpointed at %q while shard a's save hangs; want at least %d of %d", sh, cp.SequenceNumber, n-every, n)
			}
		}
		if got := len(sink.Items()); got != 2*n+every {
			t.Errorf("the sink got %d records; want %d: shards b and c whole, a paused at CheckpointEvery", got, 2*n+every)
		}
		cancel()
		<-errc
	})
}
