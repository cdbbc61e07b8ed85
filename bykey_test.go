package shardflow_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
)

// keyedRecords returns n records of one shard whose partition keys are
// drawn at random from keys keys; each record's data is "key:index".
func keyedRecords(seed uint64, n, keys int) []shardflow.Record {
	rng := rand.New(rand.NewPCG(seed, 1))
	recs := make([]shardflow.Record, n)
	for i := range recs {
		k := "k" + strconv.Itoa(rng.IntN(keys))
		recs[i] = shardflow.Record{PartitionKey: k, Data: fmt.Appendf(nil, "%s:%d", k, i+1), SequenceNumber: strconv.Itoa(i + 1)}
	}
	return recs
}

// perKeyOrderViolations counts values "key:i" that come after a larger i of
// their key.
func perKeyOrderViolations(vals []string) int {
	last := map[string]int{}
	bad := 0
	for _, v := range vals {
		k, num, _ := strings.Cut(v, ":")
		i, _ := strconv.Atoi(num)
		if i < last[k] {
			bad++
		}
		last[k] = max(last[k], i)
	}
	return bad
}

func TestByKeyKeepsEachKeysOrderWhileWorkersRunConcurrently(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n, keys, workers = 600, 40, 8
		recs := keyedRecords(7, n, keys)
		delays := make(map[string]time.Duration, n) // by data, drawn up front
		rng := rand.New(rand.NewPCG(3, 4))
		for _, r := range recs {
			delays[string(r.Data)] = time.Duration(rng.IntN(50)) * time.Millisecond
		}
		store := memory.New()
		src := shardflowtest.NewSource[shardflow.Record]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).
			AddShard("shard-0", recs...)
		var mu sync.Mutex
		busyKeys := map[string]bool{}
		var active, peak atomic.Int32
		var overlaps atomic.Int32 // a key in two handler calls at once
		sink := shardflowtest.NewSink[string]()
		pl := shardflow.ByKey(shardflow.Source(src, quiet), workers, nil).
			Map(func(_ context.Context, r shardflow.Record) (string, error) {
				mu.Lock()
				if busyKeys[r.PartitionKey] {
					overlaps.Add(1)
				}
				busyKeys[r.PartitionKey] = true
				mu.Unlock()
				a := active.Add(1)
				for p := peak.Load(); a > p && !peak.CompareAndSwap(p, a); p = peak.Load() {
				}
				time.Sleep(delays[string(r.Data)])
				active.Add(-1)
				mu.Lock()
				busyKeys[r.PartitionKey] = false
				mu.Unlock()
				return string(r.Data), nil
			}).
			Sink(sink)
		mustRun(t, pl)

		got := sink.Items()
		if len(got) != n {
			t.Fatalf("the sink got %d values; want %d", len(got), n)
		}
		if v := perKeyOrderViolations(got); v != 0 {
			t.Errorf("%d values came after a later value of their key", v)
		}
		if o := overlaps.Load(); o != 0 {
			t.Errorf("a key was in two handler calls at once %d times; want never", o)
		}
		if p := peak.Load(); p < 2 || p > workers {
			t.Errorf("at most %d handler calls ran at once; want from 2 to %d", p, workers)
		}
		if diff := cmp.Diff(map[string]shardflow.Checkpoint{"shard-0": seq(n)}, store.Checkpoints("s")); diff != "" {
			t.Errorf("checkpoints mismatch (-want +got):\n%s", diff)
		}
	})
}

