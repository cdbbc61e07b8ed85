package shardflow_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
)

type order struct {
	ID     string
	Amount int
}

func TestTypedChainChangesTypesAndCheckpointsEveryShard(t *testing.T) {
	store := memory.New()
	src := shardflowtest.NewSource[shardflow.Record]("orders", func(o *shardflowtest.SourceOptions) { o.Store = store }).
		AddShard("shard-0", shardflowtest.Records("orders", "shard-0", "a:5", "b:500", "c:700")...).
		AddShard("shard-1", shardflowtest.Records("orders", "shard-1", "d:1000", "e:1")...)
	sink := shardflowtest.NewSink[string]()

	decode := func(_ context.Context, r shardflow.Record) (order, error) {
		id, amount, _ := strings.Cut(string(r.Data), ":")
		var n int
		_, err := fmt.Sscan(amount, &n)
		return order{ID: id, Amount: n}, err
	}
	isLarge := func(_ context.Context, o order) (bool, error) { return o.Amount >= 100, nil }
	label := func(_ context.Context, o order) (string, error) { return fmt.Sprintf("%s=%d", o.ID, o.Amount), nil }

	mustRun(t, shardflow.Source(src).Map(decode).Filter(isLarge).Map(label).Sink(sink))

	got := sink.Items()
	slices.Sort(got)
	if diff := cmp.Diff([]string{"b=500", "c=700", "d=1000"}, got); diff != "" {
		t.Errorf("sink mismatch (-want +got):\n%s", diff)
	}
	// Filtered records ("a", "e") are acknowledged too: both shards are
	// checkpointed at their last record.
	if diff := cmp.Diff(map[string]shardflow.Checkpoint{"shard-0": seq(3), "shard-1": seq(2)}, store.Checkpoints("orders")); diff != "" {
		t.Errorf("checkpoints mismatch (-want +got):\n%s", diff)
	}
}

func TestCheckpointWaitsForOutOfOrderAcks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memory.New()
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) {
			o.Store = store
			o.Follow = true
		}).AddShard("a", ints(5)...)
		sink := &holdSink[int]{}
		ctx, cancel := context.WithCancel(t.Context())
		errc := runAsync(ctx, shardflow.Source(src, func(o *shardflow.Options) {
			o.CheckpointInterval = time.Second
		}).Sink(sink))

		synctest.Wait()
		if sink.len() != 5 {
			t.Fatalf("sink holds %d values; want 5", sink.len())
		}
		steps := []struct {
			ack  []int
			want *shardflow.Checkpoint
		}{
			{ack: []int{2, 4, 3}, want: nil}, // records 3, 5, 4 done; 1 and 2 still in flight
			{ack: []int{0}, want: ptr(seq(1))},
			{ack: []int{1}, want: ptr(seq(5))},
		}
		for i, step := range steps {
			sink.ack(nil, step.ack...)
			time.Sleep(1500 * time.Millisecond) // past the next checkpoint interval
			synctest.Wait()
			got, ok := store.Checkpoint("s", "a")
			if step.want == nil {
				if ok {
					t.Fatalf("step %d: checkpoint %+v saved past record 1, which is in flight", i, got)
				}
				continue
			}
			if diff := cmp.Diff(*step.want, got); !ok || diff != "" {
				t.Fatalf("step %d: checkpoint mismatch (-want +got):\n%s", i, diff)
			}
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("Run after cancel = %v; want nil", err)
		}
	})
}

func ptr[T any](v T) *T { return &v }

func TestFlatMapCompletesParentOnlyWithAllChildren(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memory.New()
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) {
			o.Store = store
			o.Follow = true
		}).AddShard("a", 3, 0, 2) // fan out into 3, 0 and 2 children
		sink := &holdSink[string]{}
		ctx, cancel := context.WithCancel(t.Context())
		errc := runAsync(ctx, shardflow.Source(src, func(o *shardflow.Options) { o.CheckpointInterval = time.Second }).
			FlatMap(func(_ context.Context, n int) ([]string, error) {
				out := make([]string, n)
				for i := range out {
					out[i] = fmt.Sprintf("%d.%d", n, i)
				}
				return out, nil
			}).Sink(sink))

		synctest.Wait()
		if diff := cmp.Diff([]string{"3.0", "3.1", "3.2", "2.0", "2.1"}, sink.vals); diff != "" {
			t.Fatalf("children mismatch (-want +got):\n%s", diff)
		}
		sink.ack(nil, 0, 2, 3, 4) // all but the second child of record 1
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if cp, ok := store.Checkpoint("s", "a"); ok {
			t.Fatalf("checkpoint %+v saved while a child of record 1 is in flight", cp)
		}
		sink.ack(nil, 1)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if cp, _ := store.Checkpoint("s", "a"); cp != seq(3) {
			t.Fatalf("checkpoint = %+v; want %+v (record 2 had no children, so it is done too)", cp, seq(3))
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("Run = %v", err)
		}
	})
}

