package kinesissink

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/kpl"
	"github.com/shardflow/shardflow/internal/telemetry"
	"github.com/shardflow/shardflow/shardflowtest"
)

// testMeter is an SDK meter provider read by hand.
type testMeter struct {
	*sdkmetric.MeterProvider
	reader *sdkmetric.ManualReader
}

func newTestMeter() *testMeter {
	r := sdkmetric.NewManualReader()
	return &testMeter{MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(r)), reader: r}
}

// points is one collection: the data points of every instrument, by name
// and attribute set.
type points map[string]map[attribute.Distinct]any

func (m *testMeter) collect(t testing.TB) points {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := m.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := make(points)
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != telemetry.Scope {
			t.Errorf("metrics of scope %q, want %q", sm.Scope.Name, telemetry.Scope)
		}
		for _, mt := range sm.Metrics {
			byAttrs := make(map[attribute.Distinct]any)
			switch d := mt.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					byAttrs[p.Attributes.Equivalent()] = p
				}
			case metricdata.Histogram[int64]:
				for _, p := range d.DataPoints {
					byAttrs[p.Attributes.Equivalent()] = p
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					byAttrs[p.Attributes.Equivalent()] = p
				}
			default:
				t.Errorf("metric %s: unexpected data %T", mt.Name, mt.Data)
			}
			if len(byAttrs) > 0 {
				out[mt.Name] = byAttrs
			}
		}
	}
	return out
}

func streamAttrs() attribute.Set { return telemetry.Stream(testStream) }

// sum is the value of the sum named name at attrs; ok is false when it has
// no such data point.
func (p points) sum(name string, attrs attribute.Set) (v int64, ok bool) {
	dp, ok := p[name][attrs.Equivalent()].(metricdata.DataPoint[int64])
	return dp.Value, ok
}

// sums returns every data point of the sum named name, by error_code (""
// when the point has none).
func (p points) sums(t testing.TB, name string) map[string]int64 {
	t.Helper()
	out := make(map[string]int64)
	for _, dp := range p[name] {
		d := dp.(metricdata.DataPoint[int64])
		code, _ := d.Attributes.Value(telemetry.KeyErrorCode)
		if want := attribute.NewSet(telemetry.KeyStream.String(testStream), telemetry.KeyErrorCode.String(code.AsString())); !d.Attributes.Equals(&want) {
			t.Errorf("%s has attributes %v, want stream %q and error_code only", name, d.Attributes.ToSlice(), testStream)
		}
		out[code.AsString()] = d.Value
	}
	return out
}

// histogram returns the count and sum of the histogram named name at the
// stream's attributes.
func (p points) histogram(name string) (count uint64, sum float64) {
	set := streamAttrs()
	switch dp := p[name][set.Equivalent()].(type) {
	case metricdata.HistogramDataPoint[int64]:
		return dp.Count, float64(dp.Sum)
	case metricdata.HistogramDataPoint[float64]:
		return dp.Count, dp.Sum
	}
	return 0, 0
}

// counts are the counters and gauges of one collection at the stream's
// attributes (-1: no data point).
type counts struct {
	Records, Bytes, Retries     int64
	BufferedRecords, BufferedBy int64
	PutCalls, PutEntries        int64 // from the histograms: count, and sum of entries
	DurationCount               int64
	Failed, GivenUp, CallErrors map[string]int64
}

func (p points) counts(t testing.TB) counts {
	t.Helper()
	get := func(name string) int64 {
		if v, ok := p.sum(name, streamAttrs()); ok {
			return v
		}
		return -1
	}
	calls, entries := p.histogram(metricCallEntries)
	durations, _ := p.histogram(metricCallDuration)
	return counts{
		Records: get(metricRecords), Bytes: get(metricBytes), Retries: get(metricRetries),
		BufferedRecords: get(metricBufRecords), BufferedBy: get(metricBufBytes),
		PutCalls: int64(calls), PutEntries: int64(entries), DurationCount: int64(durations),
		Failed: p.sums(t, metricFailedEntries), GivenUp: p.sums(t, metricGivenUp), CallErrors: p.sums(t, metricCallErrors),
	}
}

