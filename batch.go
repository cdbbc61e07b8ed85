package shardflow

import (
	"context"
	"time"

	"github.com/shardflow/shardflow/internal/batcher"
)

// BatchOptions bound the batches of [Batch]. A batch is emitted when it
// holds MaxCount values, when adding a value would take it past MaxBytes, or
// Linger after its first value arrived, whichever comes first, and when the
// lane drains.
type BatchOptions[T any] struct {
	// MaxCount is the most values in a batch. Default (0): 100. Must not be
	// negative.
	MaxCount int
	// MaxBytes caps the summed Size of a batch's values, in the unit Size
	// returns (bytes, usually); a single value larger than MaxBytes travels
	// alone. Default (0): no byte limit. Must not be negative; needs Size.
	MaxBytes int
	// Size returns the size of a value counted against MaxBytes. Default:
	// nil, which is only allowed without MaxBytes.
	Size func(T) int
	// Linger is how long a batch waits for more values after its first one.
	// Default (0): 500ms. Must not be negative: a batch always ships within
	// Linger.
	Linger time.Duration
}

// Batch groups consecutive values of a shard of s into slices, for handlers
// that work better on many values at once:
//
//	batches := shardflow.Batch(orders, shardflow.BatchOptions[Order]{MaxCount: 50}) // *Stream[[]Order]
//
// Batches never mix shards. The records of a batch are done when the batch
// is; if the batch fails, all of them do. Batch is a function rather than a
// method because a method of Stream[T] returning Stream[[]T] would
// instantiate Stream[[][]T] and so on forever; as a function, the options'
// element type is checked against the stream's by the compiler.
//
// The stage takes [WithName]. It calls no handler of its own, so it has
// nothing to retry or dead-letter: [WithRetry] is a [*ConfigError]; the
// failure policy of the stage that receives the batches applies to them.
func Batch[T any](s *Stream[T], o BatchOptions[T], opts ...StageOption) *Stream[[]T] {
	st := newStage(s, "batch", false, false, opts)
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
	pol := batcher.Policy{MaxCount: o.MaxCount, MaxBytes: o.MaxBytes, Linger: o.Linger}
	if pol.MaxCount <= 0 {
		pol.MaxCount = 100
	}
	if pol.Linger <= 0 {
		pol.Linger = 500 * time.Millisecond
	}
	if pol.MaxBytes < 0 {
		pol.MaxBytes = 0
	}
	size := o.Size
	if pol.MaxBytes == 0 {
		size = nil // sizes count only against a byte limit
	}
	return &Stream[[]T]{p: s.p, attach: func(env *laneEnv, down node[[]T]) {
		b, err := batcher.New[item[T]](pol)
		if err != nil {
			panic(err) // the policy was resolved above
		}
		s.attach(env, &batchNode[T]{env: env, c: env.addStage(st, kindBatch), b: b, size: size, next: down})
	}}
}

// batchNode leaves the batching rules (count, bytes, linger) to
// internal/batcher, the sink's too, and schedules the lane's timer for the
// linger.
type batchNode[T any] struct {
	env  *laneEnv
	c    *nodeStats
	b    *batcher.Batcher[item[T]]
	size func(T) int
	next node[[]T]
}

func (n *batchNode[T]) push(ctx context.Context, it item[T]) {
	size := 0
	if n.size != nil {
		size = n.size(it.v)
	}
	if !n.b.Fits(size) {
		n.emit(ctx)
	}
	if n.b.Add(it, size) {
		n.emit(ctx)
		return
	}
	if n.b.Len() == 1 { // the first value starts the linger
		n.c.held.Store(firstIndex(it.tok) + 1)
		d, _ := n.b.UntilNext()
		n.env.schedule(time.Now().Add(d))
	}
}

func (n *batchNode[T]) tick(ctx context.Context, now time.Time) {
	if d, ok := n.b.UntilNext(); ok {
		if d > 0 {
			n.env.schedule(now.Add(d))
		} else {
			n.emit(ctx)
		}
	}
	n.next.tick(ctx, now)
}

func (n *batchNode[T]) flush(ctx context.Context) {
	n.emit(ctx)
	n.next.flush(ctx)
}

// emit hands the open batch on, if any; the handler may keep the slice, so
// each batch gets a new one.
func (n *batchNode[T]) emit(ctx context.Context) {
	its, _ := n.b.Flush(ctx) // never fails: the batcher is never closed
	if len(its) == 0 {
		return
	}
	n.c.held.Store(0)
	n.c.batches++
	vals := make([]T, len(its))
	for i := range its {
		vals[i] = its[i].v
	}
	tok := its[0].tok
	if len(its) > 1 {
		toks := make([]token, len(its))
		for i := range its {
			toks[i] = its[i].tok
		}
		tok = token{g: newGroup(toks)}
	}
	n.next.push(ctx, item[[]T]{v: vals, tok: tok})
}

// firstIndex returns the tracker index of a token's (first) record.
func firstIndex(k token) uint64 {
	for k.g != nil && len(k.g.toks) > 0 {
		k = k.g.toks[0]
	}
	return k.idx
}
