package shardflow_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
)

func TestBatchEmitsOnCountBytesLingerAndDrain(t *testing.T) {
	type emitted struct {
		Vals []string
		At   time.Duration
	}
	tests := []struct {
		name   string
		opts   shardflow.BatchOptions[string]
		values []string
		gap    time.Duration // between values
		want   []emitted
	}{
		{
			name:   "a full batch ships at once",
			opts:   shardflow.BatchOptions[string]{MaxCount: 2, Linger: time.Hour},
			values: []string{"a", "b", "c", "d"},
			want:   []emitted{{[]string{"a", "b"}, 0}, {[]string{"c", "d"}, 0}},
		},
		{
			name:   "a batch ships Linger after its first value",
			opts:   shardflow.BatchOptions[string]{MaxCount: 10, Linger: 250 * time.Millisecond},
			values: []string{"a", "b", "c", "d"},
			gap:    100 * time.Millisecond,
			want:   []emitted{{[]string{"a", "b", "c"}, 250 * time.Millisecond}, {[]string{"d"}, 550 * time.Millisecond}},
		},
		{
			name: "a value that would pass MaxBytes starts a new batch",
			opts: shardflow.BatchOptions[string]{MaxCount: 10, MaxBytes: 5, Linger: time.Hour,
				Size: func(s string) int { return len(s) }},
			values: []string{"aa", "bb", "cc", "dddddd", "e"},
			want: []emitted{{[]string{"aa", "bb"}, 0}, {[]string{"cc"}, 0}, {[]string{"dddddd"}, 0},
				{[]string{"e"}, time.Second}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				start := time.Now()
				var got []emitted
				src := &pacedSource[string]{values: tc.values, gap: tc.gap, hold: time.Second}
				mustRun(t, shardflow.Batch(shardflow.Source[string](src), tc.opts).
					Tap(func(_ context.Context, b []string) error {
						got = append(got, emitted{b, time.Since(start)})
						return nil
					}).Sink(shardflowtest.NewSink[[]string]()))
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("batches mismatch (-want +got):\n%s", diff)
				}
			})
		})
	}
}

// pacedSource emits values on one shard "a" with a gap between them, then
// waits hold before returning (and so before the pipeline drains).
type pacedSource[T any] struct {
	values []T
	gap    time.Duration
	hold   time.Duration
}

func (s *pacedSource[T]) Run(ctx context.Context, shards *shardflow.Shards[T]) error {
	lane, err := shards.Open("s", "a", nil)
	if err != nil {
		return err
	}
	for i, v := range s.values {
		if i > 0 {
			time.Sleep(s.gap)
		}
		if err := lane.Emit(ctx, shardflow.Position{SequenceNumber: fmt.Sprint(i + 1)}, v); err != nil {
			return err
		}
	}
	time.Sleep(s.hold)
	return nil
}

func TestBatchRecordsAreDoneTogether(t *testing.T) {
	t.Run("a failed batch holds the checkpoint before its first record", func(t *testing.T) {
		store := memory.New()
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).AddShard("a", ints(7)...)
		err := shardflow.Batch(shardflow.Source(src, fastRetry), shardflow.BatchOptions[int]{MaxCount: 3}).
			Map(func(_ context.Context, b []int) (int, error) {
				if b[0] == 4 {
					return 0, errors.New("bad batch")
				}
				return len(b), nil
			}).Sink(shardflowtest.NewSink[int]()).Run(t.Context())
		var se *shardflow.StageError
		if !errors.As(err, &se) || se.Position.SequenceNumber != "4" {
			t.Fatalf("Run = %v; want a StageError at the batch's first record, 4", err)
		}
		if cp, _ := store.Checkpoint("s", "a"); cp != seq(3) {
			t.Errorf("checkpoint = %+v; want %+v", cp, seq(3))
		}
	})
	t.Run("a batch fanned out again completes when all its children do", func(t *testing.T) {
		store := memory.New()
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).AddShard("a", ints(5)...)
		sink := shardflowtest.NewSink[int]()
		mustRun(t, shardflow.Batch(shardflow.Source(src), shardflow.BatchOptions[int]{MaxCount: 2}).
			FlatMap(func(_ context.Context, b []int) ([]int, error) { return b, nil }).Sink(sink))
		if diff := cmp.Diff(ints(5), sink.Items()); diff != "" {
			t.Errorf("sink mismatch (-want +got):\n%s", diff)
		}
		if cp, _ := store.Checkpoint("s", "a"); cp != seq(5) {
			t.Errorf("checkpoint = %+v; want %+v", cp, seq(5))
		}
	})
}
