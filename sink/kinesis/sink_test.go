package kinesissink

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/retry"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
)

func TestNewRejectsBadOptions(t *testing.T) {
	t.Parallel()
	f := newFake(t, 1)
	tests := []struct {
		name  string
		field string
		fn    func(*Options)
	}{
		{"more than 500 entries per request", "Options.MaxRequestEntries", func(o *Options) { o.MaxRequestEntries = 501 }},
		{"negative entries per request", "Options.MaxRequestEntries", func(o *Options) { o.MaxRequestEntries = -1 }},
		{"record size past 10 MiB", "Options.MaxRecordBytes", func(o *Options) { o.MaxRecordBytes = 10<<20 + 1 }},
		{"request smaller than a record", "Options.MaxRequestBytes", func(o *Options) { o.MaxRequestBytes = 1000 }},
		{"request past 10 MiB", "Options.MaxRequestBytes", func(o *Options) { o.MaxRequestBytes = 11 << 20 }},
		{"negative request slots", "Options.MaxInFlight", func(o *Options) { o.MaxInFlight = -1 }},
		{"buffer smaller than a record", "Options.MaxBufferedBytes", func(o *Options) { o.MaxBufferedBytes = 10 }},
		{"negative buffered records", "Options.MaxBufferedRecords", func(o *Options) { o.MaxBufferedRecords = -1 }},
		{"negative attempts", "Options.Retry.MaxAttempts", func(o *Options) { o.Retry.MaxAttempts = -1 }},
		{"negative retry timeout", "Options.Retry.Timeout", func(o *Options) { o.Retry.Timeout = -time.Second }},
		{"negative TTL", "Options.RecordTTL", func(o *Options) { o.RecordTTL = -time.Second }},
		{"negative backoff", "Options.Retry.InitialInterval", func(o *Options) { o.Retry.InitialInterval = -1 }},
		{"negative max backoff", "Options.Retry.MaxInterval", func(o *Options) { o.Retry.MaxInterval = -1 }},
		{"backoff multiplier below 1", "Options.Retry.Multiplier", func(o *Options) { o.Retry.Multiplier = 0.5 }},
		{"aggregate larger than a record", "Options.AggregateMaxBytes", func(o *Options) { o.Aggregate = true; o.AggregateMaxBytes = 2 << 20 }},
		{"negative aggregate size", "Options.AggregateMaxBytes", func(o *Options) { o.Aggregate = true; o.AggregateMaxBytes = -1 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(f, testStream, tc.fn)
			ce, ok := errors.AsType[*shardflow.ConfigError](err)
			if !ok || ce.Field != tc.field {
				t.Errorf("New error = %v, want a *ConfigError for %s", err, tc.field)
			}
		})
	}
	if _, err := New(nil, testStream); err == nil {
		t.Error("New with a nil client returned no error")
	}
	if _, err := NewProducer(f, ""); err == nil {
		t.Error("NewProducer with no stream returned no error")
	}
}

