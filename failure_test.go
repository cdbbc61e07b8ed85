package shardflow_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
)

// letters collects what a dead-letter handler receives.
type letters[T any] struct {
	mu   sync.Mutex
	vals []T
	errs []error
}

func (l *letters[T]) handle(_ context.Context, v T, err error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.vals = append(l.vals, v)
	l.errs = append(l.errs, err)
	return nil
}

func (l *letters[T]) all() ([]T, []error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.vals), slices.Clone(l.errs)
}

var errBadRecord = errors.New("bad record")

func TestDeadLetterCarriesTheProvenanceOfTheFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		arrived := time.Now().Add(-time.Minute).UTC()
		recs := []shardflow.Record{
			{PartitionKey: "a", Data: []byte("ok"), SequenceNumber: "1", ApproximateArrivalTimestamp: arrived},
			{PartitionKey: "b", Data: []byte("bad"), SequenceNumber: "2", ApproximateArrivalTimestamp: arrived.Add(time.Second)},
			{PartitionKey: "c", Data: []byte("refused"), SequenceNumber: "3", ApproximateArrivalTimestamp: arrived.Add(2 * time.Second)},
		}
		src := shardflowtest.NewSource[shardflow.Record]("orders").AddShard("shard-7", recs...)
		calls := 0
		decode := func(_ context.Context, r shardflow.Record) (string, error) {
			if string(r.Data) == "bad" {
				calls++
				return "", fmt.Errorf("call %d: %w", calls, errBadRecord)
			}
			return string(r.Data), nil
		}
		var decodeLetters letters[shardflow.Record]
		var sinkLetters letters[string]
		sink := shardflowtest.NewSink(func(o *shardflowtest.SinkOptions[string]) {
			o.AckErr = func(v string) error {
				if v == "refused" {
					return errors.New("the sink gave up")
				}
				return nil
			}
		})
		pl := shardflow.Source(src, quiet, func(o *shardflow.Options) {
			o.Retry = shardflow.RetryPolicy{MaxAttempts: 3, InitialInterval: time.Millisecond}
		}).
			DeadLetter(decodeLetters.handle).Map(decode, shardflow.WithName("decode")).
			DeadLetter(sinkLetters.handle).Sink(sink, shardflow.WithName("out"))
		mustRun(t, pl)

		vals, errs := decodeLetters.all()
		if len(vals) != 1 || string(vals[0].Data) != "bad" {
			t.Fatalf("decode's dead letters = %v; want the bad record", vals)
		}
		err := errs[0]
		if !errors.Is(err, errBadRecord) || err.Error() != "after 3 attempts: call 3: bad record" {
			t.Errorf("dead-letter error %q; want the stage's error, wrapping errBadRecord", err)
		}
		dl, ok := errors.AsType[*shardflow.DeadLetter](err)
		if !ok {
			t.Fatalf("dead-letter error %T is not a *shardflow.DeadLetter", err)
		}
		pos := shardflow.Position{SequenceNumber: "2"}
		want := shardflow.DeadLetter{Stage: "decode", Stream: "orders", ShardID: "shard-7", Position: pos,
			Records: []shardflow.Position{pos}, Arrival: arrived.Add(time.Second), Attempts: 3}
		got := *dl
		got.FirstErr, got.Err = nil, nil
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("dead letter mismatch (-want +got):\n%s", diff)
		}
		if dl.FirstErr == nil || dl.FirstErr.Error() != "call 1: bad record" {
			t.Errorf("FirstErr = %v; want the first call's error", dl.FirstErr)
		}

		vals2, errs2 := sinkLetters.all()
		if len(vals2) != 1 || vals2[0] != "refused" {
			t.Fatalf("the sink's dead letters = %v; want the refused value", vals2)
		}
		sdl, ok := errors.AsType[*shardflow.DeadLetter](errs2[0])
		if !ok || sdl.Stage != "out" || sdl.Position.SequenceNumber != "3" || sdl.Attempts != 1 ||
			!sdl.Arrival.Equal(arrived.Add(2*time.Second)) || sdl.Err.Error() != "the sink gave up" {
			t.Errorf("the sink's dead letter = %+v; want stage out, sequence number 3, 1 attempt, its arrival and the sink's error", sdl)
		}
	})
}

// ageSource emits one shard of ints, each with an arrival time of now less
// age(v), and one without arrival time for v = 0.
type ageSource struct {
	vals []int
	age  func(v int) time.Duration
}

func (s *ageSource) Run(ctx context.Context, shards *shardflow.Shards[int]) error {
	lane, err := shards.Open("s", "shard-0", nil)
	if err != nil {
		return err
	}
	for i, v := range s.vals {
		pos := shardflow.Position{SequenceNumber: strconv.Itoa(i + 1)}
		if v == 0 {
			err = lane.Emit(ctx, pos, v)
		} else {
			err = lane.EmitArrived(ctx, pos, time.Now().Add(-s.age(v)), v)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func TestMaxRecordAgeSkipsTheRetriesOfOldRecords(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// 3: 59m59s old, which turns an hour old during its retries; 1: two
		// hours old; 2: a second old; 0: no arrival time.
		ages := map[int]time.Duration{1: 2 * time.Hour, 2: time.Second, 3: time.Hour - time.Second}
		src := &ageSource{vals: []int{3, 1, 2, 0}, age: func(v int) time.Duration { return ages[v] }}
		var mu sync.Mutex
		calls := map[int]int{}
		alwaysFails := func(_ context.Context, v int) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			calls[v]++
			return 0, errBadRecord
		}
		var dead letters[int]
		pl := shardflow.Source[int](src, quiet, func(o *shardflow.Options) {
			o.Retry = shardflow.RetryPolicy{MaxAttempts: 10, InitialInterval: 400 * time.Millisecond, Multiplier: 1, MaxRecordAge: time.Hour}
		}).DeadLetter(dead.handle).Map(alwaysFails).Sink(shardflowtest.NewSink[int]())
		mustRun(t, pl)
		if diff := cmp.Diff(map[int]int{1: 1, 2: 10, 0: 10}, map[int]int{1: calls[1], 2: calls[2], 0: calls[0]}); diff != "" {
			t.Errorf("handler calls by value (-want +got):\n%s", diff)
		}
		// 400ms ±50% between calls: the record turns an hour old after 2
		// to 6 calls.
		if calls[3] < 2 || calls[3] > 6 {
			t.Errorf("the record that turned old during its retries had %d calls; want 2 to 6", calls[3])
		}
		vals, errs := dead.all()
		if !slices.Equal(vals, []int{3, 1, 2, 0}) {
			t.Fatalf("dead letters = %v; want every value, in order", vals)
		}
		for i, v := range vals {
			dl, _ := errors.AsType[*shardflow.DeadLetter](errs[i])
			old := strings.Contains(errs[i].Error(), "older than MaxRecordAge 1h0m0s")
			if dl == nil || dl.Attempts != calls[v] || old != (v == 1 || v == 3) || !errors.Is(errs[i], errBadRecord) {
				t.Errorf("dead letter of %d: %v (%+v); want %d attempts, naming MaxRecordAge only for an old record", v, errs[i], dl, calls[v])
			}
		}
	})
}

func TestMaxRecordAgeOfAStageReplacesThePipelines(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &ageSource{vals: []int{1}, age: func(int) time.Duration { return 2 * time.Hour }}
		calls := 0
		pl := shardflow.Source[int](src, quiet, func(o *shardflow.Options) {
			o.Retry = shardflow.RetryPolicy{MaxRecordAge: time.Hour}
		}).Map(func(_ context.Context, v int) (int, error) {
			calls++
			if calls < 3 {
				return 0, errBadRecord
			}
			return v, nil
		}, shardflow.WithRetry(shardflow.RetryPolicy{MaxAttempts: 3})).Sink(shardflowtest.NewSink[int]())
		mustRun(t, pl)
		if calls != 3 {
			t.Errorf("handler calls = %d; want 3: the stage's policy has no age limit", calls)
		}
	})
}

