package shardflow

import (
	"context"
	"sync"
	"sync/atomic"
)

// tracker keeps the records of one shard that were emitted and are not yet
// retired, in emission order, in a ring of slots. It is the heart of
// checkpointing: the shard's checkpoint is the position of the last record
// it retired.
//
// How the checkpoint advances, step by step:
//  1. Emit (the source's goroutine) reserves the slot at tail with one pending
//     completion (beginEmit); it waits while tail-head reaches the in-flight
//     limit.
//  2. Completions (Filter drops, sink acks, FlatMap children) decrement the
//     slot's pending count, in any order and from any goroutine.
//  3. When the slot at head reaches zero, head moves forward over every
//     consecutive slot at zero. The position of the last slot it passed is
//     the checkpoint candidate. A failed slot never reaches zero, so head
//     never passes it.
//  4. The checkpointer saves the candidate when head moved since last save.
//
// Two locks keep the emitting and the completing goroutines off each other.
// emitMu serialises emitters and guards what they write: the slot at tail,
// then tail, and closed. mu serialises completions and guards head, the
// pending counts, err and the candidate. head and tail are atomics so each
// side reads the other's without its lock. A completer only touches slots in
// [head, tail), which the emitter finished writing before it moved tail; an
// emitter only writes the slot at tail, which no completer touches.
//
// Lock order: emitMu, then the lane's queue lock (held by the lane between
// beginEmit and endEmit, see Lane.Emit), then mu. Nothing takes emitMu while
// holding mu or the queue lock.
type tracker struct {
	// Read-only after construction.
	slots  []slot
	mask   uint64
	limit  uint64
	onFail func(error)
	clock  *atomic.Int64 // the run's coarse clock, stamped on each slot
	// every is Options.CheckpointEvery (0: off): at most every records are
	// emitted past the last saved checkpoint (saved), and onDue asks for a
	// save once half of them are retired.
	every uint64
	onDue func()

	// The emitting side.
	_        cacheLinePad
	emitMu   sync.Mutex
	closed   error         // set once no more records may be emitted; under emitMu
	tail     atomic.Uint64 // next slot to reserve; written under emitMu
	headSeen uint64        // head as the emitter last read it (head only grows); under emitMu
	// arrivals holds, by slot, when each record arrived in its stream (Unix
	// ns; 0: unknown), written like the slots; nil until a record comes
	// with one (Lane.EmitArrived), so that slots stay small for sources
	// that give none. Set under emitMu and mu.
	arrivals []int64

	// The completing side, on a cache line of its own: the emitter and the
	// completer write their own side once per record, and sharing a line
	// would move it between their cores at every write.
	_        cacheLinePad
	head     atomic.Uint64 // oldest slot not retired; written under mu
	mu       sync.Mutex
	tailSeen uint64        // tail as a completer last read it (tail only grows); under mu
	err      error         // first failure of a record of this shard
	acked    uint64        // values the sink acknowledged; under mu
	pubAcked uint64        // acked as last published; under mu
	wake     chan struct{} // closed on progress while somebody waits
	// saved is head at the last saved checkpoint (see every); written
	// under mu, read by the emitter without it.
	saved   atomic.Uint64
	dueSent bool // onDue was called since the last save; under mu
	_       cacheLinePad
}

// cacheLinePad keeps the fields around it on separate cache lines.
type cacheLinePad [64]byte

type slot struct {
	pos     Position
	idx     uint64
	readAt  int64 // run clock when it was emitted
	pending int32
	failed  bool
}

// newSavingTracker returns the tracker of a lane that keeps at most limit
// records in flight. With every > 0 it lets at most every records be emitted past the last
// saved checkpoint (see markSaved) and calls onDue, with mu held (it must
// not block), once half of them are retired. every 0 turns that off.
func newSavingTracker(limit, every int, onDue func(), clock *atomic.Int64, onFail func(error)) *tracker {
	// One slot more than the limit keeps the last retired slot, whose
	// position is the checkpoint candidate, from being reused while head
	// stays where it is.
	n := 1
	for n < limit+1 {
		n <<= 1
	}
	return &tracker{slots: make([]slot, n), mask: uint64(n - 1), limit: uint64(limit), clock: clock, onFail: onFail,
		every: uint64(every), onDue: onDue}
}

// beginEmit reserves the slot of the next record, at pos, waiting while
// limit records are in flight, until ctx or lane ends. On success it returns
// the slot's index with emitMu held: the caller publishes the record (hands
// it to the lane's goroutine) and then calls endEmit, so that close never
// falls between a reservation and its publication. On failure it returns
// the tracker's close error, ctx's cause or ErrLaneClosed, without the lock.
func (t *tracker) beginEmit(ctx, lane context.Context, pos Position, arrival int64) (uint64, error) {
	t.emitMu.Lock()
	var idx uint64
	for {
		if t.closed != nil {
			err := t.closed
			t.emitMu.Unlock()
			return 0, err
		}
		idx = t.tail.Load()
		// Read head, the completer's, only when the head seen last says
		// the limit is reached: most emits then touch no line the
		// completer writes.
		if idx-t.headSeen < t.limit && t.underSaved(idx) {
			break
		}
		t.headSeen = t.head.Load()
		if idx-t.headSeen < t.limit && t.underSaved(idx) {
			break
		}
		// Full: wait for progress (or a save). Taking mu before looking
		// again closes the gap where head moves between the check and
		// the wait.
		t.mu.Lock()
		if idx-t.head.Load() < t.limit && t.underSaved(idx) {
			t.mu.Unlock()
			continue
		}
		wake := t.waitLocked()
		t.mu.Unlock()
		t.emitMu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return 0, context.Cause(ctx)
		case <-lane.Done():
			return 0, ErrLaneClosed
		}
		t.emitMu.Lock()
	}
	t.slots[idx&t.mask] = slot{pos: pos, idx: idx, readAt: t.clock.Load(), pending: 1}
	if arrival != 0 || t.arrivals != nil {
		t.setArrival(idx, arrival)
	}
	t.tail.Store(idx + 1)
	return idx, nil
}