func TestInvalidEntriesAreRefusedBeforeAnyCall(t *testing.T) {
	t.Parallel()
	max128 := "340282366920938463463374607431768211455"
	tests := []struct {
		name  string
		e     Entry
		field string // "" when valid
	}{
		{"empty partition key", Entry{Data: []byte("x")}, "PartitionKey"},
		{"nil data", Entry{PartitionKey: "k"}, "Data"},
		{"empty data", Entry{Data: []byte{}, PartitionKey: "k"}, "Data"},
		{"257-character partition key", Entry{Data: []byte("x"), PartitionKey: strings.Repeat("k", 257)}, "PartitionKey"},
		{"256 two-byte characters are fine", Entry{Data: []byte("x"), PartitionKey: strings.Repeat("é", 256)}, ""},
		{"invalid UTF-8 key", Entry{Data: []byte("x"), PartitionKey: "\xff"}, "PartitionKey"},
		{"data and key past 1 MiB", Entry{Data: make([]byte, 1<<20), PartitionKey: "k"}, "Data"},
		{"data and key exactly 1 MiB", Entry{Data: make([]byte, 1<<20-1), PartitionKey: "k"}, ""},
		{"explicit hash key 2^128-1", Entry{Data: []byte("x"), PartitionKey: "k", ExplicitHashKey: max128}, ""},
		{"explicit hash key 2^128", Entry{Data: []byte("x"), PartitionKey: "k", ExplicitHashKey: "340282366920938463463374607431768211456"}, "ExplicitHashKey"},
		{"negative explicit hash key", Entry{Data: []byte("x"), PartitionKey: "k", ExplicitHashKey: "-1"}, "ExplicitHashKey"},
		{"explicit hash key with a leading zero", Entry{Data: []byte("x"), PartitionKey: "k", ExplicitHashKey: "01"}, "ExplicitHashKey"},
		{"hexadecimal explicit hash key", Entry{Data: []byte("x"), PartitionKey: "k", ExplicitHashKey: "ff"}, "ExplicitHashKey"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, 1)
			s, err := New(f, testStream, func(o *Options) { o.Linger = time.Hour })
			if err != nil {
				t.Fatal(err)
			}
			p, err := NewProducer(f, testStream, func(o *Options) { o.Linger = time.Hour })
			if err != nil {
				t.Fatal(err)
			}
			var acked atomic.Int32
			werr := s.Write(t.Context(), tc.e, shardflow.Ack{})
			perr := p.PutEntry(t.Context(), tc.e, func(Result) { acked.Add(1) })
			for what, err := range map[string]error{"Sink.Write": werr, "Producer.PutEntry": perr} {
				if tc.field == "" {
					if err != nil {
						t.Errorf("%s: %v, want nil", what, err)
					}
					continue
				}
				ve, ok := errors.AsType[*ValidationError](err)
				if !ok || ve.Field != tc.field {
					t.Errorf("%s error = %v, want a *ValidationError for %s", what, err, tc.field)
				}
			}
			if tc.field != "" && !retry.IsPermanent(werr) {
				t.Errorf("Sink.Write error %v is not permanent", werr)
			}
			if n := f.Calls("PutRecords"); n != 0 {
				t.Errorf("PutRecords called %d times before any flush", n)
			}
			_ = s.Close(t.Context())
			_ = p.Close(t.Context())
			if tc.field != "" && f.Calls("PutRecords") != 0 {
				t.Errorf("an invalid entry was sent")
			}
		})
	}
}

// apiErr is an AWS API error with a code, as the SDK returns them.
type apiErr struct{ code string }

func (e *apiErr) Error() string     { return e.code + ": injected" }
func (e *apiErr) ErrorCode() string { return e.code }