func TestFailurePolicies(t *testing.T) {
	boom := errors.New("boom")
	failOn3 := func(_ context.Context, n int) (int, error) {
		if n == 3 {
			return 0, shardflow.Permanent(boom)
		}
		return n * 10, nil
	}

	t.Run("by default a failed record stops the pipeline and nothing at or after it is checkpointed", func(t *testing.T) {
		store := memory.New()
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).
			AddShard("a", ints(6)...)
		sink := shardflowtest.NewSink[int]()
		err := shardflow.Source(src).Map(failOn3, shardflow.WithName("decode")).Sink(sink).Run(t.Context())

		var se *shardflow.StageError
		if !errors.As(err, &se) {
			t.Fatalf("Run = %v; want a *StageError", err)
		}
		want := &shardflow.StageError{Stage: "decode", Stream: "s", ShardID: "a",
			Position: shardflow.Position{SequenceNumber: "3"}}
		if diff := cmp.Diff(want, se, cmpopts.IgnoreFields(shardflow.StageError{}, "Err")); diff != "" {
			t.Errorf("StageError mismatch (-want +got):\n%s", diff)
		}
		if !errors.Is(err, boom) {
			t.Errorf("Run error %v does not wrap the handler's error", err)
		}
		if cp, _ := store.Checkpoint("s", "a"); cp != seq(2) {
			t.Errorf("checkpoint = %+v; want %+v, the last record before the failure", cp, seq(2))
		}
		if diff := cmp.Diff([]int{10, 20}, sink.Items()); diff != "" {
			t.Errorf("sink mismatch (-want +got):\n%s", diff)
		}
	})

	t.Run("with a dead-letter handler failed records are handed over and the pipeline goes on", func(t *testing.T) {
		store := memory.New()
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).
			AddShard("a", ints(5)...)
		sink := shardflowtest.NewSink[int]()
		var mu sync.Mutex
		var dead []string
		dl := func(_ context.Context, n int, err error) error {
			mu.Lock()
			defer mu.Unlock()
			dead = append(dead, fmt.Sprintf("%d: %v", n, err))
			return nil
		}
		mustRun(t, shardflow.Source(src).DeadLetter(dl).Map(failOn3).Sink(sink))
		if diff := cmp.Diff([]string{"3: boom"}, dead); diff != "" {
			t.Errorf("dead letters mismatch (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]int{10, 20, 40, 50}, sink.Items()); diff != "" {
			t.Errorf("sink mismatch (-want +got):\n%s", diff)
		}
		if cp, _ := store.Checkpoint("s", "a"); cp != seq(5) {
			t.Errorf("checkpoint = %+v; want %+v", cp, seq(5))
		}
	})

	t.Run("a failing dead-letter handler stops the pipeline with both errors", func(t *testing.T) {
		dlErr := errors.New("dead-letter queue down")
		src := shardflowtest.NewSource[int]("s").AddShard("a", ints(5)...)
		err := shardflow.Source(src).DeadLetter(func(context.Context, int, error) error {
			return dlErr
		}).Map(failOn3).Sink(shardflowtest.NewSink[int]()).Run(t.Context())
		if !errors.Is(err, boom) || !errors.Is(err, dlErr) {
			t.Fatalf("Run = %v; want both the handler's and the dead-letter handler's errors", err)
		}
	})

	t.Run("a sink that fails a record after accepting it stops the pipeline", func(t *testing.T) {
		store := memory.New()
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).AddShard("a", ints(4)...)
		sink := shardflowtest.NewSink(func(o *shardflowtest.SinkOptions[int]) {
			o.AckErr = func(n int) error {
				if n == 2 {
					return boom
				}
				return nil
			}
		})
		err := shardflow.Source(src).Sink(sink).Run(t.Context())
		var se *shardflow.StageError
		if !errors.As(err, &se) || se.Stage != "sink" || se.Position.SequenceNumber != "2" {
			t.Fatalf("Run = %v; want a StageError of stage sink at sequence 2", err)
		}
		if cp, _ := store.Checkpoint("s", "a"); cp != seq(1) {
			t.Errorf("checkpoint = %+v; want %+v", cp, seq(1))
		}
	})

	t.Run("a sink's late failure goes to the sink stage's dead-letter handler", func(t *testing.T) {
		store := memory.New()
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).AddShard("a", ints(4)...)
		sink := shardflowtest.NewSink(func(o *shardflowtest.SinkOptions[int]) {
			o.AckErr = func(n int) error {
				if n%2 == 0 {
					return boom
				}
				return nil
			}
		})
		var dead []int
		mustRun(t, shardflow.Source(src).DeadLetter(func(_ context.Context, n int, err error) error {
			dead = append(dead, n) // one shard: called on one goroutine
			return nil
		}).Sink(sink))
		if diff := cmp.Diff([]int{2, 4}, dead); diff != "" {
			t.Errorf("dead letters mismatch (-want +got):\n%s", diff)
		}
		if cp, _ := store.Checkpoint("s", "a"); cp != seq(4) {
			t.Errorf("checkpoint = %+v; want %+v", cp, seq(4))
		}
	})

	t.Run("a handler that panics fails its record with a PanicError and is not retried", func(t *testing.T) {
		var calls atomic.Int32
		src := shardflowtest.NewSource[int]("s").AddShard("a", ints(3)...)
		err := shardflow.Source(src).Map(func(_ context.Context, n int) (int, error) {
			if n == 2 {
				calls.Add(1)
				panic(fmt.Sprintf("cannot handle record %d", n))
			}
			return n, nil
		}).Sink(shardflowtest.NewSink[int]()).Run(t.Context())
		var pe *shardflow.PanicError
		if !errors.As(err, &pe) {
			t.Fatalf("Run = %v; want a *PanicError", err)
		}
		if fmt.Sprint(pe.Value) != "cannot handle record 2" || len(pe.Stack) == 0 {
			t.Errorf("PanicError = %v with %d bytes of stack; want the panic value and a stack", pe.Value, len(pe.Stack))
		}
		if calls.Load() != 1 {
			t.Errorf("handler called %d times for the panicking record; want 1", calls.Load())
		}
	})
}

