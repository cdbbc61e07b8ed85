package kinesissink

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow/internal/logtest"

	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/retry"
)

// resolved is what the engine made of Options, for comparison.
type resolved struct {
	MaxRequestEntries, MaxRequestBytes, MaxRecordBytes, MaxInFlight int
	MaxBufferedRecords, MaxBufferedBytes, AggregateMaxBytes         int
	Linger, RequestTimeout, RecordTTL                               time.Duration
	Retry                                                           retry.Policy
}

func resolvedOf(e *engine) resolved {
	o := e.o
	return resolved{o.MaxRequestEntries, o.MaxRequestBytes, o.MaxRecordBytes, o.MaxInFlight,
		o.MaxBufferedRecords, o.MaxBufferedBytes, o.AggregateMaxBytes,
		o.linger, o.requestTimeout, o.RecordTTL, o.retry}
}

func TestZeroOptionsValidateAndRunWithTheDocumentedDefaults(t *testing.T) {
	t.Parallel()
	documented := resolved{
		MaxRequestEntries: 500, MaxRequestBytes: 5 << 20, MaxRecordBytes: 1 << 20, MaxInFlight: 8,
		MaxBufferedRecords: 20000, MaxBufferedBytes: 64 << 20, AggregateMaxBytes: 50 << 10,
		Linger: 500 * time.Millisecond, RequestTimeout: 30 * time.Second, RecordTTL: 0,
		Retry: retry.Policy{MaxAttempts: 0, MaxElapsed: 5 * time.Minute, InitialInterval: 100 * time.Millisecond,
			MaxInterval: 5 * time.Second, Multiplier: 2},
	}
	modes := []struct {
		name string
		fn   func(*Options)
	}{
		{"plain, no option functions", nil},
		{"plain, Options{}", func(o *Options) { *o = Options{} }},
		{"aggregating", func(o *Options) { o.Aggregate = true }},
		{"ordered", func(o *Options) { o.Ordered = true }},
		{"ordered and aggregating", func(o *Options) { o.Ordered = true; o.Aggregate = true }},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 2)
				p, err := NewProducer(f, testStream, m.fn)
				if err != nil {
					t.Fatalf("NewProducer with zero options: %v", err)
				}
				if diff := cmp.Diff(documented, resolvedOf(p.e)); diff != "" {
					t.Errorf("resolved options mismatch (-documented +got):\n%s", diff)
				}
				var res Result
				start := time.Now()
				if err := p.PutEntry(t.Context(), Entry{Data: []byte("x"), PartitionKey: "k"}, func(r Result) { res = r }); err != nil {
					t.Fatal(err)
				}
				// The record lingers the default 500ms, then goes on its own.
				time.Sleep(499 * time.Millisecond)
				synctest.Wait()
				if n := f.Calls("PutRecords"); n != 0 {
					t.Errorf("%d PutRecords calls before the default linger of 500ms ran out, want 0", n)
				}
				time.Sleep(time.Millisecond)
				synctest.Wait()
				if n := f.Calls("PutRecords"); n != 1 || res.Err != nil || res.SequenceNumber == "" {
					t.Errorf("after %v: %d PutRecords calls, result %+v; want the record written by 1 call", time.Since(start), n, res)
				}
				if err := p.Close(t.Context()); err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}

func TestNegativeOptionsMeanNone(t *testing.T) {
	t.Parallel()
	f := newFake(t, 1)
	p, err := NewProducer(f, testStream, func(o *Options) { o.Linger = -1; o.RequestTimeout = -time.Second })
	if err != nil {
		t.Fatal(err)
	}
	if got := resolvedOf(p.e); got.Linger != 0 || got.RequestTimeout != 0 {
		t.Errorf("Linger -1 and RequestTimeout -1s resolved to linger %v and request timeout %v; want none (0) for both", got.Linger, got.RequestTimeout)
	}
	_ = p.Close(t.Context())
}

func TestCloseAndFlushReturnWhenTheirContextEnds(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"Sink", "Producer"} {
		t.Run(kind, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				c := &slowClient{Fake: f, d: time.Hour}
				e, err := newEngine(c, testStream, "test", []func(*Options){func(o *Options) { o.MaxRequestEntries = 10; o.MaxInFlight = 1 }})
				if err != nil {
					t.Fatal(err)
				}
				var flush, closeFn func(context.Context) error
				if kind == "Sink" {
					s := &Sink{e: e}
					flush, closeFn = s.Flush, s.Close
				} else {
					p := &Producer{e: e}
					flush, closeFn = p.Flush, p.Close
				}
				out := newOutcomes()
				for i := range 25 {
					if err := e.accept(t.Context(), Entry{Data: []byte(recData(i)), PartitionKey: "k"}, shardflow.Ack{}, out.done); err != nil {
						t.Fatal(err)
					}
				}
				ctx, cancel := context.WithTimeout(t.Context(), time.Second)
				err = flush(ctx)
				cancel()
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Flush with a 1s deadline against a server taking an hour = %v, want DeadlineExceeded", err)
				}
				if written, failed := out.count(); written+failed != 0 {
					t.Errorf("Flush that timed out decided %d records, want none: they are still being sent", written+failed)
				}
				ctx, cancel = context.WithTimeout(t.Context(), time.Second)
				start := time.Now()
				err = closeFn(ctx)
				cancel()
				if elapsed := time.Since(start); elapsed != time.Second {
					t.Errorf("Close with a 1s deadline returned after %v", elapsed)
				}
				if !errors.Is(err, ErrClosed) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "25 record(s) not written") {
					t.Errorf("Close = %v; want an error wrapping ErrClosed and the deadline, saying 25 records were not written", err)
				}
				if written, failed := out.check(t, 25); written != 0 || failed != 25 {
					t.Errorf("%d written, %d failed; want the 25 records failed", written, failed)
				}
			})
		})
	}
}

// count returns how many outcomes were reported, written and failed.
func (o *outcomes) count() (written, failed int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, rs := range o.results {
		for _, r := range rs {
			if r.Err == nil {
				written++
			} else {
				failed++
			}
		}
	}
	return written, failed
}

func TestSinkLogsThroughThePipelineLoggerUnlessGivenOne(t *testing.T) {
	t.Parallel()
	for _, own := range []bool{false, true} {
		name := map[bool]string{false: "no logger of its own: the pipeline's", true: "a logger of its own: kept"}[own]
		t.Run(name, func(t *testing.T) {
			var pipeline, mine logtest.Buffer
			f := newFake(t, 1)
			s, err := New(f, testStream, func(o *Options) {
				if own {
					o.Logger = slog.New(slog.NewTextHandler(&mine, nil))
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			var pl shardflow.PipelineLogger = s
			pl.UsePipelineLogger(slog.New(slog.NewTextHandler(&pipeline, nil)))
			if err := s.Close(t.Context()); err != nil {
				t.Fatal(err)
			}
			got, other := pipeline.String(), mine.String()
			if own {
				got, other = other, got
			}
			if !strings.Contains(got, "msg=closed") || strings.Count(got, "component=") != 2 || !strings.Contains(got, "component=kinesis.sink stream="+testStream) {
				t.Errorf("log %q; want the sink's lifecycle, scoped once with its component and stream", got)
			}
			if other != "" {
				t.Errorf("the other logger got %q, want nothing", other)
			}
		})
	}
}
