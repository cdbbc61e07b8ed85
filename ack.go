package shardflow

import (
	"errors"
	"sync"
	"sync/atomic"
)

// errDoubleAck is the failure of a record whose Ack was completed twice.
var errDoubleAck = errors.New("record acknowledged more than once (Ack.Done must be called exactly once)")

// Ack completes one record handed to a [Sink]. The sink calls Done exactly
// once per record it accepted: with nil once the record is durable, or with
// the error that made it give up. Done may be called from any goroutine, in
// any order across records; the checkpoint still only advances over a
// contiguous run of done records. The zero Ack is valid and Done on it does
// nothing, so sinks can be used outside a pipeline.
type Ack struct {
	tok token
	h   ackFailer
}

// Done reports the outcome of the record. A nil err completes it; a non-nil
// err applies the sink stage's failure policy (dead-letter handler, or stop
// the pipeline). Sinks retry on their own before giving up: the stage's retry
// policy only applies to errors returned by Sink.Write.
func (a Ack) Done(err error) {
	if err != nil && a.h != nil {
		a.h.ackFailed(a.tok, err)
		return
	}
	a.tok.done(err)
}

// ackFailer turns a sink's asynchronous failure into the stage's policy.
type ackFailer interface {
	ackFailed(tok token, err error)
}

// token ties a value flowing through the stages to the record(s) it came
// from: one tracker slot, or a group of tokens for a batch. It is passed by
// value and costs no allocation for a single record.
type token struct {
	t   *tracker
	idx uint64
	g   *group
}

// addRef declares n more completions of the token (a FlatMap fan-out).
func (k token) addRef(n int32) {
	switch {
	case k.g != nil:
		k.g.addRef(n)
	case k.t != nil:
		k.t.addRef(k.idx, n)
	}
}

// done completes one reference of the token.
func (k token) done(err error) {
	switch {
	case k.g != nil:
		k.g.done(err)
	case k.t != nil:
		k.t.complete(k.idx, err)
	}
}

// position returns the position of the token's (first) record.
func (k token) position() Position {
	switch {
	case k.g != nil:
		if len(k.g.toks) > 0 {
			return k.g.toks[0].position()
		}
	case k.t != nil:
		return k.t.position(k.idx)
	}
	return Position{}
}

// group is the token of a batch: done once every reference of the batch is,
// then it completes each member record.
type group struct {
	toks    []token
	mu      sync.Mutex
	pending int32
	failed  bool
}

func newGroup(toks []token) *group { return &group{toks: toks, pending: 1} }

func (g *group) addRef(n int32) {
	g.mu.Lock()
	g.pending += n
	g.mu.Unlock()
}

func (g *group) done(err error) {
	g.mu.Lock()
	g.pending--
	var complete, fail bool
	switch {
	case g.failed:
	case err != nil:
		g.failed, fail = true, true
	case g.pending == 0:
		complete = true
	}
	g.mu.Unlock()
	if fail {
		for _, t := range g.toks {
			t.done(err)
		}
	} else if complete {
		for _, t := range g.toks {
			t.done(nil)
		}
	}
}