func TestRetryBacksOffThenSucceedsOrGivesUp(t *testing.T) {
	tests := []struct {
		name      string
		failures  int
		attempts  int
		permanent bool
		wantCalls int
		wantErr   bool
	}{
		{name: "two failures then success within 3 attempts", failures: 2, attempts: 3, wantCalls: 3},
		{name: "three failures exhaust 3 attempts", failures: 3, attempts: 3, wantCalls: 3, wantErr: true},
		{name: "a permanent error is not retried", failures: 1, attempts: 5, permanent: true, wantCalls: 1, wantErr: true},
		{name: "MaxAttempts 1 means no retry", failures: 1, attempts: 1, wantCalls: 1, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var calls []time.Duration
				start := time.Now()
				flaky := func(_ context.Context, n int) (int, error) {
					calls = append(calls, time.Since(start))
					if len(calls) <= tc.failures {
						err := errors.New("flaky")
						if tc.permanent {
							err = shardflow.Permanent(err)
						}
						return 0, err
					}
					return n, nil
				}
				src := shardflowtest.NewSource[int]("s").AddShard("a", 1)
				sink := shardflowtest.NewSink[int]()
				err := shardflow.Source(src).Map(flaky, shardflow.WithRetry(shardflow.RetryPolicy{
					MaxAttempts: tc.attempts, InitialInterval: time.Second, MaxInterval: 10 * time.Second,
				})).Sink(sink).Run(t.Context())
				if (err != nil) != tc.wantErr {
					t.Fatalf("Run = %v; want error %v", err, tc.wantErr)
				}
				if len(calls) != tc.wantCalls {
					t.Fatalf("handler called %d times; want %d", len(calls), tc.wantCalls)
				}
				// Waits grow: 1s ±50%, then 2s ±50%.
				for i := 1; i < len(calls); i++ {
					wait := calls[i] - calls[i-1]
					base := time.Second << (i - 1)
					if wait < base/2 || wait > base*3/2 {
						t.Errorf("wait before attempt %d = %v; want %v ±50%%", i+1, wait, base)
					}
				}
			})
		})
	}
}