// TestByKeyCheckpointNeverPassesAnUnfinishedRecord acknowledges the sink's
// values one at a time in a random order, with records dropped by a Filter
// and records dead-lettered by a stage and by the sink on the way, and
// checks after each step that the checkpoint is exactly the end of the
// contiguous run of finished records.
func TestByKeyCheckpointNeverPassesAnUnfinishedRecord(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 60
		store := memory.New()
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) {
			o.Store = store
			o.Follow = true
		}).AddShard("shard-0", ints(n)...)
		var dmu sync.Mutex
		done := make([]bool, n+1) // by record: finished without the sink's ack
		finish := func(v int) {
			dmu.Lock()
			done[v] = true
			dmu.Unlock()
		}
		sink := &holdSink[int]{}
		pl := shardflow.ByKey(shardflow.Source[int](src, quiet, fastRetry), 4, func(v int) string { return strconv.Itoa(v % 5) }).
			DeadLetter(func(_ context.Context, v int, _ error) error {
				finish(v)
				return nil
			}).
			Map(func(_ context.Context, v int) (int, error) {
				if v%7 == 0 {
					return 0, errors.New("poison")
				}
				return v, nil
			}).
			Filter(func(_ context.Context, v int) (bool, error) {
				if v%6 == 0 {
					finish(v)
					return false, nil
				}
				return true, nil
			}).
			DeadLetter(func(_ context.Context, v int, _ error) error {
				finish(v)
				return nil
			}).
			Sink(sink)
		ctx, cancel := context.WithCancel(t.Context())
		errc := runAsync(ctx, pl)
		synctest.Wait()
		kept := sink.len()
		if want := n - n/7 - n/6 + n/42; kept != want {
			t.Fatalf("the sink holds %d values; want %d", kept, want)
		}
		sink.mu.Lock()
		vals := slices.Clone(sink.vals)
		sink.mu.Unlock()
		contiguous := func() int {
			dmu.Lock()
			defer dmu.Unlock()
			m := 0
			for m < n && done[m+1] {
				m++
			}
			return m
		}
		checkpoint := func() int {
			st := pl.Status()
			if len(st.Shards) != 1 {
				t.Fatalf("status = %+v; want one shard", st)
			}
			cp, _ := strconv.Atoi(st.Shards[0].Checkpoint.SequenceNumber)
			return cp
		}
		if got, want := checkpoint(), contiguous(); got != want {
			t.Errorf("before any ack: checkpoint at %d; want %d", got, want)
		}
		for step, i := range rand.New(rand.NewPCG(5, 6)).Perm(kept) {
			var err error
			if vals[i]%11 == 0 {
				err = errors.New("the sink gave up") // to its dead-letter handler
			} else {
				finish(vals[i])
			}
			sink.ack(err, i)
			synctest.Wait()
			if got, want := checkpoint(), contiguous(); got != want {
				t.Fatalf("after ack %d (of value %d): checkpoint at %d; want %d, the end of the finished run", step+1, vals[i], got, want)
			}
		}
		if got := checkpoint(); got != n {
			t.Errorf("once every record is finished: checkpoint at %d; want %d", got, n)
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("Run: %v", err)
		}
		if diff := cmp.Diff(map[string]shardflow.Checkpoint{"shard-0": seq(n)}, store.Checkpoints("s")); diff != "" {
			t.Errorf("saved checkpoints mismatch (-want +got):\n%s", diff)
		}
	})
}

// A record that fails for good stops the pipeline; the records of other
// keys after it finished on other workers, and the checkpoint stays before
// the failed one all the same.
func TestByKeyFailedRecordHoldsTheCheckpointWhileLaterOnesFinish(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n, poison = 30, 13
		store := memory.New()
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Store = store }).
			AddShard("shard-0", ints(n)...)
		sink := shardflowtest.NewSink[int]()
		err := shardflow.ByKey(shardflow.Source[int](src, quiet, fastRetry), 3, func(v int) string {
			if v == poison {
				return "poison"
			}
			return "k" + strconv.Itoa(v%4)
		}).
			Map(func(ctx context.Context, v int) (int, error) {
				if v == poison {
					// Fail once the other workers are through.
					time.Sleep(time.Second)
					return 0, shardflow.Permanent(errors.New("poison"))
				}
				return v, nil
			}, shardflow.WithName("decode")).
			Sink(sink).Run(t.Context())
		se, ok := errors.AsType[*shardflow.StageError](err)
		if !ok || se.Stage != "decode" || se.Position.SequenceNumber != strconv.Itoa(poison) {
			t.Fatalf("Run = %v; want a *StageError of decode at %d", err, poison)
		}
		if got := sink.Items(); len(got) < n/2 || slices.Max(got) != n {
			t.Errorf("the sink got %v; want the values of the other workers, up to %d", got, n)
		}
		if diff := cmp.Diff(map[string]shardflow.Checkpoint{"shard-0": seq(poison - 1)}, store.Checkpoints("s")); diff != "" {
			t.Errorf("checkpoints mismatch (-want +got):\n%s", diff)
		}
	})
}

func TestByKeyConfiguration(t *testing.T) {
	src := func() *shardflowtest.Source[int] { return shardflowtest.NewSource[int]("s").AddShard("a", 1, 2, 3) }
	sink := shardflowtest.NewSink[int]()
	key := func(v int) string { return strconv.Itoa(v) }
	for _, tc := range []struct {
		name  string
		build func() *shardflow.Pipeline
		field string // of the *ConfigError; "" for none
	}{
		{"a nil key on a stream of another type than Record is refused", func() *shardflow.Pipeline {
			return shardflow.ByKey(shardflow.Source[int](src(), quiet), 4, nil).Sink(sink)
		}, "bykey#1"},
		{"no workers is refused", func() *shardflow.Pipeline {
			return shardflow.ByKey(shardflow.Source[int](src(), quiet), 0, key).Sink(sink)
		}, "bykey#1"},
		{"two ByKey stages are refused", func() *shardflow.Pipeline {
			s := shardflow.ByKey(shardflow.Source[int](src(), quiet), 2, key).Map(func(_ context.Context, v int) (int, error) { return v, nil })
			return shardflow.ByKey(s, 2, key, shardflow.WithName("again")).Sink(sink)
		}, "again"},
		{"WithRetry is refused: ByKey calls no handler", func() *shardflow.Pipeline {
			return shardflow.ByKey(shardflow.Source[int](src(), quiet), 2, key, shardflow.WithRetry(shardflow.NoRetry)).Sink(sink)
		}, "bykey#1"},
		{"one worker runs as without ByKey", func() *shardflow.Pipeline {
			return shardflow.ByKey(shardflow.Source[int](src(), quiet), 1, key).Sink(sink)
		}, ""},
		{"ByKey feeds one stage like any Stream", func() *shardflow.Pipeline {
			k := shardflow.ByKey(shardflow.Source[int](src(), quiet), 2, key)
			k.Sink(sink)
			return k.Sink(sink)
		}, "sink"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.build().Run(t.Context())
			ce, ok := errors.AsType[*shardflow.ConfigError](err)
			switch {
			case tc.field == "" && err != nil:
				t.Errorf("Run = %v; want nil", err)
			case tc.field != "" && (!ok || ce.Field != tc.field):
				t.Errorf("Run = %v; want a *ConfigError of %s", err, tc.field)
			}
		})
	}
}

// Values of one worker reach a Batch after ByKey in their order, so each
// batch is in shard order and each key's values stay in order across
// batches.
func TestBatchAfterByKeyKeepsEachWorkersOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 200
		store := memory.New()
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) {
			o.Store = store
			o.EndShards = true
		}).AddShard("shard-0", ints(n)...)
		sink := shardflowtest.NewSink[[]int]()
		keyed := shardflow.ByKey(shardflow.Source[int](src, quiet), 4, func(v int) string { return strconv.Itoa(v % 7) }).
			Map(func(_ context.Context, v int) (int, error) {
				time.Sleep(time.Duration(v%3) * time.Millisecond)
				return v, nil
			})
		mustRun(t, shardflow.Batch(keyed, shardflow.BatchOptions[int]{MaxCount: 5, Linger: time.Second}).Sink(sink))
		var all []string
		total := 0
		for _, b := range sink.Items() {
			if !slices.IsSorted(b) {
				t.Errorf("batch %v is not in shard order", b)
			}
			for _, v := range b {
				all = append(all, fmt.Sprintf("%d:%d", v%7, v))
			}
			total += len(b)
		}
		if total != n {
			t.Errorf("the batches hold %d values; want %d", total, n)
		}
		if v := perKeyOrderViolations(all); v != 0 {
			t.Errorf("%d values came after a later value of their key", v)
		}
		if diff := cmp.Diff(map[string]shardflow.Checkpoint{"shard-0": {Position: seq(n).Position, ShardEnd: true}}, store.Checkpoints("s")); diff != "" {
			t.Errorf("checkpoints mismatch (-want +got):\n%s", diff)
		}
	})
}

// MaxInFlight caps a shard's records across its key workers: with the sink
// holding every value, the source stops at the limit.
func TestByKeyMaxInFlightBlocksTheSource(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &holdSink[int]{}
		src := shardflowtest.NewSource[int]("s").AddShard("a", ints(50)...)
		pl := shardflow.ByKey(shardflow.Source[int](src, quiet, func(o *shardflow.Options) { o.MaxInFlight = 8 }),
			4, func(v int) string { return strconv.Itoa(v) }).Sink(sink)
		errc := runAsync(t.Context(), pl)
		synctest.Wait()
		if got := sink.len(); got != 8 {
			t.Fatalf("the sink holds %d values with MaxInFlight 8; want 8", got)
		}
		ackValue := func(v int) {
			t.Helper()
			sink.mu.Lock()
			i := slices.Index(sink.vals, v)
			sink.mu.Unlock()
			if i < 0 {
				t.Fatalf("value %d is not in the sink", v)
			}
			sink.ack(nil, i)
			synctest.Wait()
		}
		for v := 1; v <= 3; v++ { // the three oldest finished: three more come in
			ackValue(v)
		}
		if got := sink.len(); got != 11 {
			t.Fatalf("after three acks the sink holds %d values; want 11", got)
		}
		for v := 4; v <= 50; v++ {
			ackValue(v)
			// The source is woken once a quarter of the limit is free.
			if got := sink.len(); got-v > 8 || (got < 50 && got-v < 6) {
				t.Fatalf("after acking 1 to %d the sink holds %d values; want 6 to 8 in flight", v, got)
			}
		}
		if err := <-errc; err != nil {
			t.Fatalf("Run: %v", err)
		}
	})
}

// A lost lease stops the shard's workers too: the pipeline goes on with the
// other shards and Run returns nil.
func TestByKeyLostLeaseStopsTheShardsWorkers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := losingStore{Store: memory.New(), lose: "b"}
		src := &slowSource{shards: []string{"a", "b"}, n: 30, store: store}
		sink := shardflowtest.NewSink[int]()
		err := shardflow.ByKey(shardflow.Source[int](src, quiet, func(o *shardflow.Options) {
			o.CheckpointInterval = time.Second
			o.Retry = shardflow.NoRetry
		}), 4, func(v int) string { return strconv.Itoa(v) }).
			Map(func(ctx context.Context, v int) (int, error) {
				if v == 5 { // still waiting when shard b's lease is found lost
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

func TestByKeyStageCountsAreExact(t *testing.T) {
	const n = 2000
	mr := newMetricsReader()
	src := shardflowtest.NewSource[int]("orders").AddShard("s-0", ints(n)...).AddShard("s-1", ints(n)...)
	sink := shardflowtest.NewSink[int]()
	keyed := shardflow.ByKey(shardflow.Source[int](src, quiet, func(o *shardflow.Options) { o.MeterProvider = mr }).
		Map(func(_ context.Context, v int) (int, error) { return 2 * v, nil }),
		16, func(v int) string { return strconv.Itoa(v % 100) })
	pl := shardflow.Batch(keyed.Filter(func(_ context.Context, v int) (bool, error) { return v%3 != 0, nil }),
		shardflow.BatchOptions[int]{MaxCount: 10}).
		FlatMap(func(_ context.Context, b []int) ([]int, error) { return b, nil }).
		Sink(sink)
	mustRun(t, pl)
	kept := float64(n - n/3)
	got := map[string][2]float64{}
	for _, stage := range []string{"map#1", "bykey#2", "filter#3", "batch#4", "flatmap#5", "sink"} {
		attrs := "stage=" + stage + ",stream=orders"
		got[stage] = [2]float64{mr.value(t, "shardflow.stage.records.in", attrs), mr.value(t, "shardflow.stage.records.out", attrs)}
	}
	batches := got["batch#4"][1]
	want := map[string][2]float64{
		"map#1": {2 * n, 2 * n}, "bykey#2": {2 * n, 2 * n}, "filter#3": {2 * n, 2 * kept},
		"batch#4": {2 * kept, batches}, "flatmap#5": {batches, 2 * kept}, "sink": {2 * kept, 2 * kept},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("records in and out by stage (-want +got):\n%s", diff)
	}
	if batches < 2*kept/10 {
		t.Errorf("%v batches of at most 10 for %v values", batches, 2*kept)
	}
	if got := len(sink.Items()); float64(got) != 2*kept {
		t.Errorf("the sink got %d values; want %v", got, 2*kept)
	}
}

func TestByKeyWatchdogNamesTheStageAWorkerIsBlockedIn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := newStallLog()
		b := &blockOnFifth{release: make(chan struct{}), blocked: make(chan time.Time, 1)}
		src := shardflowtest.NewSource[int]("orders", func(o *shardflowtest.SourceOptions) { o.Follow = true }).
			AddShard("shard-1", ints(40)...)
		sink := shardflowtest.NewSink[int]()
		pl := shardflow.ByKey(shardflow.Source[int](src, log.options, quiet), 4, func(v int) string { return strconv.Itoa(v % 8) }).
			Map(b.decode, shardflow.WithName("decode")).Sink(sink)
		ctx, cancel := context.WithCancel(t.Context())
		errc := runAsync(ctx, pl)

		since := <-b.blocked
		r := waitStall(t, log, since)
		if r.Stage != "decode" || r.Position.SequenceNumber != "5" {
			t.Errorf("report = %+v; want stage decode at sequence number 5", r)
		}
		if !strings.Contains(r.Detail, "blockOnFifth") || !strings.Contains(r.Detail, "key worker") {
			t.Errorf("detail %q does not name the blocked handler and its key worker", r.Detail)
		}
		// The workers of the other keys went on: only the keys of 5's
		// worker wait behind it.
		if got := sink.Items(); len(got) == 0 || slices.Max(got) < 40 {
			t.Errorf("the sink got %v while one key was blocked; want the other workers' values up to 40", got)
		}
		close(b.release)
		if err := sink.WaitFor(ctx, 40); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("Run: %v", err)
		}
	})
}