func TestMetricsOfARunCountEveryRecordAndRequest(t *testing.T) {
	t.Parallel()
	const n = 400 // fits in one request: nothing is sent before Flush
	modes := []struct {
		name string
		fn   func(*Options)
	}{
		{"plain", func(*Options) {}},
		{"aggregate", func(o *Options) { o.Aggregate = true }},
		{"ordered", func(o *Options) { o.Ordered = true }},
		{"ordered aggregate", func(o *Options) { o.Ordered = true; o.Aggregate = true }},
	}
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 4)
				m := newTestMeter()
				p, err := NewProducer(f, testStream, mode.fn, func(o *Options) {
					o.MeterProvider = m
					o.Linger = time.Hour
				})
				if err != nil {
					t.Fatal(err)
				}
				bytes := int64(0)
				for i := range n {
					data, key := recData(i), fmt.Sprintf("key-%d", i%97)
					bytes += int64(len(data) + len(key))
					if err := p.Put(t.Context(), []byte(data), key); err != nil {
						t.Fatal(err)
					}
				}
				empty := map[string]int64{}
				want := counts{Records: -1, Bytes: -1, Retries: -1, BufferedRecords: n, BufferedBy: bytes,
					Failed: empty, GivenUp: empty, CallErrors: empty}
				if diff := cmp.Diff(want, m.collect(t).counts(t)); diff != "" || f.Calls("PutRecords") != 0 {
					t.Errorf("metrics before Flush, after %d PutRecords calls, mismatch (-want +got):\n%s", f.Calls("PutRecords"), diff)
				}
				if err := p.Flush(t.Context()); err != nil {
					t.Fatal(err)
				}
				calls, entries := int64(f.Calls("PutRecords")), int64(len(storedRecords(t, f)))
				want = counts{Records: n, Bytes: bytes, Retries: -1, BufferedRecords: 0, BufferedBy: 0,
					PutCalls: calls, PutEntries: entries, DurationCount: calls,
					Failed: empty, GivenUp: empty, CallErrors: empty}
				if diff := cmp.Diff(want, m.collect(t).counts(t)); diff != "" {
					t.Errorf("metrics after Flush mismatch (-want +got):\n%s", diff)
				}
				if mode.fn(&Options{}); p.e.o.Aggregate && entries >= n {
					t.Errorf("%d entries sent for %d records; aggregation sent no fewer", entries, n)
				} else if !p.e.o.Aggregate && entries != n {
					t.Errorf("%d entries sent for %d records; want one each", entries, n)
				}
				if err := p.Close(t.Context()); err != nil {
					t.Fatal(err)
				}
				want.BufferedRecords, want.BufferedBy = -1, -1
				if diff := cmp.Diff(want, m.collect(t).counts(t)); diff != "" {
					t.Errorf("metrics after Close (no buffered gauges any more) mismatch (-want +got):\n%s", diff)
				}
			})
		})
	}
}