func TestEveryAcceptedRecordEndsInExactlyOneOutcome(t *testing.T) {
	t.Parallel()
	const n = 1500
	tests := []struct {
		name        string
		failEntry   func(i int64, e types.PutRecordsRequestEntry) string
		inject      func(call int64) error
		wantWritten int // -1: all
		wantCode    string
	}{
		{name: "every 3rd entry throttled", wantWritten: n,
			failEntry: func(i int64, _ types.PutRecordsRequestEntry) string {
				if i%3 == 0 {
					return "ProvisionedThroughputExceededException"
				}
				return ""
			}},
		{name: "every 3rd entry an internal failure", wantWritten: n,
			failEntry: func(i int64, _ types.PutRecordsRequestEntry) string {
				if i%3 == 1 {
					return "InternalFailure"
				}
				return ""
			}},
		{name: "every other request throttled as a whole", wantWritten: n,
			inject: func(call int64) error {
				if call%2 == 0 {
					return &types.ProvisionedThroughputExceededException{}
				}
				return nil
			}},
		{name: "network errors and 5xx", wantWritten: n,
			inject: func(call int64) error {
				switch call % 4 {
				case 0:
					return errors.New("connection reset by peer")
				case 1:
					return &apiErr{code: "InternalFailure"}
				}
				return nil
			}},
		{name: "a non-retryable entry code fails the entry at once", wantWritten: n - n/10, wantCode: "InvalidArgumentException",
			failEntry: func(_ int64, e types.PutRecordsRequestEntry) string {
				if e.Data[len(e.Data)-1] == '0' {
					return "InvalidArgumentException"
				}
				return ""
			}},
		{name: "access denied fails every record at once", wantWritten: 0,
			inject: func(int64) error { return &apiErr{code: "AccessDeniedException"} }},
		{name: "KMS disabled fails every record at once", wantWritten: 0,
			inject: func(int64) error { return &types.KMSDisabledException{} }},
		{name: "resource not found fails every record at once", wantWritten: 0,
			inject: func(int64) error { return &types.ResourceNotFoundException{} }},
		{name: "endless throttling runs out of attempts", wantWritten: 0,
			failEntry: func(int64, types.PutRecordsRequestEntry) string { return "ProvisionedThroughputExceededException" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 4)
				var entries, calls atomic.Int64
				if tc.failEntry != nil {
					f.FailEntries(func(_ string, e types.PutRecordsRequestEntry) string {
						return tc.failEntry(entries.Add(1), e)
					})
				}
				if tc.inject != nil {
					f.InjectError(func(op string, _ any) error {
						if op != "PutRecords" {
							return nil
						}
						return tc.inject(calls.Add(1))
					})
				}
				p, err := NewProducer(f, testStream, func(o *Options) { o.Retry.MaxAttempts = 12 })
				if err != nil {
					t.Fatal(err)
				}
				out := newOutcomes()
				for i := range n {
					if err := p.PutEntry(t.Context(), Entry{Data: []byte(recData(i)), PartitionKey: recData(i % 97)}, out.done); err != nil {
						t.Fatal(err)
					}
				}
				if err := p.Close(t.Context()); err != nil {
					t.Fatalf("Close: %v", err)
				}
				written, failed := out.check(t, n)
				if written != tc.wantWritten || written+failed != n {
					t.Errorf("written %d, failed %d; want %d written of %d", written, failed, tc.wantWritten, n)
				}
				// What was written is in the stream exactly once, and
				// nothing else is.
				seen := make(map[string]int)
				for _, r := range storedRecords(t, f) {
					seen[string(r.Data)]++
				}
				for data, rs := range out.results {
					want := 0
					if rs[0].Err == nil {
						want = 1
					}
					if seen[data] != want {
						t.Errorf("record %s stored %d times, want %d", data, seen[data], want)
					}
					if rs[0].Err == nil && (rs[0].ShardID == "" || rs[0].SequenceNumber == "") {
						t.Errorf("record %s written without shard and sequence number: %+v", data, rs[0])
					}
					if pe, ok := errors.AsType[*PutError](rs[0].Err); rs[0].Err != nil && (!ok || (tc.wantCode != "" && pe.ErrorCode != tc.wantCode)) {
						t.Errorf("record %s failed with %v, want a *PutError with code %q", data, rs[0].Err, tc.wantCode)
					}
				}
			})
		})
	}
}

func TestRetriesResendOnlyTheFailedEntries(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 2)
		var log callLog
		f.InjectError(func(op string, in any) error { log.hook(op, in); return nil })
		failed := map[string]bool{}
		f.FailEntries(func(_ string, e types.PutRecordsRequestEntry) string {
			d := string(e.Data)
			if (d == recData(1) || d == recData(5)) && !failed[d] {
				failed[d] = true
				return "ProvisionedThroughputExceededException"
			}
			return ""
		})
		p, _ := NewProducer(f, testStream)
		for i := range 8 {
			if err := p.Put(t.Context(), []byte(recData(i)), "k"); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		calls, _ := log.snapshot()
		want := [][]string{
			{recData(0), recData(1), recData(2), recData(3), recData(4), recData(5), recData(6), recData(7)},
			{recData(1), recData(5)},
		}
		if diff := cmp.Diff(want, calls); diff != "" {
			t.Errorf("PutRecords calls mismatch (-want +got):\n%s", diff)
		}
		if err := p.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
	})
}

