package shardflow_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
)

func TestEachYieldsEveryShardInOrderAndCheckpointsAtTheEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memory.New()
		src := shardflowtest.NewSource[string]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).
			AddShard("a", "a1", "a2", "a3", "a4").
			AddShard("b", "b1", "b2", "b3")
		got := map[string][]string{}
		for v, err := range shardflow.Each(t.Context(), src) {
			if err != nil {
				t.Fatalf("Each yielded error %v", err)
			}
			got[v[:1]] = append(got[v[:1]], v)
		}
		want := map[string][]string{"a": {"a1", "a2", "a3", "a4"}, "b": {"b1", "b2", "b3"}}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("records per shard mismatch (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(map[string]shardflow.Checkpoint{"a": seq(4), "b": seq(3)}, store.Checkpoints("s")); diff != "" {
			t.Errorf("checkpoints mismatch (-want +got):\n%s", diff)
		}
	})
}

func TestEachCheckpointCoversTheRecordsTheLoopMovedPast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memory.New()
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) {
			o.Store = store
			o.Follow = true
		}).AddShard("a", ints(10)...)
		var seen []int
		for n, err := range shardflow.Each(t.Context(), src, func(o *shardflow.Options) { o.CheckpointInterval = time.Second }) {
			if err != nil {
				t.Fatalf("Each yielded error %v", err)
			}
			seen = append(seen, n)
			if n == 6 {
				// Two checkpoint intervals pass while the loop is in record 6.
				time.Sleep(2500 * time.Millisecond)
				synctest.Wait()
				if cp, _ := store.Checkpoint("s", "a"); cp != seq(5) {
					t.Errorf("checkpoint while the loop is in record 6 = %+v; want %+v: 1-5 are finished, 6 is not", cp, seq(5))
				}
			}
			if n == 8 {
				break
			}
		}
		if diff := cmp.Diff(ints(8), seen); diff != "" {
			t.Errorf("records mismatch (-want +got):\n%s", diff)
		}
		// Breaking out in record 8 saves the final checkpoint at 7.
		if cp, _ := store.Checkpoint("s", "a"); cp != seq(7) {
			t.Errorf("final checkpoint after breaking out in record 8 = %+v; want %+v", cp, seq(7))
		}
	})
}

func TestEachResumesAfterTheLastFinishedRecord(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memory.New()
		newSrc := func() *shardflowtest.Source[int] {
			return shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) {
				o.Store = store
				o.Follow = true
			}).AddShard("a", ints(6)...).AddShard("b", 10, 20)
		}
		loop := func(stopAt int) []int {
			var seen []int
			for n, err := range shardflow.Each(t.Context(), newSrc()) {
				if err != nil {
					t.Fatalf("Each yielded error %v", err)
				}
				seen = append(seen, n)
				if n == stopAt {
					break
				}
			}
			return seen
		}
		first := loop(4)
		if first[len(first)-1] != 4 {
			t.Fatalf("first loop = %v; want it to end in 4", first)
		}
		// 4 was not finished: it comes again; b's records were finished
		// only if the loop moved past them.
		second := loop(6)
		var a []int
		for _, n := range second {
			if n < 10 {
				a = append(a, n)
			}
		}
		if diff := cmp.Diff([]int{4, 5, 6}, a); diff != "" {
			t.Errorf("shard a after the restart (-want +got):\n%s", diff)
		}
		for _, n := range first {
			if n >= 10 && n != first[len(first)-1] {
				for _, m := range second {
					if m == n {
						t.Errorf("record %d of shard b, finished in the first loop, came again", n)
					}
				}
			}
		}
	})
}

func TestEachYieldsTheSourceErrorLast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		boom := errors.New("boom")
		var got []string
		for v, err := range shardflow.Each(t.Context(), shardflow.ShardSource[string](failingSource{err: boom})) {
			if err != nil {
				got = append(got, "err: "+err.Error())
				continue
			}
			got = append(got, v)
		}
		if diff := cmp.Diff([]string{"x", "y", "err: source: boom"}, got); diff != "" {
			t.Errorf("yields mismatch (-want +got):\n%s", diff)
		}
	})
}

func TestEachEndsWhenTheContextIsCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memory.New()
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) {
			o.Store = store
			o.Follow = true
		}).AddShard("a", ints(5)...)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var seen []int
		for n, err := range shardflow.Each(ctx, src) {
			if err != nil {
				t.Fatalf("Each yielded error %v", err)
			}
			seen = append(seen, n)
			if n == 3 {
				cancel() // the loop asks for the next record: 3 is finished
			}
		}
		if diff := cmp.Diff([]int{1, 2, 3}, seen); diff != "" {
			t.Errorf("records mismatch (-want +got):\n%s", diff)
		}
		if cp, _ := store.Checkpoint("s", "a"); cp != seq(3) {
			t.Errorf("checkpoint = %+v; want %+v", cp, seq(3))
		}
	})
}

// failingSource emits "x" and "y" on one shard, then fails.
type failingSource struct{ err error }

func (s failingSource) Run(ctx context.Context, shards *shardflow.Shards[string]) error {
	lane, err := shards.Open("s", "a", nil)
	if err != nil {
		return err
	}
	for i, v := range []string{"x", "y"} {
		if err := lane.Emit(ctx, shardflow.Position{SequenceNumber: strconv.Itoa(i + 1)}, v); err != nil {
			return err
		}
	}
	if err := lane.Close(ctx); err != nil {
		return err
	}
	return s.err
}