// batchSource emits n ints on one shard, for Bisect.
func bisectPipeline(n int, poison func(int) bool, store *memory.Store) (*shardflow.Stream[[]int], *shardflowtest.Source[int]) {
	src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).AddShard("shard-0", ints(n)...)
	return shardflow.Batch(shardflow.Source[int](src, quiet), shardflow.BatchOptions[int]{MaxCount: n, Linger: time.Hour}), src
}

func TestBisectIsolatesExactlyThePoisonValues(t *testing.T) {
	for _, tc := range []struct {
		name   string
		n      int
		poison []int
	}{
		{"one poison first of 500", 500, []int{1}},
		{"one poison second of 500", 500, []int{2}},
		{"one poison in the middle of 500", 500, []int{251}},
		{"one poison last of 500", 500, []int{500}},
		{"one poison of 2", 2, []int{2}},
		{"three poisons of 500", 500, []int{7, 8, 333}},
		{"every value poisonous", 8, []int{1, 2, 3, 4, 5, 6, 7, 8}},
	} {
		for _, stage := range []string{"map", "sink"} {
			t.Run(tc.name+" ("+stage+")", func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					isPoison := func(v int) bool { return slices.Contains(tc.poison, v) }
					store := memory.New()
					batches, _ := bisectPipeline(tc.n, isPoison, store)
					calls := 0
					var passed []int
					write := func(_ context.Context, b []int) error {
						calls++
						if slices.ContainsFunc(b, isPoison) {
							return fmt.Errorf("batch of %d holds a poison", len(b))
						}
						passed = append(passed, b...)
						return nil
					}
					var dead letters[[]int]
					policy := shardflow.WithRetry(shardflow.RetryPolicy{MaxAttempts: 1, Bisect: true})
					var pl *shardflow.Pipeline
					if stage == "map" {
						pl = batches.DeadLetter(dead.handle).
							Map(func(ctx context.Context, b []int) ([]int, error) { return b, write(ctx, b) }, policy).
							Sink(shardflowtest.NewSink[[]int]())
					} else {
						pl = batches.DeadLetter(dead.handle).Sink(shardflow.SinkFunc[[]int](write), policy)
					}
					mustRun(t, pl)

					vals, errs := dead.all()
					var want [][]int
					for _, p := range tc.poison {
						want = append(want, []int{p})
					}
					if diff := cmp.Diff(want, vals); diff != "" {
						t.Errorf("dead letters (-want +got):\n%s", diff)
					}
					var clean []int
					for v := 1; v <= tc.n; v++ {
						if !isPoison(v) {
							clean = append(clean, v)
						}
					}
					if diff := cmp.Diff(clean, passed, cmpEmpty); diff != "" {
						t.Errorf("values passed on, in order (-want +got):\n%s", diff)
					}
					if len(tc.poison) == 1 {
						bound := int(math.Ceil(math.Log2(float64(tc.n)))) + 1
						if extra := calls - 1; extra > bound {
							t.Errorf("%d handler calls after the batch failed; want at most ⌈log2 %d⌉+1 = %d", extra, tc.n, bound)
						}
					}
					for i, err := range errs {
						dl, ok := errors.AsType[*shardflow.DeadLetter](err)
						if !ok || len(dl.Records) != 1 || dl.Position.SequenceNumber != strconv.Itoa(vals[i][0]) ||
							dl.Attempts < 1 || !strings.Contains(dl.FirstErr.Error(), fmt.Sprintf("batch of %d", tc.n)) {
							t.Errorf("dead letter of %v: %+v; want its one record, the batch's error first, an attempt or more", vals[i], dl)
						}
					}
					if diff := cmp.Diff(map[string]shardflow.Checkpoint{"shard-0": seq(tc.n)}, store.Checkpoints("s")); diff != "" {
						t.Errorf("checkpoints mismatch (-want +got):\n%s", diff)
					}
				})
			})
		}
	}
}