func TestDrainOnCancel(t *testing.T) {
	t.Run("cancelling drains in-flight records, flushes the sink and saves a final checkpoint", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			store := memory.New()
			src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) {
				o.Store = store
				o.Follow = true
			}).AddShard("a", ints(50)...).AddShard("b", ints(30)...)
			sink := shardflowtest.NewSink[int]()
			ctx, cancel := context.WithCancel(t.Context())
			errc := runAsync(ctx, shardflow.Source(src, func(o *shardflow.Options) { o.CheckpointInterval = time.Hour }).
				Map(func(_ context.Context, n int) (int, error) {
					time.Sleep(10 * time.Millisecond) // slow handler: records are in flight at cancel
					return n, nil
				}).Sink(sink))
			time.Sleep(105 * time.Millisecond)
			cancel()
			if err := <-errc; err != nil {
				t.Fatalf("Run = %v; want nil after a clean drain", err)
			}
			if got := len(sink.Items()); got != 80 {
				t.Errorf("sink holds %d values; want all 80 read before the cancel", got)
			}
			if diff := cmp.Diff(map[string]shardflow.Checkpoint{"a": seq(50), "b": seq(30)}, store.Checkpoints("s")); diff != "" {
				t.Errorf("final checkpoints mismatch (-want +got):\n%s", diff)
			}
			if store.Saves() != 2 {
				t.Errorf("store saved %d times; want 2 (one final save per shard, the interval never came)", store.Saves())
			}
			if sink.Flushes() == 0 {
				t.Errorf("sink was not flushed on drain")
			}
		})
	})

	t.Run("records still unacknowledged when the drain times out are not checkpointed", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			store := memory.New()
			src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) {
				o.Store = store
				o.Follow = true
			}).AddShard("a", ints(5)...)
			sink := &holdSink[int]{}
			ctx, cancel := context.WithCancel(t.Context())
			errc := runAsync(ctx, shardflow.Source(src, func(o *shardflow.Options) {
				o.DrainTimeout = 3 * time.Second
			}).Sink(sink))
			synctest.Wait()
			sink.ack(nil, 0, 1, 3) // 3 and 5 stay in flight
			cancel()
			start := time.Now()
			err := <-errc
			if !errors.Is(err, shardflow.ErrDrainTimeout) {
				t.Fatalf("Run = %v; want ErrDrainTimeout", err)
			}
			// The records get the 3s DrainTimeout less the fifth of it kept
			// for the final saves; the saves (instant here) get the rest.
			if waited := time.Since(start); waited != 2400*time.Millisecond {
				t.Errorf("drain took %v; want 2.4s: the 3s DrainTimeout less the final saves' 0.6s", waited)
			}
			if cp, _ := store.Checkpoint("s", "a"); cp != seq(2) {
				t.Errorf("checkpoint = %+v; want %+v, the last of the contiguous finished records", cp, seq(2))
			}
		})
	})

	t.Run("a handler blocked at cancel is cancelled by the drain timeout and nothing past it is checkpointed", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			store := memory.New()
			src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) {
				o.Store = store
				o.Follow = true
			}).AddShard("a", ints(6)...)
			sink := shardflowtest.NewSink[int]()
			ctx, cancel := context.WithCancel(t.Context())
			errc := runAsync(ctx, shardflow.Source(src, func(o *shardflow.Options) {
				o.DrainTimeout = time.Second
			}).Map(func(ctx context.Context, n int) (int, error) {
				if n == 3 {
					<-ctx.Done()
					return 0, ctx.Err()
				}
				return n, nil
			}).Sink(sink))
			synctest.Wait()
			cancel()
			if err := <-errc; !errors.Is(err, shardflow.ErrDrainTimeout) {
				t.Fatalf("Run = %v; want ErrDrainTimeout", err)
			}
			if cp, _ := store.Checkpoint("s", "a"); cp != seq(2) {
				t.Errorf("checkpoint = %+v; want %+v", cp, seq(2))
			}
			if diff := cmp.Diff([]int{1, 2}, sink.Items()); diff != "" {
				t.Errorf("sink mismatch (-want +got):\n%s", diff)
			}
		})
	})
}

func TestDrainAndFinalSavesShareOneBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &blockingStore{}
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) {
			o.Store = store
			o.Follow = true
		}).AddShard("a", 1)
		ctx, cancel := context.WithCancel(t.Context())
		errc := runAsync(ctx, shardflow.Source(src, func(o *shardflow.Options) {
			o.DrainTimeout = 10 * time.Second
			o.CheckpointInterval = time.Hour
		}).Map(func(_ context.Context, n int) (int, error) {
			time.Sleep(7 * time.Second) // the drain takes most of the budget
			return n, nil
		}).Sink(shardflowtest.NewSink[int]()))
		synctest.Wait() // record 1 is in the handler
		cancel()
		start := time.Now()
		err := <-errc
		if waited := time.Since(start); waited != 10*time.Second {
			t.Errorf("Run returned %v after the cancel; want 10s, the DrainTimeout, drain and final saves included", waited)
		}
		if got, want := store.deadline.Sub(start), 10*time.Second; got != want {
			t.Errorf("the final save's deadline is %v after the cancel; want %v (what the 7s drain left of the 10s budget ends there)", got, want)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Run = %v; want the final save's deadline error", err)
		}
	})
}

// blockingStore has no checkpoints, and its Save blocks until its context
// ends, noting the deadline it was given.
type blockingStore struct {
	deadline time.Time
}

func (s *blockingStore) Load(context.Context, string, string) (shardflow.Checkpoint, bool, error) {
	return shardflow.Checkpoint{}, false, nil
}

func (s *blockingStore) Save(ctx context.Context, _, _ string, _ shardflow.Checkpoint) error {
	s.deadline, _ = ctx.Deadline() // one shard: one caller at a time
	<-ctx.Done()
	return ctx.Err()
}

func TestRecordsOfAShardStayInOrderAcrossConcurrentShards(t *testing.T) {
	const shards, perShard = 8, 500
	src := shardflowtest.NewSource[[2]int]("s")
	for s := range shards {
		vals := make([][2]int, perShard)
		for i := range vals {
			vals[i] = [2]int{s, i}
		}
		src.AddShard(fmt.Sprint("shard-", s), vals...)
	}
	var active, maxActive atomic.Int32
	sink := shardflowtest.NewSink[[2]int]()
	mustRun(t, shardflow.Source(src).Map(func(_ context.Context, v [2]int) ([2]int, error) {
		n := active.Add(1)
		for {
			m := maxActive.Load()
			if n <= m || maxActive.CompareAndSwap(m, n) {
				break
			}
		}
		if v[1]%50 == 0 {
			time.Sleep(time.Millisecond) // let other shards overtake
		}
		active.Add(-1)
		return v, nil
	}).Sink(sink))

	next := make([]int, shards)
	for _, v := range sink.Items() {
		if v[1] != next[v[0]] {
			t.Fatalf("shard %d: got record %d, want %d: order within a shard broken", v[0], v[1], next[v[0]])
		}
		next[v[0]]++
	}
	for s, n := range next {
		if n != perShard {
			t.Errorf("shard %d: %d records; want %d", s, n, perShard)
		}
	}
	if maxActive.Load() < 2 {
		t.Logf("shards never overlapped (max %d concurrent handlers); concurrency not observed on this run", maxActive.Load())
	}
}

func TestShardEndIsCheckpointedAfterEveryRecordIsDone(t *testing.T) {
	store := memory.New()
	src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) {
		o.Store = store
		o.EndShards = true
	}).AddShard("parent", ints(3)...)
	mustRun(t, shardflow.Source(src).Sink(shardflowtest.NewSink[int]()))
	want := shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: "3"}, ShardEnd: true}
	if cp, _ := store.Checkpoint("s", "parent"); cp != want {
		t.Errorf("checkpoint = %+v; want %+v", cp, want)
	}
}

func TestRestartResumesAfterTheCheckpoint(t *testing.T) {
	store := memory.New()
	newSrc := func() *shardflowtest.Source[int] {
		return shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).AddShard("a", ints(6)...)
	}
	first := shardflowtest.NewSink[int]()
	err := shardflow.Source(newSrc(), fastRetry).Map(func(_ context.Context, n int) (int, error) {
		if n == 4 {
			return 0, errors.New("transient outage")
		}
		return n, nil
	}).Sink(first).Run(t.Context())
	if err == nil {
		t.Fatal("first run succeeded; want the injected failure")
	}
	second := shardflowtest.NewSink[int]()
	mustRun(t, shardflow.Source(newSrc()).Sink(second))
	if diff := cmp.Diff([]int{1, 2, 3}, first.Items()); diff != "" {
		t.Errorf("first run mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]int{4, 5, 6}, second.Items()); diff != "" {
		t.Errorf("second run resumed wrong (-want +got):\n%s", diff)
	}
}

func TestCheckpointsAreWrittenAtTheIntervalNotPerRecord(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memory.New()
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).AddShard("a", ints(1000)...)
		mustRun(t, shardflow.Source(src, func(o *shardflow.Options) { o.CheckpointInterval = time.Second }).
			Map(func(_ context.Context, n int) (int, error) {
				time.Sleep(10 * time.Millisecond) // 1000 records take 10s
				return n, nil
			}).Sink(shardflowtest.NewSink[int]()))
		if n := store.Saves(); n < 5 || n > 12 {
			t.Errorf("%d checkpoint saves for 1000 records over 10s at a 1s interval; want about 10", n)
		}
		if cp, _ := store.Checkpoint("s", "a"); cp != seq(1000) {
			t.Errorf("checkpoint = %+v", cp)
		}
	})
}

func TestMaxInFlightBlocksTheSource(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Follow = true }).AddShard("a", ints(10)...)
		sink := &holdSink[int]{}
		ctx, cancel := context.WithCancel(t.Context())
		errc := runAsync(ctx, shardflow.Source(src, func(o *shardflow.Options) { o.MaxInFlight = 4 }).Sink(sink))
		synctest.Wait()
		if sink.len() != 4 {
			t.Fatalf("sink got %d values with MaxInFlight 4 and no acks; want 4", sink.len())
		}
		sink.ack(nil, 1) // not the oldest: nothing retires
		synctest.Wait()
		if sink.len() != 4 {
			t.Fatalf("sink got %d values after acking a later record; want still 4", sink.len())
		}
		sink.ack(nil, 0) // records 1 and 2 retire: two more may enter
		synctest.Wait()
		if sink.len() != 6 {
			t.Fatalf("sink got %d values; want 6", sink.len())
		}
		sink.ack(nil, 2, 3, 4, 5)
		synctest.Wait()
		sink.ack(nil, 6, 7, 8, 9)
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("Run = %v", err)
		}
	})
}

func TestAckingTwiceFailsThePipeline(t *testing.T) {
	src := shardflowtest.NewSource[int]("s").AddShard("a", 1, 2)
	err := shardflow.Source(src).Sink(shardflow.Sink[int](doubleAckSink{})).Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), "more than once") {
		t.Fatalf("Run = %v; want a double-acknowledgement error", err)
	}
}

type doubleAckSink struct{}

func (doubleAckSink) Write(_ context.Context, _ int, ack shardflow.Ack) error {
	ack.Done(nil)
	ack.Done(nil)
	return nil
}
func (doubleAckSink) Flush(context.Context) error { return nil }

func TestSinkFuncErrorsAreRetriedThenDeadLettered(t *testing.T) {
	var calls atomic.Int32
	var dead []int
	src := shardflowtest.NewSource[int]("s").AddShard("a", 1, 2, 3)
	sink := shardflow.SinkFunc[int](func(_ context.Context, n int) error {
		if n == 2 {
			calls.Add(1)
			return errors.New("rejected")
		}
		return nil
	})
	synctest.Test(t, func(t *testing.T) {
		mustRun(t, shardflow.Source(src).DeadLetter(func(_ context.Context, n int, _ error) error {
			dead = append(dead, n)
			return nil
		}).Sink(sink))
	})
	if calls.Load() != 3 || !slices.Equal(dead, []int{2}) {
		t.Errorf("Write called %d times for the failing value, dead letters %v; want 3 attempts then [2]", calls.Load(), dead)
	}
}