// underSaved reports whether the record at idx may be emitted under
// CheckpointEvery: fewer than every records past the last saved checkpoint.
func (t *tracker) underSaved(idx uint64) bool {
	return t.every == 0 || idx-t.saved.Load() < t.every
}

// markSaved notes that the checkpoint at head (a retired count) was saved:
// the emitter may go up to every records past it, and a next save is asked
// for once half of them are retired.
func (t *tracker) markSaved(head uint64) {
	if t.every == 0 {
		return
	}
	t.mu.Lock()
	if head > t.saved.Load() {
		t.saved.Store(head)
		t.dueSent = false
		t.askSaveLocked(t.head.Load())
		t.notifyLocked()
	}
	t.mu.Unlock()
}

// askSaveLocked calls onDue once half of every records are retired past the
// last save. Called with mu held.
func (t *tracker) askSaveLocked(head uint64) {
	if t.every != 0 && !t.dueSent && head-t.saved.Load() >= (t.every+1)/2 {
		t.dueSent = true
		t.onDue()
	}
}

// setArrival records the arrival time of the record at idx, being emitted.
// Called with emitMu held.
func (t *tracker) setArrival(idx uint64, arrival int64) {
	if t.arrivals == nil {
		// Allocated with both locks held: a completer reads it under mu.
		t.mu.Lock()
		t.arrivals = make([]int64, len(t.slots))
		t.mu.Unlock()
	}
	t.arrivals[idx&t.mask] = arrival
}

// endEmit releases the lock beginEmit returned with.
func (t *tracker) endEmit() { t.emitMu.Unlock() }

// close makes every later beginEmit fail with err (the first close wins)
// and wakes the goroutines waiting for progress, so that they look again.
// It waits for an emit between beginEmit and endEmit to finish.
func (t *tracker) close(err error) {
	t.emitMu.Lock()
	if t.closed == nil {
		t.closed = err
	}
	t.mu.Lock()
	t.notifyLocked()
	t.mu.Unlock()
	t.emitMu.Unlock()
}

// live returns the slot of idx if it is still in flight. Called with mu held.
// It reads tail, the emitter's, only when idx is at or past the tail seen
// last: every slot a completer touched is below tailSeen.
func (t *tracker) live(idx uint64) *slot {
	if idx < t.head.Load() {
		return nil
	}
	if idx >= t.tailSeen {
		t.tailSeen = t.tail.Load()
		if idx >= t.tailSeen {
			return nil
		}
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

func (t *tracker) complete(idx uint64, err error) { t.completeAcked(idx, err, false) }

// completeAcked is complete; acked counts a value the sink acknowledged.
func (t *tracker) completeAcked(idx uint64, err error, acked bool) {
	t.mu.Lock()
	if acked {
		t.acked++
	}
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
		// Slots at or past tailSeen were never completed (live saw every
		// completed one below it), so head need not look past it.
		tail := t.tailSeen
		for head < tail {
			h := &t.slots[head&t.mask]
			if h.pending != 0 || h.failed {
				break
			}
			head++
		}
		t.head.Store(head)
		t.askSaveLocked(head)
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

// arrival returns when the record at idx arrived in its stream (Unix ns),
// 0 when the source did not say or the record is not in flight.
func (t *tracker) arrival(idx uint64) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.live(idx); s != nil && t.arrivals != nil {
		return t.arrivals[idx&t.mask]
	}
	return 0
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

// waitIdle waits until every emitted record is retired, and returns nil; or
// until a record failed, and returns its error; or until ctx or lane ends,
// and returns its cause.
func (t *tracker) waitIdle(ctx, lane context.Context) error {
	for {
		t.mu.Lock()
		if t.err != nil {
			t.mu.Unlock()
			return t.err
		}
		if t.head.Load() == t.tail.Load() {
			t.mu.Unlock()
			return nil
		}
		wake := t.waitLocked()
		t.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-lane.Done():
			return context.Cause(lane)
		}
	}
}

// addAcked counts a value the sink acknowledged (a batch's, whose records
// complete through their group).
func (t *tracker) addAcked() {
	t.mu.Lock()
	t.acked++
	t.mu.Unlock()
}

// takeAcked returns the values acknowledged since its last call.
func (t *tracker) takeAcked() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := t.acked - t.pubAcked
	t.pubAcked = t.acked
	return d
}

// oldest returns the retired and emitted counts, and the position of the
// oldest unfinished record and when it was emitted (zero when none is).
func (t *tracker) oldest() (head, tail uint64, pos Position, readAt int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	head, tail = t.head.Load(), t.tail.Load()
	if head < tail {
		s := &t.slots[head&t.mask]
		pos, readAt = s.pos, s.readAt
	}
	return head, tail, pos, readAt
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
