package batcher

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestNewRejectsBadPolicies(t *testing.T) {
	t.Parallel()
	for _, p := range []Policy{{MaxCount: 0}, {MaxCount: -1}, {MaxCount: 1, MaxBytes: -1}, {MaxCount: 1, Linger: -time.Second}} {
		if _, err := New[int](p); err == nil {
			t.Errorf("New(%+v) = nil error, want one", p)
		}
	}
}

func TestBatchIsDueWhenFullByCountOrBytes(t *testing.T) {
	t.Parallel()
	type step struct {
		size      int
		fits, due bool
	}
	tests := []struct {
		name  string
		p     Policy
		steps []step
	}{
		{"count limit", Policy{MaxCount: 3, Linger: time.Hour}, []step{
			{1, true, false}, {1, true, false}, {1, true, true}, {1, false, true},
		}},
		{"byte limit reached exactly", Policy{MaxCount: 100, MaxBytes: 10, Linger: time.Hour}, []step{
			{4, true, false}, {6, true, true},
		}},
		{"a value past the byte limit does not fit", Policy{MaxCount: 100, MaxBytes: 10, Linger: time.Hour}, []step{
			{4, true, false}, {7, false, false},
		}},
		{"an empty batch takes an oversized value, then is full", Policy{MaxCount: 100, MaxBytes: 10, Linger: time.Hour}, []step{
			{50, true, true},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := New[int](tc.p)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tc.steps {
				if got := b.Fits(s.size); got != s.fits {
					t.Fatalf("step %d: Fits(%d) = %v, want %v", i, s.size, got, s.fits)
				}
				if !s.fits {
					break
				}
				if got := b.Add(i, s.size); got != s.due {
					t.Fatalf("step %d: Add = %v, want %v", i, got, s.due)
				}
			}
		})
	}
}

func TestLingerRunsFromTheFirstValue(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b, _ := New[string](Policy{MaxCount: 10, Linger: 500 * time.Millisecond})
		if _, ok := b.UntilNext(); ok {
			t.Fatal("empty batcher reports a deadline")
		}
		b.Add("a", 1)
		time.Sleep(200 * time.Millisecond)
		b.Add("b", 1)
		if d, ok := b.UntilNext(); !ok || d != 300*time.Millisecond {
			t.Fatalf("UntilNext = %v, %v; want 300ms, true", d, ok)
		}
		time.Sleep(300 * time.Millisecond)
		if d, ok := b.UntilNext(); !ok || d != 0 {
			t.Fatalf("UntilNext after the linger = %v, %v; want 0, true", d, ok)
		}
		got, err := b.Flush(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"a", "b"}, got); diff != "" {
			t.Errorf("batch mismatch (-want +got):\n%s", diff)
		}
		// The next batch's clock starts at its own first value.
		time.Sleep(time.Second)
		b.Add("c", 1)
		if d, _ := b.UntilNext(); d != 500*time.Millisecond {
			t.Errorf("UntilNext of a new batch = %v, want 500ms", d)
		}
	})
}

func TestZeroLingerIsDueAtOnce(t *testing.T) {
	t.Parallel()
	b, _ := New[int](Policy{MaxCount: 10})
	b.Add(1, 1)
	if d, ok := b.UntilNext(); !ok || d != 0 {
		t.Errorf("UntilNext = %v, %v; want 0, true", d, ok)
	}
}

func TestFlushAndClose(t *testing.T) {
	t.Parallel()
	b, _ := New[int](Policy{MaxCount: 10, MaxBytes: 100, Linger: time.Second})
	if got, err := b.Flush(t.Context()); got != nil || err != nil {
		t.Fatalf("Flush of an empty batcher = %v, %v; want nil, nil", got, err)
	}
	b.Add(1, 10)
	b.Add(2, 10)
	got, _ := b.Flush(t.Context())
	if diff := cmp.Diff([]int{1, 2}, got); diff != "" {
		t.Errorf("Flush mismatch (-want +got):\n%s", diff)
	}
	if b.Len() != 0 || b.Bytes() != 0 {
		t.Errorf("after Flush: Len %d, Bytes %d; want 0, 0", b.Len(), b.Bytes())
	}
	b.Add(3, 10)
	got, err := b.Close(t.Context())
	if diff := cmp.Diff([]int{3}, got); diff != "" || err != nil {
		t.Errorf("Close = %v, %v; want [3], nil", got, err)
	}
	if _, err := b.Close(t.Context()); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close error = %v, want ErrClosed", err)
	}
	if _, err := b.Flush(t.Context()); !errors.Is(err, ErrClosed) {
		t.Errorf("Flush after Close error = %v, want ErrClosed", err)
	}
}

// BenchmarkAdd measures the batcher's cost per value: Fits, Add, and a Flush
// every 500 values, as the Kinesis sink uses it.
func BenchmarkAdd(b *testing.B) {
	type entry struct {
		data []byte
		key  string
	}
	bt, _ := New[entry](Policy{MaxCount: 500, MaxBytes: 5 << 20, Linger: 500 * time.Millisecond})
	e := entry{data: make([]byte, 100), key: "key"}
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		if !bt.Fits(103) {
			_, _ = bt.Flush(ctx)
		}
		if bt.Add(e, 103) {
			_, _ = bt.Flush(ctx)
		}
	}
}
