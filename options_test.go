package shardflow_test

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
)

// loggedSource and loggedSink note the logger Run hands them.
type loggedSource struct {
	*shardflowtest.Source[int]
	log *slog.Logger
}

func (s *loggedSource) UsePipelineLogger(l *slog.Logger) { s.log = l }

type loggedSink struct {
	*shardflowtest.Sink[int]
	log *slog.Logger
}

func (s *loggedSink) UsePipelineLogger(l *slog.Logger) { s.log = l }

func TestRunHandsThePipelineLoggerToTheSourceAndTheSink(t *testing.T) {
	mine := slog.New(slog.DiscardHandler)
	tests := []struct {
		name string
		opts []func(*shardflow.Options)
		want *slog.Logger
	}{
		{"the pipeline's Options.Logger", []func(*shardflow.Options){func(o *shardflow.Options) { o.Logger = mine }}, mine},
		{"slog.Default() when the pipeline has none", nil, slog.Default()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := &loggedSource{Source: shardflowtest.NewSource[int]("s").AddShard("a", 1)}
			sink := &loggedSink{Sink: shardflowtest.NewSink[int]()}
			mustRun(t, shardflow.Source[int](src, tc.opts...).Sink(sink))
			if src.log != tc.want {
				t.Errorf("source got logger %p; want %p", src.log, tc.want)
			}
			if sink.log != tc.want {
				t.Errorf("sink got logger %p; want %p", sink.log, tc.want)
			}
		})
	}
}

// Zero-valued Options validate and run with the defaults their fields
// document: CheckpointInterval 5s, DrainTimeout 30s, MaxInFlight 1000,
// Retry 3 attempts from 100ms, Logger slog.Default().
func TestZeroOptionsRunWithTheDocumentedDefaults(t *testing.T) {
	t.Run("zero Options validate", func(t *testing.T) {
		src := shardflowtest.NewSource[int]("s").AddShard("a", 1)
		mustRun(t, shardflow.Source(src, func(o *shardflow.Options) { *o = shardflow.Options{} }).Sink(shardflowtest.NewSink[int]()))
	})
	t.Run("checkpoints are saved every 5s", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			store := memory.New()
			src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) {
				o.Store = store
				o.Follow = true
			}).AddShard("a", ints(3)...)
			ctx, cancel := context.WithCancel(t.Context())
			errc := runAsync(ctx, shardflow.Source(src).Sink(shardflowtest.NewSink[int]()))
			time.Sleep(5*time.Second - time.Millisecond)
			synctest.Wait()
			if n := store.Saves(); n != 0 {
				t.Errorf("%d saves before 5s; want none", n)
			}
			time.Sleep(time.Millisecond)
			synctest.Wait()
			if cp, _ := store.Checkpoint("s", "a"); cp != seq(3) {
				t.Errorf("checkpoint at 5s = %+v; want %+v", cp, seq(3))
			}
			cancel()
			if err := <-errc; err != nil {
				t.Fatalf("Run = %v", err)
			}
		})
	})
	t.Run("1000 records of a shard are in flight at most", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Follow = true }).AddShard("a", ints(1001)...)
			sink := &holdSink[int]{}
			ctx, cancel := context.WithCancel(t.Context())
			errc := runAsync(ctx, shardflow.Source(src).Sink(sink))
			synctest.Wait()
			if sink.len() != 1000 {
				t.Errorf("sink holds %d values with none acknowledged; want 1000", sink.len())
			}
			first := make([]int, 1000)
			for i := range first {
				first[i] = i
			}
			sink.ack(nil, first...)
			synctest.Wait()
			if sink.len() != 1001 {
				t.Fatalf("sink holds %d values once the first 1000 were done; want 1001", sink.len())
			}
			sink.ack(nil, 1000)
			cancel()
			if err := <-errc; err != nil {
				t.Fatalf("Run = %v", err)
			}
		})
	})
	t.Run("a handler is called 3 times, waiting 100ms then 200ms (±50%)", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var calls []time.Time
			src := shardflowtest.NewSource[int]("s").AddShard("a", 1)
			err := shardflow.Source(src).Map(func(context.Context, int) (int, error) {
				calls = append(calls, time.Now())
				return 0, errors.New("down")
			}).Sink(shardflowtest.NewSink[int]()).Run(t.Context())
			if _, ok := errors.AsType[*shardflow.StageError](err); !ok || len(calls) != 3 {
				t.Fatalf("Run = %v after %d calls; want a StageError after 3", err, len(calls))
			}
			for i, base := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond} {
				if wait := calls[i+1].Sub(calls[i]); wait < base/2 || wait > base*3/2 {
					t.Errorf("wait %d = %v; want %v ±50%%", i+1, wait, base)
				}
			}
		})
	})
	t.Run("the drain gives records 25s of the 30s budget", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Follow = true }).AddShard("a", 1)
			sink := &holdSink[int]{} // never acknowledges
			ctx, cancel := context.WithCancel(t.Context())
			errc := runAsync(ctx, shardflow.Source(src).Sink(sink))
			synctest.Wait()
			cancel()
			start := time.Now()
			if err := <-errc; !errors.Is(err, shardflow.ErrDrainTimeout) {
				t.Fatalf("Run = %v; want ErrDrainTimeout", err)
			}
			if waited := time.Since(start); waited != 25*time.Second {
				t.Errorf("drain timed out after %v; want 25s (30s less the final saves' 5s)", waited)
			}
		})
	})
	t.Run("the logger is slog.Default()", func(t *testing.T) {
		var records atomic.Int32
		prev := slog.Default()
		slog.SetDefault(slog.New(countingHandler{&records}))
		defer slog.SetDefault(prev)
		src := shardflowtest.NewSource[int]("s").AddShard("a", 1)
		mustRun(t, shardflow.Source(src).Sink(shardflowtest.NewSink[int]()))
		if records.Load() == 0 {
			t.Errorf("nothing was logged to slog.Default(); want the pipeline's lifecycle at Info")
		}
	})
}

type countingHandler struct{ n *atomic.Int32 }

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countingHandler) Handle(context.Context, slog.Record) error {
	h.n.Add(1)
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }
