package shardflow_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/shardflow/shardflow/internal/metrictest"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
)

// metricsReader is an SDK meter provider with a manual reader, for tests.
type metricsReader struct {
	*sdkmetric.MeterProvider
	r *sdkmetric.ManualReader
}

func newMetricsReader() *metricsReader {
	r, mp := metrictest.NewReader()
	return &metricsReader{MeterProvider: mp, r: r}
}

// points collects and returns every data point of the named instrument, by
// its attributes written as "k=v,k=v" (sorted by key); a histogram's is its
// count.
func (m *metricsReader) points(t *testing.T, name string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for p, v := range metrictest.Collect(t, m.r) {
		if p.Name == name {
			out[p.Attrs] = v
		}
	}
	return out
}

func (m *metricsReader) value(t *testing.T, name, attrs string) float64 {
	t.Helper()
	return m.points(t, name)[attrs]
}

// TestStageCountsAreExactAfterARun runs a known pipeline over two shards
// and checks every stage's in/out/dropped counts, the checkpoint saves, and
// that nothing failed or was retried.
func TestStageCountsAreExactAfterARun(t *testing.T) {
	const n = 3000
	mr := newMetricsReader()
	store := memory.New()
	src := shardflowtest.NewSource[int]("orders", func(o *shardflowtest.SourceOptions) { o.Store = store }).
		AddShard("s-0", ints(n)...).AddShard("s-1", ints(n)...)
	sink := shardflowtest.NewSink[string]()
	pl := shardflow.Source(src, func(o *shardflow.Options) { o.MeterProvider = mr }).
		Map(func(_ context.Context, v int) (int, error) { return 2 * v, nil }).
		Filter(func(_ context.Context, v int) (bool, error) { return v%3 != 0, nil }).
		FlatMap(func(_ context.Context, v int) ([]string, error) {
			if v%5 == 0 {
				return nil, nil // 2v is a multiple of 5 when v is: n/5 give none
			}
			return []string{fmt.Sprint(v), fmt.Sprint(v)}, nil
		}).
		Sink(sink)
	mustRun(t, pl)

	kept := n - n/3                             // the filter drops the multiples of 3
	none := n/5 - n/15                          // of the kept, the multiples of 5 give nothing
	out := 2 * (kept - none)                    // the others give two each
	for stage, want := range map[string][3]int{ // in, out, dropped, per shard pair
		"map#1":     {2 * n, 2 * n, 0},
		"filter#2":  {2 * n, 2 * kept, 2 * (n / 3)},
		"flatmap#3": {2 * kept, 2 * out, 0},
		"sink":      {2 * out, 2 * out, 0},
	} {
		attrs := "stage=" + stage + ",stream=orders"
		if got := mr.value(t, "shardflow.stage.records.in", attrs); got != float64(want[0]) {
			t.Errorf("%s records in = %v; want %d", stage, got, want[0])
		}
		if got := mr.value(t, "shardflow.stage.records.out", attrs); got != float64(want[1]) {
			t.Errorf("%s records out = %v; want %d", stage, got, want[1])
		}
		if got := mr.value(t, "shardflow.stage.records.dropped", attrs); got != float64(want[2]) {
			t.Errorf("%s records dropped = %v; want %d", stage, got, want[2])
		}
	}
	if got := len(sink.Items()); got != 2*out {
		t.Fatalf("the sink got %d values; want %d", got, 2*out)
	}
	if got := mr.value(t, "shardflow.checkpoint.saves", "stream=orders"); got < 2 {
		t.Errorf("checkpoint saves = %v; want one final save per shard at least", got)
	}
	// The counters of rare events exist at 0 (so that increase() sees the
	// first one), for every stage.
	for _, name := range []string{"shardflow.stage.records.failed", "shardflow.stage.records.dead_lettered",
		"shardflow.stage.retries"} {
		p := mr.points(t, name)
		for _, stage := range []string{"map#1", "filter#2", "flatmap#3", "sink"} {
			if v, ok := p["stage="+stage+",stream=orders"]; !ok || v != 0 {
				t.Errorf("%s{%s} = %v (present: %v); want 0", name, stage, v, ok)
			}
		}
		if len(p) != 4 {
			t.Errorf("%s = %v; want the four stages at 0", name, p)
		}
	}
	if p := mr.points(t, "shardflow.checkpoint.failures"); len(p) != 1 || p["stream=orders"] != 0 {
		t.Errorf("checkpoint failures = %v; want orders at 0", p)
	}
	if p := mr.points(t, "shardflow.stalls"); len(p) != 0 {
		t.Errorf("stalls = %v; want none", p)
	}
	// Each shard times its first call, then at most one per 10ms.
	if got := mr.value(t, "shardflow.stage.handler.duration", "stage=map#1,stream=orders"); got < 2 || got > float64(2*n) {
		t.Errorf("timed map calls = %v; want from 2 to %d", got, 2*n)
	}
}

// TestFailuresRetriesAndDeadLettersAreCounted checks the counters of
// rarer outcomes: a handler that fails once then succeeds (a retry), one
// that fails for good into the dead-letter handler, and a sink that fails
// a record through its Ack into the dead-letter handler.
func TestFailuresRetriesAndDeadLettersAreCounted(t *testing.T) {
	mr := newMetricsReader()
	src := shardflowtest.NewSource[int]("s").AddShard("a", ints(20)...)
	failedOnce := map[int]bool{}
	sink := shardflowtest.NewSink(func(o *shardflowtest.SinkOptions[int]) {
		o.AckErr = func(v int) error {
			if v == 9 {
				return errors.New("refused")
			}
			return nil
		}
	})
	quarantine := func(context.Context, int, error) error { return nil }
	pl := shardflow.Source(src, func(o *shardflow.Options) {
		o.MeterProvider = mr
		o.Retry = shardflow.RetryPolicy{MaxAttempts: 2, InitialInterval: 1}
	}).DeadLetter(quarantine).
		Map(func(_ context.Context, v int) (int, error) {
			switch {
			case v == 5 && !failedOnce[v]: // once, then it succeeds
				failedOnce[v] = true
				return 0, errors.New("transient")
			case v == 7:
				return 0, errors.New("bad record")
			}
			return v + 1, nil
		}).DeadLetter(quarantine).Sink(sink)
	mustRun(t, pl)

	attrs := func(stage string) string { return "stage=" + stage + ",stream=s" }
	checks := []struct {
		name, stage string
		want        float64
	}{
		{"shardflow.stage.retries", "map#1", 2}, // v=5 once, v=7 once (2 attempts)
		{"shardflow.stage.records.dead_lettered", "map#1", 1},
		{"shardflow.stage.records.in", "map#1", 20},
		{"shardflow.stage.records.out", "map#1", 19},
		{"shardflow.stage.records.in", "sink", 19},
		{"shardflow.stage.records.out", "sink", 18},
		{"shardflow.stage.records.dead_lettered", "sink", 1}, // 9 (from 8) refused through its Ack
	}
	for _, c := range checks {
		if got := mr.value(t, c.name, attrs(c.stage)); got != c.want {
			t.Errorf("%s{%s} = %v; want %v", c.name, c.stage, got, c.want)
		}
	}
	for attrs, v := range mr.points(t, "shardflow.stage.records.failed") {
		if v != 0 {
			t.Errorf("failed{%s} = %v; want 0 (the dead-letter handler took them)", attrs, v)
		}
	}
}