// tracker keeps the records of one shard that were emitted and are not yet
// retired, in emission order, in a ring of slots.
//
// How the checkpoint advances, step by step:
//  1. Emit (the source's goroutine) reserves the slot at tail with one pending
//     completion; it waits while tail-head reaches the in-flight limit.
//  2. Completions (Filter drops, sink acks, FlatMap children) decrement the
//     slot's pending count, in any order and from any goroutine.
//  3. When the slot at head reaches zero, head moves forward over every
//     consecutive slot at zero. The position of the last slot it passed is
//     the checkpoint candidate. A failed slot never reaches zero, so head
//     never passes it.
//  4. The checkpointer saves the candidate when head moved since last save.
//
// Two locks keep the emitting and the completing goroutines off each other:
// emitMu serialises emitters and guards what they write (the slot at tail,
// then tail, and the lane's queue); mu serialises completions and guards
// head, the pending counts and the candidate. head and tail are atomics so
// each side reads the other's without its lock. A completer only touches
// slots in [head, tail), which Emit has finished writing before it moved
// tail; Emit only writes the slot at tail, which no completer touches. Lock
// order: emitMu before mu.
type tracker struct {
	// Read-only after construction.
	slots  []slot
	mask   uint64
	limit  uint64
	onFail func(error)

	// The emitting side.
	emitMu sync.Mutex
	closed error         // set once no more records may be emitted; under emitMu
	tail   atomic.Uint64 // next slot to reserve; written under emitMu

	// The completing side.
	head atomic.Uint64 // oldest slot not retired; written under mu
	mu   sync.Mutex
	err  error         // first failure of a record of this shard
	wake chan struct{} // closed on progress while somebody waits
}

type slot struct {
	pos     Position
	idx     uint64
	pending int32
	failed  bool
}

func newTracker(limit int, onFail func(error)) *tracker {
	// One slot more than the limit keeps the last retired slot, whose
	// position is the checkpoint candidate, from being reused while head
	// stays where it is.
	n := 1
	for n < limit+1 {
		n <<= 1
	}
	return &tracker{slots: make([]slot, n), mask: uint64(n - 1), limit: uint64(limit), onFail: onFail}
}

// live returns the slot of idx if it is still in flight. Called with mu held.
func (t *tracker) live(idx uint64) *slot {
	if idx < t.head.Load() || idx >= t.tail.Load() {
		return nil
	}
	s := &t.slots[idx&t.mask]
	if s.idx != idx {
		return nil
	}
	return s
}

func (t *tracker) addRef(idx uint64, n int32) {
	t.mu.Lock()
	if s := t.live(idx); s != nil {
		s.pending += n
	}
	t.mu.Unlock()
}

func (t *tracker) complete(idx uint64, err error) {
	t.mu.Lock()
	s := t.live(idx)
	if s == nil || s.pending <= 0 {
		t.mu.Unlock()
		t.onFail(errDoubleAck)
		return
	}
	s.pending--
	if err != nil {
		s.failed = true
		if t.err == nil {
			t.err = err
		}
		t.notifyLocked()
		t.mu.Unlock()
		t.onFail(err)
		return
	}
	if head := t.head.Load(); s.pending == 0 && idx == head {
		tail := t.tail.Load()
		for head < tail {
			h := &t.slots[head&t.mask]
			if h.pending != 0 || h.failed {
				break
			}
			head++
		}
		t.head.Store(head)
		// Wake waiters (an emitter at the in-flight limit, or somebody
		// waiting for the shard to be idle) once a quarter of the limit is
		// free, not at every retired record: an emitter woken per record
		// would sleep and wake once per record.
		if tail-head <= t.limit-t.limit/4 {
			t.notifyLocked()
		}
	}
	t.mu.Unlock()
}

func (t *tracker) position(idx uint64) Position {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.live(idx); s != nil {
		return s.pos
	}
	return Position{}
}

// notifyLocked wakes the goroutines waiting for progress, if any. The wake
// channel exists only while somebody waits, so progress costs no allocation.
// Called with mu held.
func (t *tracker) notifyLocked() {
	if t.wake != nil {
		close(t.wake)
		t.wake = nil
	}
}

// waitLocked returns a channel closed at the next progress. Called with mu
// held.
func (t *tracker) waitLocked() <-chan struct{} {
	if t.wake == nil {
		t.wake = make(chan struct{})
	}
	return t.wake
}

// progress returns the retired count, the emitted count, the position of the
// last retired record and the first failure.
func (t *tracker) progress() (head, tail uint64, last Position, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	head = t.head.Load()
	if head > 0 {
		last = t.slots[(head-1)&t.mask].pos
	}
	return head, t.tail.Load(), last, t.err
}