func TestConfigurationErrors(t *testing.T) {
	src := shardflowtest.NewSource[int]("s").AddShard("a", 1)
	sink := shardflowtest.NewSink[int]()
	id := func(_ context.Context, n int) (int, error) { return n, nil }
	tests := []struct {
		name  string
		pl    *shardflow.Pipeline
		field string
	}{
		{"a nil handler", shardflow.Source(src).Map((func(context.Context, int) (int, error))(nil)).Sink(sink), "map#1"},
		// A dead-letter handler or batch options of another type than the
		// stream's no longer compile (Stream.DeadLetter, Batch).
		{"WithRetry on a batch stage, which calls no handler", shardflow.Batch(shardflow.Source(src), shardflow.BatchOptions[int]{},
			shardflow.WithRetry(shardflow.NoRetry)).Map(func(_ context.Context, b []int) (int, error) { return len(b), nil }).Sink(sink),
			"batch#1"},
		{"a Stream feeding two stages", func() *shardflow.Pipeline {
			s := shardflow.Source(src)
			s.Map(id).Sink(shardflowtest.NewSink[int]())
			return s.Filter(func(context.Context, int) (bool, error) { return true, nil }).Sink(sink)
		}(), "filter#3"},
		{"a Stream given two sinks", func() *shardflow.Pipeline {
			s := shardflow.Source(src)
			pl := s.Sink(sink)
			s.Sink(shardflowtest.NewSink[int]())
			return pl
		}(), "sink"},
		{"a negative checkpoint interval", shardflow.Source(src, func(o *shardflow.Options) { o.CheckpointInterval = -1 }).Sink(sink),
			"Options.CheckpointInterval"},
		{"a negative CheckpointEvery", shardflow.Source(src, func(o *shardflow.Options) { o.CheckpointEvery = -1 }).Sink(sink),
			"Options.CheckpointEvery"},
		{"a nil sink", shardflow.Source(src).Sink(nil), "sink"},
		{"a byte limit without a size function", shardflow.Batch(shardflow.Source(src), shardflow.BatchOptions[int]{MaxBytes: 10}).
			Map(func(_ context.Context, b []int) (int, error) { return len(b), nil }).Sink(sink), "batch#1 MaxBytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name+" is reported by Run", func(t *testing.T) {
			err := tc.pl.Run(t.Context())
			var ce *shardflow.ConfigError
			if !errors.As(err, &ce) || ce.Field != tc.field {
				t.Fatalf("Run = %v; want a ConfigError on %q", err, tc.field)
			}
		})
	}
	t.Run("a second Run is refused", func(t *testing.T) {
		pl := shardflow.Source(src).Sink(sink)
		mustRun(t, pl)
		if err := pl.Run(t.Context()); !errors.Is(err, shardflow.ErrAlreadyRun) {
			t.Fatalf("second Run = %v; want ErrAlreadyRun", err)
		}
	})
}

func TestBurstySourceDeliversEveryRecordOnceInOrder(t *testing.T) {
	// Pauses between bursts make the lane's goroutine run dry, yield, sleep
	// and wake again many times: the hand-over of emitted records must lose
	// or repeat none.
	const n = 20000
	src := &burstSource{n: n}
	var got []int
	mustRun(t, shardflow.Source[int](src).Sink(shardflow.SinkFunc[int](func(_ context.Context, v int) error {
		got = append(got, v) // one shard: one goroutine
		return nil
	})))
	if diff := cmp.Diff(ints(n), got); diff != "" {
		t.Fatalf("records mismatch (-want +got):\n%s", diff)
	}
}

type burstSource struct{ n int }

func (s *burstSource) Run(ctx context.Context, shards *shardflow.Shards[int]) error {
	lane, err := shards.Open("s", "a", nil)
	if err != nil {
		return err
	}
	for i := 1; i <= s.n; i++ {
		if err := lane.Emit(ctx, shardflow.Position{SequenceNumber: fmt.Sprint(i)}, i); err != nil {
			return err
		}
		switch {
		case i%997 == 0:
			time.Sleep(200 * time.Microsecond)
		case i%31 == 0:
			runtime.Gosched()
		}
	}
	return nil
}