// A Batch after ByKey ships on its linger, from each worker's own timer,
// while the shard goes on (no drain).
func TestBatchAfterByKeyShipsOnItsLinger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Follow = true }).
			AddShard("shard-0", ints(40)...)
		sink := shardflowtest.NewSink[[]int]()
		keyed := shardflow.ByKey(shardflow.Source[int](src, quiet), 4, func(v int) string { return strconv.Itoa(v % 8) })
		pl := shardflow.Batch(keyed, shardflow.BatchOptions[int]{MaxCount: 100, Linger: time.Second}).Sink(sink)
		ctx, cancel := context.WithCancel(t.Context())
		errc := runAsync(ctx, pl)
		synctest.Wait()
		if got := sink.Items(); len(got) != 0 {
			t.Fatalf("batches before the linger: %v; want none", got)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		total := 0
		for _, b := range sink.Items() {
			total += len(b)
		}
		if n := len(sink.Items()); n < 2 || n > 4 || total != 40 {
			t.Errorf("after the linger: %d batches of %d values; want one per busy worker (2 to 4), 40 values", n, total)
		}
		if st := pl.Status(); len(st.Shards) != 1 || st.Shards[0].Checkpoint.SequenceNumber != "40" {
			t.Errorf("status = %+v; want the shard checkpointed at 40", st)
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("Run: %v", err)
		}
	})
}

func TestByKeyKeyThatPanicsFailsItsRecord(t *testing.T) {
	src := shardflowtest.NewSource[int]("s").AddShard("shard-0", 1, 2, 3)
	err := shardflow.ByKey(shardflow.Source[int](src, quiet), 2, func(v int) string {
		if v == 2 {
			panic("no key")
		}
		return strconv.Itoa(v)
	}, shardflow.WithName("route")).Sink(shardflowtest.NewSink[int]()).Run(t.Context())
	se, ok := errors.AsType[*shardflow.StageError](err)
	pe, isPanic := errors.AsType[*shardflow.PanicError](err)
	if !ok || se.Stage != "route" || se.Position.SequenceNumber != "2" || !isPanic || pe.Value != "no key" {
		t.Errorf("Run = %v; want a *StageError of route at 2 wrapping the key's panic", err)
	}
}
