// Package batcher decides when a batch of values is due: when it holds
// MaxCount values, when it holds MaxBytes, or Linger after its first value
// arrived, whichever comes first. It is shaped like benthos' service.Batcher:
// Add reports whether the batch is due, UntilNext says when the linger runs
// out, Flush takes the batch, Close takes the last one.
//
// A Batcher owns no goroutine and no timer: the caller arms its own timer with
// UntilNext, so it can drive many batchers with one timer, and tests drive it
// with testing/synctest. It is not safe for concurrent use; callers guard it
// with their own lock.
package batcher

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrClosed is returned by Flush and Close after Close.
var ErrClosed = errors.New("batcher: closed")

// Policy bounds a batch.
type Policy struct {
	// MaxCount is the most values a batch holds. Must be positive.
	MaxCount int
	// MaxBytes is the most bytes (the sum of the sizes given to Add) a batch
	// holds. A value that would take the batch past it does not fit (see
	// Fits); a single value larger than MaxBytes is a batch of its own.
	// 0 means no byte limit.
	MaxBytes int
	// Linger is how long a batch waits for more values after its first one.
	// 0 makes every non-empty batch due at once.
	Linger time.Duration
}

func (p Policy) validate() error {
	switch {
	case p.MaxCount <= 0:
		return fmt.Errorf("batcher: MaxCount %d must be positive", p.MaxCount)
	case p.MaxBytes < 0:
		return fmt.Errorf("batcher: MaxBytes %d must not be negative", p.MaxBytes)
	case p.Linger < 0:
		return fmt.Errorf("batcher: Linger %v must not be negative", p.Linger)
	}
	return nil
}

// Batcher accumulates values of type T into one open batch.
type Batcher[T any] struct {
	p      Policy
	vals   []T
	bytes  int
	first  time.Time // when the first value of the open batch arrived
	closed bool
}

// New returns an empty batcher, or an error for an invalid policy.
func New[T any](p Policy) (*Batcher[T], error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	return &Batcher[T]{p: p}, nil
}

// Len returns the number of values in the open batch.
func (b *Batcher[T]) Len() int { return len(b.vals) }

// Bytes returns the summed size of the open batch.
func (b *Batcher[T]) Bytes() int { return b.bytes }

// Fits reports whether a value of size bytes can join the open batch without
// taking it past MaxCount or MaxBytes. An empty batch takes any value. When it
// reports false, Flush first, then Add.
func (b *Batcher[T]) Fits(size int) bool {
	if len(b.vals) == 0 {
		return true
	}
	if len(b.vals) >= b.p.MaxCount {
		return false
	}
	return b.p.MaxBytes == 0 || b.bytes+size <= b.p.MaxBytes
}

// Add appends v, of size bytes, to the open batch and reports whether the
// batch is now due because it is full (MaxCount values, or MaxBytes bytes, or
// no room left for even a zero-byte value). It does not check that v fits:
// ask Fits first. The linger clock starts at the first value.
func (b *Batcher[T]) Add(v T, size int) bool {
	if len(b.vals) == 0 {
		b.first = time.Now()
	}
	b.vals = append(b.vals, v)
	b.bytes += size
	return b.full()
}

func (b *Batcher[T]) full() bool {
	return len(b.vals) >= b.p.MaxCount || (b.p.MaxBytes > 0 && b.bytes >= b.p.MaxBytes)
}

// UntilNext returns how long until the open batch is due: 0 when it is due
// now (full, or its linger ran out). ok is false when the batch is empty, so
// nothing is due and no timer is needed.
func (b *Batcher[T]) UntilNext() (d time.Duration, ok bool) {
	if len(b.vals) == 0 {
		return 0, false
	}
	if b.full() {
		return 0, true
	}
	return max(0, b.p.Linger-time.Since(b.first)), true
}

// Flush takes the open batch, due or not, and starts a new one. It returns
// nil when the batch is empty. The returned slice belongs to the caller. ctx
// is accepted for the shape shared with batchers that do I/O; this one never
// blocks.
func (b *Batcher[T]) Flush(ctx context.Context) ([]T, error) {
	if b.closed {
		return nil, ErrClosed
	}
	return b.take(), nil
}

func (b *Batcher[T]) take() []T {
	if len(b.vals) == 0 {
		return nil
	}
	out := b.vals
	// The next batch is likely to be as large as this one.
	b.vals = make([]T, 0, min(cap(out), b.p.MaxCount))
	b.bytes = 0
	b.first = time.Time{}
	return out
}

// Close takes the last batch (nil if empty) and makes later calls of Flush
// and Close return ErrClosed. Add after Close is a caller bug; the values
// would never be taken.
func (b *Batcher[T]) Close(ctx context.Context) ([]T, error) {
	if b.closed {
		return nil, ErrClosed
	}
	b.closed = true
	return b.take(), nil
}