var cmpEmpty = cmp.Comparer(func(a, b []int) bool { return slices.Equal(a, b) })

func TestBisectCountsEveryPartOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mr := newMetricsReader()
		src := shardflowtest.NewSource[int]("s").AddShard("shard-0", ints(64)...)
		var dead letters[[]int]
		sink := shardflowtest.NewSink[[]int]()
		pl := shardflow.Batch(shardflow.Source[int](src, quiet, func(o *shardflow.Options) {
			o.MeterProvider = mr
			o.Retry = shardflow.RetryPolicy{MaxAttempts: 1, Bisect: true} // for every batch stage
		}), shardflow.BatchOptions[int]{MaxCount: 64, Linger: time.Hour}).
			DeadLetter(dead.handle).Filter(func(_ context.Context, b []int) (bool, error) {
			if slices.Contains(b, 40) {
				return false, errBadRecord
			}
			return b[0] > 32, nil // the parts from 33 on go on
		}, shardflow.WithName("keep")).Sink(sink)
		mustRun(t, pl)
		attrs := "stage=keep,stream=s"
		in := mr.value(t, "shardflow.stage.records.in", attrs)
		out := mr.value(t, "shardflow.stage.records.out", attrs)
		dropped := mr.value(t, "shardflow.stage.records.dropped", attrs)
		dl := mr.value(t, "shardflow.stage.records.dead_lettered", attrs)
		if in != 1 || dl != 1 || out != float64(len(sink.Items())) || dropped == 0 {
			t.Errorf("in %v, out %v, dropped %v, dead-lettered %v; want 1 batch in, the %d parts the sink got out, some dropped, 1 dead-lettered",
				in, out, dropped, dl, len(sink.Items()))
		}
		if sinkIn := mr.value(t, "shardflow.stage.records.in", "stage=sink,stream=s"); sinkIn != out {
			t.Errorf("the sink's in = %v; want the filter's out, %v", sinkIn, out)
		}
	})
}

func TestFailureControlsConfiguration(t *testing.T) {
	src := func() *shardflowtest.Source[int] { return shardflowtest.NewSource[int]("s").AddShard("a", 1, 2, 3) }
	id := func(_ context.Context, v int) (int, error) { return v, nil }
	for _, tc := range []struct {
		name  string
		pl    func() *shardflow.Pipeline
		field string
	}{
		{"Bisect on a stage whose input is not a slice is refused", func() *shardflow.Pipeline {
			return shardflow.Source[int](src(), quiet).Map(id, shardflow.WithRetry(shardflow.RetryPolicy{Bisect: true})).Sink(shardflowtest.NewSink[int]())
		}, "map#1 retry.Bisect"},
		{"Bisect for every stage leaves the stages without batches alone", func() *shardflow.Pipeline {
			return shardflow.Source[int](src(), quiet, func(o *shardflow.Options) { o.Retry.Bisect = true }).Map(id).Sink(shardflowtest.NewSink[int]())
		}, ""},
		{"a negative MaxRecordAge is refused", func() *shardflow.Pipeline {
			return shardflow.Source[int](src(), quiet, func(o *shardflow.Options) { o.Retry.MaxRecordAge = -time.Second }).Map(id).Sink(shardflowtest.NewSink[int]())
		}, "Options.Retry.MaxRecordAge"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.pl().Run(t.Context())
			ce, ok := errors.AsType[*shardflow.ConfigError](err)
			switch {
			case tc.field == "" && err != nil:
				t.Errorf("Run = %v; want nil", err)
			case tc.field != "" && (!ok || ce.Field != tc.field):
				t.Errorf("Run = %v; want a *ConfigError of %s", err, tc.field)
			}
		})
	}
	for _, p := range []shardflow.RetryPolicy{{MaxRecordAge: time.Hour}, {Bisect: true}} {
		if err := p.Validate("Options.Retry"); err == nil {
			t.Errorf("Validate(%+v) = nil; want a *ConfigError: connectors' AWS calls have no records to age or batches to split", p)
		}
	}
}