func TestRequestsStayWithinEntryAndByteLimits(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 3)
		var log callLog
		f.InjectError(func(op string, in any) error { log.hook(op, in); return nil })
		p, _ := NewProducer(f, testStream)
		// 1,200 small records, then 60 records of 300 KiB (18 MiB in all).
		for i := range 1200 {
			if err := p.Put(t.Context(), []byte(recData(i)), recData(i)); err != nil {
				t.Fatal(err)
			}
		}
		big := make([]byte, 300<<10)
		for i := range 60 {
			if err := p.Put(t.Context(), big, recData(i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		calls, sizes := log.snapshot()
		total := 0
		for i, c := range calls {
			total += len(c)
			if len(c) > 500 || sizes[i] > 5<<20 {
				t.Errorf("request %d: %d entries, %d bytes; limits are 500 and %d", i, len(c), sizes[i], 5<<20)
			}
		}
		if total != 1260 {
			t.Errorf("requests carried %d entries, want 1260", total)
		}
		if len(calls) < 6 {
			t.Errorf("%d requests; 1,200 records and 18 MiB need at least 6", len(calls))
		}
	})
}

func TestLingerAndFlushTiming(t *testing.T) {
	t.Parallel()
	t.Run("a lone record is sent after the linger", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(t, 1)
			s, _ := New(f, testStream)
			start := time.Now()
			if err := s.Write(t.Context(), Entry{Data: []byte("a"), PartitionKey: "k"}, shardflow.Ack{}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(499 * time.Millisecond)
			synctest.Wait()
			if n := f.Calls("PutRecords"); n != 0 {
				t.Fatalf("after 499ms: %d PutRecords calls, want 0", n)
			}
			time.Sleep(time.Millisecond)
			synctest.Wait()
			if n := f.Calls("PutRecords"); n != 1 {
				t.Fatalf("after 500ms: %d PutRecords calls, want 1", n)
			}
			if got := time.Since(start); got != 500*time.Millisecond {
				t.Errorf("sent after %v", got)
			}
			if err := s.Close(t.Context()); err != nil {
				t.Fatal(err)
			}
		})
	})
	t.Run("a full request goes at once", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(t, 1)
			s, _ := New(f, testStream)
			for i := range 500 {
				if err := s.Write(t.Context(), Entry{Data: []byte(recData(i)), PartitionKey: "k"}, shardflow.Ack{}); err != nil {
					t.Fatal(err)
				}
			}
			synctest.Wait()
			if n := f.Calls("PutRecords"); n != 1 {
				t.Fatalf("%d PutRecords calls with no time passed, want 1", n)
			}
			_ = s.Close(t.Context())
		})
	})
	t.Run("Flush sends at once and waits for the acks", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(t, 1)
			s, _ := New(f, testStream)
			var acked atomic.Int32
			for i := range 10 {
				ack := ackFunc(func(err error) {
					if err == nil {
						acked.Add(1)
					}
				})
				if err := s.writeWith(t.Context(), Entry{Data: []byte(recData(i)), PartitionKey: "k"}, ack); err != nil {
					t.Fatal(err)
				}
			}
			start := time.Now()
			if err := s.Flush(t.Context()); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d != 0 || acked.Load() != 10 {
				t.Errorf("Flush took %v and saw %d acks; want 0s and 10", d, acked.Load())
			}
			if err := s.Flush(t.Context()); err != nil {
				t.Errorf("second Flush: %v", err)
			}
			if err := s.Close(t.Context()); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(t.Context()); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if err := s.Flush(t.Context()); !errors.Is(err, ErrClosed) {
				t.Errorf("Flush after Close = %v, want ErrClosed", err)
			}
		})
	})
	t.Run("a negative linger sends at once", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(t, 1)
			s, _ := New(f, testStream, func(o *Options) { o.Linger = -1 })
			_ = s.Write(t.Context(), Entry{Data: []byte("a"), PartitionKey: "k"}, shardflow.Ack{})
			synctest.Wait()
			if n := f.Calls("PutRecords"); n != 1 {
				t.Errorf("%d PutRecords calls, want 1", n)
			}
			_ = s.Close(t.Context())
		})
	})
}

// ackFunc adapts a function to the callback path used by the
// Producer, so a Sink test can observe outcomes.
type ackFunc func(error)

// writeWith is Write with an outcome callback, for tests.
func (s *Sink) writeWith(ctx context.Context, v Entry, done ackFunc) error {
	return s.e.accept(ctx, v, shardflow.Ack{}, func(r Result) { done(r.Err) })
}