func TestMetricsCountRefusedEntriesRetriesAndRecordsGivenUp(t *testing.T) {
	t.Parallel()
	const n = 20
	// failures says how the entries of record i fail, attempt after
	// attempt; an empty code is success.
	tests := []struct {
		name     string
		ordered  bool
		failures map[int][]string
		attempts int
		want     counts
	}{
		{
			name: "refused entries are counted by code, and retried once each",
			failures: map[int][]string{
				1: {"ProvisionedThroughputExceededException"},
				5: {"ProvisionedThroughputExceededException", "InternalFailure"},
				9: {"ProvisionedThroughputExceededException"},
				2: {"InternalFailure"},
				6: {"KMSThrottlingException"},
			},
			want: counts{Records: n, Retries: 6,
				Failed:  map[string]int64{"ProvisionedThroughputExceededException": 3, "InternalFailure": 2, "KMSThrottlingException": 1},
				GivenUp: map[string]int64{}},
		},
		{
			name:     "the same in ordered mode",
			ordered:  true,
			failures: map[int][]string{3: {"ProvisionedThroughputExceededException", "ProvisionedThroughputExceededException"}, 4: {"InternalFailure"}},
			want: counts{Records: n, Retries: 3,
				Failed:  map[string]int64{"ProvisionedThroughputExceededException": 2, "InternalFailure": 1},
				GivenUp: map[string]int64{}},
		},
		{
			name:     "a non-retryable code fails its record at once",
			failures: map[int][]string{7: {"InvalidArgumentException"}},
			want: counts{Records: n - 1, Retries: -1,
				Failed:  map[string]int64{"InvalidArgumentException": 1},
				GivenUp: map[string]int64{"InvalidArgumentException": 1}},
		},
		{
			name:     "a record out of attempts is given up with its last code",
			attempts: 3,
			failures: map[int][]string{0: {"InternalFailure", "ProvisionedThroughputExceededException", "ProvisionedThroughputExceededException"}},
			want: counts{Records: n - 1, Retries: 2,
				Failed:  map[string]int64{"ProvisionedThroughputExceededException": 2, "InternalFailure": 1},
				GivenUp: map[string]int64{"ProvisionedThroughputExceededException": 1}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 2)
				seen := map[string]int{} // attempts per record; the fake calls FailEntries under its lock
				f.FailEntries(func(_ string, e types.PutRecordsRequestEntry) string {
					d := string(e.Data)
					seen[d]++
					for i, codes := range tc.failures {
						if d == recData(i) && seen[d] <= len(codes) {
							return codes[seen[d]-1]
						}
					}
					return ""
				})
				m := newTestMeter()
				p, err := NewProducer(f, testStream, func(o *Options) {
					o.MeterProvider = m
					o.Ordered = tc.ordered
					o.Retry.MaxAttempts = tc.attempts
				})
				if err != nil {
					t.Fatal(err)
				}
				out := newOutcomes()
				for i := range n {
					if err := p.PutEntry(t.Context(), Entry{Data: []byte(recData(i)), PartitionKey: fmt.Sprint("k", i)}, out.done); err != nil {
						t.Fatal(err)
					}
				}
				if err := p.Close(t.Context()); err != nil {
					t.Fatal(err)
				}
				written, failed := out.check(t, n)
				got := m.collect(t).counts(t)
				calls := int64(f.Calls("PutRecords"))
				sent := int64(0)
				for _, c := range seen {
					sent += int64(c)
				}
				want := tc.want
				want.BufferedRecords, want.BufferedBy = -1, -1
				want.PutCalls, want.PutEntries, want.DurationCount = calls, sent, calls
				want.CallErrors = map[string]int64{}
				// Bytes are those of the records written; checked apart.
				want.Bytes = got.Bytes
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("metrics mismatch (-want +got):\n%s", diff)
				}
				if int64(written) != want.Records || int64(failed) != n-want.Records {
					t.Errorf("%d records written, %d failed; the metrics say %d written", written, failed, want.Records)
				}
				wantBytes := int64(0)
				for i := range n {
					if rs := out.results[recData(i)]; len(rs) == 1 && rs[0].Err == nil {
						wantBytes += int64(len(recData(i)) + len(fmt.Sprint("k", i)))
					}
				}
				if got.Bytes != wantBytes {
					t.Errorf("bytes = %d, want %d (data and key of the records written)", got.Bytes, wantBytes)
				}
			})
		})
	}
}

func TestMetricsCountFailedCalls(t *testing.T) {
	t.Parallel()
	const n = 10 // one request
	tests := []struct {
		name  string
		fails []error // the first calls' errors, in order
		want  counts
	}{
		{
			name: "a throttled call, a 5xx and a reset connection are counted by code and retried",
			fails: []error{&types.ProvisionedThroughputExceededException{Message: aws.String("slow down")},
				&types.InternalFailureException{Message: aws.String("oops")}, noResponse{}},
			want: counts{Records: n, Retries: 3 * n, PutCalls: 4, PutEntries: 4 * n, DurationCount: 4,
				GivenUp:    map[string]int64{},
				CallErrors: map[string]int64{"ProvisionedThroughputExceededException": 1, "InternalFailureException": 1, "other": 1}},
		},
		{
			name:  "a call no retry can fix fails every record",
			fails: []error{&types.ResourceNotFoundException{Message: aws.String("gone")}},
			want: counts{Records: -1, Bytes: -1, Retries: -1, PutCalls: 1, PutEntries: n, DurationCount: 1,
				GivenUp:    map[string]int64{"ResourceNotFoundException": n},
				CallErrors: map[string]int64{"ResourceNotFoundException": 1}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				calls := 0
				f.InjectError(func(op string, _ any) error {
					if op != "PutRecords" {
						return nil
					}
					if calls++; calls <= len(tc.fails) {
						return tc.fails[calls-1]
					}
					return nil
				})
				m := newTestMeter()
				p, err := NewProducer(f, testStream, func(o *Options) { o.MeterProvider = m })
				if err != nil {
					t.Fatal(err)
				}
				bytes := int64(0)
				for i := range n {
					bytes += int64(len(recData(i)) + len("k"))
					if err := p.Put(t.Context(), []byte(recData(i)), "k"); err != nil {
						t.Fatal(err)
					}
				}
				_ = p.Close(t.Context()) // the failures are the metrics'
				want := tc.want
				if want.Records > 0 {
					want.Bytes = bytes
				}
				want.BufferedRecords, want.BufferedBy = -1, -1
				want.Failed = map[string]int64{}
				if diff := cmp.Diff(want, m.collect(t).counts(t)); diff != "" {
					t.Errorf("metrics mismatch (-want +got):\n%s", diff)
				}
			})
		})
	}
}

func TestMetricsCountMisroutedAggregatesSentAgainAsRetries(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const perPhase = 1000
		f := newFake(t, 4)
		m := newTestMeter()
		p, err := NewProducer(f, testStream, func(o *Options) {
			o.MeterProvider = m
			o.Aggregate = true
			o.AggregateMaxBytes = 1 << 10
		})
		if err != nil {
			t.Fatal(err)
		}
		put := func(from, to int) {
			for i := from; i < to; i++ {
				if err := p.Put(t.Context(), []byte(recData(i)), fmt.Sprint("key-", i)); err != nil {
					t.Fatal(err)
				}
			}
		}
		put(0, perPhase)
		if err := p.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		// The sink's shard map still has shard 0 after the split: aggregates
		// predicted for it land on its children, and those holding records
		// of both are sent again.
		if _, err := f.SplitShard(t.Context(), &kinesis.SplitShardInput{StreamName: aws.String(testStream),
			ShardToSplit: aws.String("shardId-000000000000"), NewStartingHashKey: aws.String("42535295865117307932921825928971026432")}); err != nil {
			t.Fatal(err)
		}
		put(perPhase, 2*perPhase)
		if err := p.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		smap, err := loadShardMap(t.Context(), f, testStream)
		if err != nil {
			t.Fatal(err)
		}
		stray := int64(0) // aggregates stored on a shard that does not hold all their records
		for _, r := range storedRecords(t, f) {
			users, err := kpl.Decode(r.Data)
			if err != nil {
				continue // a plain record
			}
			for _, u := range users {
				if in, _ := smap.holds(r.shard, hashPartitionKey(u.PartitionKey)); !in {
					stray++
					break
				}
			}
		}
		got := m.collect(t).counts(t)
		if stray == 0 || got.Retries != stray || got.Records != 2*perPhase || len(got.GivenUp) != 0 || len(got.Failed) != 0 {
			t.Errorf("%d aggregates landed astray; metrics: %d retries, %d records written, given up %v, refused %v; want %d retries, %d written, none given up or refused",
				stray, got.Retries, got.Records, got.GivenUp, got.Failed, stray, 2*perPhase)
		}
	})
}

