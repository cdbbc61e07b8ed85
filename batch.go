package shardflow

import (
	"context"
	"fmt"
	"reflect"
	"time"
)

// BatchOptions bound the batches of [Stream.Batch]. A batch is emitted when
// it holds MaxCount values, when adding a value would take it past MaxBytes,
// or Linger after its first value arrived, whichever comes first, and when
// the lane drains.
type BatchOptions[T any] struct {
	// MaxCount is the most values in a batch. Default: 100.
	MaxCount int
	// MaxBytes caps the summed Size of a batch's values; a single value larger
	// than MaxBytes travels alone. Default (0): no byte limit. Needs Size.
	MaxBytes int
	// Size returns the size of a value counted against MaxBytes.
	Size func(T) int
	// Linger is how long a batch waits for more values after its first one.
	// Default: 500ms. Must be positive: a batch always ships within Linger.
	Linger time.Duration
}

// Batch groups consecutive values of a shard into slices, for handlers that
// work better on many values at once. Batches never mix shards. The records
// of a batch are done when the batch is; if the batch fails, all of them do.
//
// E must be the stream's element type T; it is a type parameter of its own
// only because a method of Stream[T] returning Stream[[]T] would instantiate
// Stream[[][]T] and so on forever. Spell the options' type out and E follows:
//
//	orders.Batch(shardflow.BatchOptions[Order]{MaxCount: 50}) // *Stream[[]Order]
//
// A mismatch is reported by Run as a [*ConfigError].
func (s *Stream[T]) Batch[E any](o BatchOptions[E], opts ...StageOption) *Stream[[]E] {
	st, _ := newStage[T](s.p, "batch", false, opts)
	up, ok := any(s).(*Stream[E])
	if !ok {
		s.p.setErr(&ConfigError{Field: st.name, Reason: fmt.Sprintf(
			"BatchOptions are for %s, but the stream carries %s", reflect.TypeFor[E](), reflect.TypeFor[T]())})
		return &Stream[[]E]{p: s.p}
	}
	switch {
	case o.MaxCount < 0:
		s.p.setErr(&ConfigError{Field: st.name + " MaxCount", Reason: "negative"})
	case o.MaxBytes < 0:
		s.p.setErr(&ConfigError{Field: st.name + " MaxBytes", Reason: "negative"})
	case o.MaxBytes > 0 && o.Size == nil:
		s.p.setErr(&ConfigError{Field: st.name + " MaxBytes", Reason: "set without Size"})
	case o.Linger < 0:
		s.p.setErr(&ConfigError{Field: st.name + " Linger", Reason: "negative"})
	}
	if o.MaxCount == 0 {
		o.MaxCount = 100
	}
	if o.Linger == 0 {
		o.Linger = 500 * time.Millisecond
	}
	return &Stream[[]E]{p: s.p, attach: func(env *laneEnv, down node[[]E]) {
		up.attach(env, &batchNode[E]{env: env, o: o, next: down})
	}}
}

type batchNode[T any] struct {
	env      *laneEnv
	o        BatchOptions[T]
	next     node[[]T]
	vals     []T
	toks     []token
	bytes    int
	deadline time.Time
}

func (n *batchNode[T]) push(ctx context.Context, it item[T]) {
	size := 0
	if n.o.MaxBytes > 0 {
		size = n.o.Size(it.v)
		if len(n.vals) > 0 && n.bytes+size > n.o.MaxBytes {
			n.emit(ctx)
		}
	}
	if len(n.vals) == 0 {
		n.deadline = time.Now().Add(n.o.Linger)
		n.env.schedule(n.deadline)
	}
	n.vals = append(n.vals, it.v)
	n.toks = append(n.toks, it.tok)
	n.bytes += size
	if len(n.vals) >= n.o.MaxCount || (n.o.MaxBytes > 0 && n.bytes >= n.o.MaxBytes) {
		n.emit(ctx)
	}
}

func (n *batchNode[T]) tick(ctx context.Context, now time.Time) {
	if len(n.vals) > 0 {
		if now.Before(n.deadline) {
			n.env.schedule(n.deadline)
		} else {
			n.emit(ctx)
		}
	}
	n.next.tick(ctx, now)
}

func (n *batchNode[T]) flush(ctx context.Context) {
	if len(n.vals) > 0 {
		n.emit(ctx)
	}
	n.next.flush(ctx)
}

// emit hands the batch on; the handler may keep the slice, so each batch
// gets a new one.
func (n *batchNode[T]) emit(ctx context.Context) {
	vals, toks := n.vals, n.toks
	n.vals, n.toks, n.bytes = make([]T, 0, len(vals)), nil, 0
	tok := toks[0]
	if len(toks) > 1 {
		tok = token{g: newGroup(toks)}
	}
	n.next.push(ctx, item[[]T]{v: vals, tok: tok})
}