// slowClient delays every PutRecords by d, to make the sink fall behind.
type slowClient struct {
	*kinesisfake.Fake
	d        time.Duration
	onPut    func()
	inFlight atomic.Int32
	maxIn    atomic.Int32
}

func (c *slowClient) PutRecords(ctx context.Context, in *kinesis.PutRecordsInput, optFns ...func(*kinesis.Options)) (*kinesis.PutRecordsOutput, error) {
	n := c.inFlight.Add(1)
	defer c.inFlight.Add(-1)
	for {
		m := c.maxIn.Load()
		if n <= m || c.maxIn.CompareAndSwap(m, n) {
			break
		}
	}
	if c.onPut != nil {
		c.onPut()
	}
	select {
	case <-time.After(c.d):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return c.Fake.PutRecords(ctx, in, optFns...)
}

func TestMemoryStaysCappedUnderTenfoldOverload(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 2)
		// The client writes at most 4 requests of 50 records per 100ms:
		// 2,000 records/s. Ten writers offer 20,000 in about the time
		// 2,000 would take.
		c := &slowClient{Fake: f, d: 100 * time.Millisecond}
		const capRecords, capBytes = 300, 300 * 20
		p, err := NewProducer(c, testStream, func(o *Options) {
			o.MaxRequestEntries = 50
			o.MaxInFlight = 4
			o.MaxBufferedRecords = capRecords
			o.MaxBufferedBytes = max(capBytes, 1<<20) // at least MaxRecordBytes, default 1 MiB
			o.Linger = 10 * time.Millisecond
		})
		if err != nil {
			t.Fatal(err)
		}
		var peakRecords, peakBytes int
		c.onPut = func() {
			p.e.mu.Lock()
			peakRecords = max(peakRecords, p.e.bufRecords)
			peakBytes = max(peakBytes, p.e.bufBytes)
			p.e.mu.Unlock()
		}
		done := make(chan struct{})
		for w := range 10 {
			go func() {
				defer func() { done <- struct{}{} }()
				for i := range 2000 {
					if err := p.Put(t.Context(), []byte(recData(w*2000+i)), recData(i)); err != nil {
						t.Error(err)
						return
					}
					p.e.mu.Lock()
					if p.e.bufRecords > capRecords {
						t.Errorf("buffer holds %d records, cap %d", p.e.bufRecords, capRecords)
					}
					p.e.mu.Unlock()
				}
			}()
		}
		// While the buffer is full, Put gives up when its context ends.
		time.Sleep(50 * time.Millisecond)
		ctx, cancel := context.WithTimeout(t.Context(), time.Millisecond)
		err = p.Put(ctx, []byte("late"), "k")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Put into a full buffer with a 1ms deadline = %v, want DeadlineExceeded", err)
		}
		for range 10 {
			<-done
		}
		if err := p.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		if peakRecords > capRecords || peakRecords < capRecords-50 {
			t.Errorf("peak buffered records %d; want close to the cap of %d, never over", peakRecords, capRecords)
		}
		if m := c.maxIn.Load(); m > 4 {
			t.Errorf("%d requests in flight at once, MaxInFlight is 4", m)
		}
		if got := len(storedRecords(t, f)); got != 20000 {
			t.Errorf("%d records stored, want 20000", got)
		}
	})
}

func TestAFullBufferDoesNotWaitForTheLinger(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		fn   func(*Options)
	}{
		{"plain", func(*Options) {}},
		{"aggregated", func(o *Options) { o.Aggregate = true }},
		{"ordered", func(o *Options) { o.Ordered = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 2)
				p, err := NewProducer(f, testStream, func(o *Options) {
					tc.fn(o)
					o.Linger = time.Hour
					o.MaxBufferedRecords = 10
				})
				if err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				for i := range 100 {
					if err := p.Put(t.Context(), []byte(recData(i)), recData(i)); err != nil {
						t.Fatal(err)
					}
				}
				if d := time.Since(start); d != 0 {
					t.Errorf("100 puts through a buffer of 10 took %v; a full buffer must not wait for the linger", d)
				}
				if err := p.Close(t.Context()); err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}