func TestMetricsGoToTheProviderSettledBeforeUse(t *testing.T) {
	t.Parallel()
	write := func(t *testing.T, s *Sink, data string) {
		t.Helper()
		done := make(chan error, 1)
		if err := s.writeWith(t.Context(), Entry{Data: []byte(data), PartitionKey: "k"}, func(err error) { done <- err }); err != nil {
			t.Fatal(err)
		}
		if err := s.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	records := func(m *testMeter) int64 {
		v, _ := m.collect(t).sum(metricRecords, streamAttrs())
		return v
	}
	t.Run("a sink with no provider of its own records through the pipeline's", func(t *testing.T) {
		pipeline := newTestMeter()
		s, _ := New(newFake(t, 1), testStream)
		s.UsePipelineMeterProvider(pipeline)
		write(t, s, "a")
		if got := records(pipeline); got != 1 {
			t.Errorf("the pipeline's provider counted %d records, want 1", got)
		}
		_ = s.Close(t.Context())
	})
	t.Run("a sink's own provider wins over the pipeline's", func(t *testing.T) {
		own, pipeline := newTestMeter(), newTestMeter()
		s, _ := New(newFake(t, 1), testStream, func(o *Options) { o.MeterProvider = own })
		s.UsePipelineMeterProvider(pipeline)
		write(t, s, "a")
		if got, other := records(own), records(pipeline); got != 1 || other != 0 {
			t.Errorf("own provider counted %d records, the pipeline's %d; want 1 and 0", got, other)
		}
		_ = s.Close(t.Context())
	})
	t.Run("a provider handed over after the first write takes over, gauges included", func(t *testing.T) {
		first, second := newTestMeter(), newTestMeter()
		s, _ := New(newFake(t, 1), testStream)
		s.UsePipelineMeterProvider(first)
		write(t, s, "a")
		s.UsePipelineMeterProvider(second)
		write(t, s, "b")
		write(t, s, "c")
		p1, p2 := first.collect(t), second.collect(t)
		r1, _ := p1.sum(metricRecords, streamAttrs())
		r2, _ := p2.sum(metricRecords, streamAttrs())
		_, g1 := p1.sum(metricBufRecords, streamAttrs())
		_, g2 := p2.sum(metricBufRecords, streamAttrs())
		if r1 != 1 || r2 != 2 || g1 || !g2 {
			t.Errorf("records counted %d then %d, buffered gauges on the first provider %v, on the second %v; want 1, 2, false, true", r1, r2, g1, g2)
		}
		_ = s.Close(t.Context())
	})
}

func TestMetricsOfASinkInAPipelineGoToThePipelinesProviderUnlessItHasItsOwn(t *testing.T) {
	t.Parallel()
	const n = 50
	for _, own := range []bool{false, true} {
		t.Run(fmt.Sprintf("own provider %v", own), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				pipeline, sinks := newTestMeter(), newTestMeter()
				f := newFake(t, 2)
				var entries []Entry
				for i := range n {
					entries = append(entries, Entry{Data: []byte(recData(i)), PartitionKey: recData(i)})
				}
				src := shardflowtest.NewSource[Entry]("in").AddShard("s", entries...)
				s, err := New(f, testStream, func(o *Options) {
					if own {
						o.MeterProvider = sinks
					}
				})
				if err != nil {
					t.Fatal(err)
				}
				err = shardflow.Source(src, func(o *shardflow.Options) {
					o.MeterProvider = pipeline
					o.Logger = slog.New(slog.DiscardHandler)
				}).Sink(s).Run(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				wantPipeline, wantOwn := int64(n), int64(0)
				if own {
					wantPipeline, wantOwn = 0, n
				}
				gotPipeline, _ := pipeline.collect(t).sum(metricRecords, streamAttrs())
				gotOwn, _ := sinks.collect(t).sum(metricRecords, streamAttrs())
				if gotPipeline != wantPipeline || gotOwn != wantOwn {
					t.Errorf("records written counted %d by the pipeline's provider, %d by the sink's own; want %d and %d",
						gotPipeline, gotOwn, wantPipeline, wantOwn)
				}
			})
		})
	}
}

func TestMetricsOfAProducerDroppedWithoutCloseEnd(t *testing.T) {
	m := newTestMeter()
	func() {
		p, err := NewProducer(newFake(t, 1), testStream, func(o *Options) { o.MeterProvider = m; o.Linger = -1 })
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Put(t.Context(), []byte("x"), "k"); err != nil {
			t.Fatal(err)
		}
		if err := p.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
	}()
	if _, ok := m.collect(t).sum(metricBufRecords, streamAttrs()); !ok {
		t.Fatal("no buffered gauge while the producer is alive")
	}
	// Once the producer is collected, its gauges report nothing: the
	// provider does not keep it alive.
	deadline := time.Now().Add(30 * time.Second)
	for {
		runtime.GC()
		if _, ok := m.collect(t).sum(metricBufRecords, streamAttrs()); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the buffered gauge of a dropped producer is still reported")
		}
		runtime.Gosched()
	}
}
