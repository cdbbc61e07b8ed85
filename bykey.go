package shardflow

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// ByKey runs the stages after it on n key workers per shard, so that up to n
// values of a shard are in those stages at once, while the values of one key
// stay in order: every value goes to the worker picked by a hash of
// key(value), and each worker runs its values through the rest of the
// pipeline one at a time, in the order the shard delivered them.
//
//	keyed := shardflow.ByKey(records, 16, nil) // by partition key
//	err := keyed.Map(callTheAPI).Sink(sink).Run(ctx)
//
// It is for handlers that wait (an HTTP call, a database write) and whose
// order only matters per key, as with Lambda's ParallelizationFactor: with
// a handler that waits 20ms, one shard moves 50 records a second in order,
// and about n times as many by key, given enough distinct keys. Order is
// kept per key, not per shard: values of different keys may reach the later
// stages and the sink in another order than the shard's, and a key is
// never on two workers. Throughput is bounded by the busiest worker: keys
// are spread by hash, so a few hot keys, or fewer keys than workers, leave
// workers idle.
//
// Checkpoints do not change: a shard's checkpoint only passes a record once
// it and every record before it are done, whatever order the workers finish
// them in; [Options].MaxInFlight still caps the records of a shard in
// flight, across its workers. The stages after ByKey are built once per
// worker: a [Batch] after it batches the values of one worker, in their
// order; the sink's Write is called from the workers, concurrently within a
// shard, in order per key. Failures, retries and dead letters work as
// without ByKey: a worker retrying a value holds up its keys only.
//
// key returns the key of a value; nil means the partition key, for a
// Stream[Record] (any other element type needs a key function: a nil key is
// a [*ConfigError]). A key that panics fails its record as a handler's panic
// would. n = 1 is the pipeline without ByKey; n < 1, a second ByKey in one
// pipeline, and [WithRetry] (ByKey calls no handler to retry) are a
// [*ConfigError]. The stage takes [WithName] (default "bykey#N").
//
// Each worker is a goroutine of the shard's, started when its first value
// comes and ended with the shard; the watchdog names the stage a worker is
// blocked in, as for the shard's own goroutine.
func ByKey[T any](s *Stream[T], n int, key func(T) string, opts ...StageOption) *Stream[T] {
	st := newStage(s, "bykey", false, false, opts)
	p := s.p
	if key == nil {
		if f, ok := any(recordPartitionKey).(func(T) string); ok {
			key = f
		} else {
			p.setErr(&ConfigError{Field: st.name, Reason: "nil key: only a Stream[shardflow.Record] has a default key, its PartitionKey"})
		}
	}
	if n < 1 {
		p.setErr(&ConfigError{Field: st.name, Reason: fmt.Sprintf("%d key workers; want at least 1", n)})
	}
	pass := &Stream[T]{p: p, attach: s.attach}
	if n <= 1 {
		return pass
	}
	p.mu.Lock()
	first := p.byKey
	if first == "" {
		p.byKey, p.keyWorkers = st.name, n
	}
	p.mu.Unlock()
	if first != "" {
		p.setErr(&ConfigError{Field: st.name, Reason: "a pipeline takes one ByKey stage, and " + first + " is one"})
		return pass
	}
	return &Stream[T]{p: p, attach: func(env *laneEnv, down node[T]) {
		// Called once per key worker, with the worker's chain: the last
		// call wires the stages before ByKey into the lane's env.
		lane := env.parent
		kn, _ := lane.split.(*keyNode[T])
		if kn == nil {
			kn = &keyNode[T]{st: st, env: lane, key: key, workers: make([]*keyWorker[T], n)}
			lane.split = kn
		}
		kn.workers[env.worker] = &keyWorker[T]{env: env, entry: down, notify: make(chan struct{}, 1), exited: make(chan struct{})}
		if env.worker < n-1 {
			return
		}
		lane.split, lane.keys = nil, kn
		kn.c = lane.addStage(st, kindPlain)
		s.attach(lane, kn)
	}}
}

// recordPartitionKey is ByKey's default key of a Stream[Record].
func recordPartitionKey(r Record) string { return r.PartitionKey }

// keyHash is FNV-1a (64 bits): cheap, allocation-free and stable across
// runs, so that a key's worker does not depend on the process.
func keyHash(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// keyWorkers is the element-type-free view of a lane's key workers, for the
// watchdog and Status.
type keyWorkers interface {
	// holding returns where a worker holds the record at idx: the stage
	// its goroutine is blocked in while on it, or "queue" while the record
	// waits in the worker's queue.
	holding(idx uint64, stacks *stackDump) (stage, detail string, ok bool)
	// blockedSince returns the stage a worker busy since before busyBefore
	// (run clock) is blocked in, such as the handler of a batch its linger
	// emitted.
	blockedSince(busyBefore int64, stacks *stackDump) (stage, detail string, ok bool)
	// heldInBatch returns the Batch stage of a worker's chain holding the
	// record at idx.
	heldInBatch(idx uint64) (string, bool)
	// firstChain returns the env of the first worker's chain.
	firstChain() *laneEnv
}

// keyNode is ByKey's node, the last of the lane's own chain: it hands each
// value to the queue of its key's worker. Its push, tick and flush run on
// the lane's goroutine.
type keyNode[T any] struct {
	st      *stage
	env     *laneEnv // the lane's
	c       *nodeStats
	key     func(T) string
	workers []*keyWorker[T]
}

func (n *keyNode[T]) push(ctx context.Context, it item[T]) {
	k, err := n.keyOf(it.v)
	if err != nil {
		settleFailure(ctx, n.st, n.env, n.c, true, nil, it.v, it.tok, err)
		return
	}
	n.workers[keyHash(k)%uint64(len(n.workers))].add(ctx, it)
}

// keyOf calls the key function, turning a panic into a *PanicError.
func (n *keyNode[T]) keyOf(v T) (k string, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	return n.key(v), nil
}

// tick does nothing: each worker fires the linger timers of its own chain.
func (n *keyNode[T]) tick(context.Context, time.Time) {}

// flush lets every worker run what it has queued, flush its chain and exit,
// and waits for them, until ctx ends (then they stop on their own).
func (n *keyNode[T]) flush(ctx context.Context) {
	for _, w := range n.workers {
		w.close()
	}
	for _, w := range n.workers {
		if !w.started { // written by this goroutine only
			continue
		}
		select {
		case <-w.exited:
		case <-ctx.Done():
			return
		}
	}
}

func (n *keyNode[T]) holding(idx uint64, stacks *stackDump) (stage, detail string, ok bool) {
	for i, w := range n.workers {
		if w.cur.Load() == idx+1 {
			if stage, detail, ok := n.blockedIn(i, stacks); ok {
				return stage, detail, true
			}
		}
	}
	for i, w := range n.workers {
		if w.queued(idx) {
			return "queue", fmt.Sprintf("the record waits for its key worker (%d of %d), busy with earlier values", i+1, len(n.workers)), true
		}
	}
	return "", "", false
}

func (n *keyNode[T]) blockedSince(busyBefore int64, stacks *stackDump) (stage, detail string, ok bool) {
	for i, w := range n.workers {
		w.qmu.Lock()
		since := w.busySince
		w.qmu.Unlock()
		if since != 0 && since <= busyBefore {
			if stage, detail, ok := n.blockedIn(i, stacks); ok {
				return stage, detail, true
			}
		}
	}
	return "", "", false
}

// blockedIn returns the stage worker i's goroutine is in, and what it is
// blocked on, from its stack.
func (n *keyNode[T]) blockedIn(i int, stacks *stackDump) (stage, detail string, ok bool) {
	w := n.workers[i]
	w.qmu.Lock()
	gid := w.gid
	w.qmu.Unlock()
	depth, where, ok := blockedStage(stacks, gid)
	if !ok || depth > len(w.env.stages) {
		return "", "", false
	}
	return w.env.stages[depth-1].st.name, fmt.Sprintf("%s (key worker %d of %d)", where, i+1, len(n.workers)), true
}

func (n *keyNode[T]) heldInBatch(idx uint64) (string, bool) {
	for _, w := range n.workers {
		if name, ok := heldInBatch(w.env.stages, idx); ok {
			return name, true
		}
	}
	return "", false
}

func (n *keyNode[T]) firstChain() *laneEnv { return n.workers[0].env }

// keyWorker runs the values of its keys through its own chain of the
// stages after ByKey, one at a time, on a goroutine of its own. The hand-over
// from the lane's goroutine is the lane's own (see Lane): add appends to
// queue under qmu and wakes the worker if it sleeps; the worker swaps queue
// with its spare slice and pushes the values without the lock. Lock order:
// a tracker lock may be taken under a stage's call, never qmu's holder.
type keyWorker[T any] struct {
	env   *laneEnv // the worker's chain
	entry node[T]

	// cur is 1 + the tracker index of the value the worker is pushing
	// (0: none), for the watchdog. Written by the worker per value.
	cur atomic.Uint64

	qmu       sync.Mutex
	queue     []item[T] // under qmu
	idle      bool      // under qmu: the worker sleeps or is about to
	closed    bool      // under qmu: no value will be added again
	started   bool      // under qmu; written by the lane's goroutine only
	busySince int64     // under qmu: run clock when it took the values it is on; 0: idle
	gid       uint64    // under qmu: the worker goroutine's id, to find its stack
	notify    chan struct{}
	exited    chan struct{}

	// The worker goroutine's own.
	spare   []item[T]
	pushed  uint64 // values taken from the queue into the first stage
	pubTick int64  // run clock of the last publish
}

// add queues a value for the worker, starting its goroutine on the first
// one. Called on the lane's goroutine.
func (w *keyWorker[T]) add(ctx context.Context, it item[T]) {
	w.qmu.Lock()
	w.queue = append(w.queue, it)
	switch {
	case !w.started:
		w.started = true
		w.env.goroutines.Add(1)
		go w.loop(ctx)
	case w.idle:
		w.idle = false
		select {
		case w.notify <- struct{}{}:
		default:
		}
	}
	w.qmu.Unlock()
}

// close tells the worker that nothing more comes: it runs what is queued,
// flushes its chain and exits.
func (w *keyWorker[T]) close() {
	w.qmu.Lock()
	w.closed = true
	w.qmu.Unlock()
	select { // wake it even if it is busy: it looks again before sleeping
	case w.notify <- struct{}{}:
	default:
	}
}

// queued reports whether the record at idx waits in the worker's queue.
func (w *keyWorker[T]) queued(idx uint64) bool {
	w.qmu.Lock()
	defer w.qmu.Unlock()
	for i := range w.queue {
		if firstIndex(w.queue[i].tok) == idx {
			return true
		}
	}
	return false
}

// loop is the worker's goroutine; see Lane.loop, which it follows.
func (w *keyWorker[T]) loop(ctx context.Context) {
	env := w.env
	defer env.goroutines.Done()
	defer close(w.exited)
	defer w.publish()
	w.qmu.Lock()
	w.gid = goroutineID()
	w.qmu.Unlock()
	done := ctx.Done()
	defer func() {
		if env.timer != nil {
			env.timer.Stop()
		}
	}()
	yielded := false
	for {
		w.qmu.Lock()
		closed := w.closed
		if len(w.queue) == 0 && !closed && !yielded {
			w.qmu.Unlock()
			yielded = true
			runtime.Gosched()
			continue
		}
		yielded = false
		batch := w.queue
		w.queue = w.spare[:0]
		if len(batch) == 0 && !closed {
			w.idle = true
		}
		w.busySince = 0
		if len(batch) > 0 {
			w.busySince = env.clock.Load()
			w.pushed += uint64(len(batch))
		}
		w.qmu.Unlock()

		for i := range batch {
			select {
			case <-done:
				return
			default:
			}
			w.cur.Store(firstIndex(batch[i].tok) + 1)
			w.entry.push(ctx, batch[i])
			batch[i] = item[T]{}
		}
		w.cur.Store(0)
		w.spare = batch[:0]
		if len(batch) > 0 {
			w.tickIfDue(ctx)
			if env.clock.Load() != w.pubTick {
				w.publish()
			}
			continue
		}
		w.publish()
		if closed {
			select {
			case <-done:
			default:
				w.entry.flush(ctx)
			}
			return
		}
		var timer <-chan time.Time
		if env.timer != nil && !env.next.IsZero() {
			timer = env.timer.C
		}
		select {
		case <-w.notify:
		case now := <-timer:
			env.next = time.Time{}
			w.markBusy(true)
			w.entry.tick(ctx, now)
			w.markBusy(false)
		case <-done:
			return
		}
	}
}

// tickIfDue fires a due linger timer while the worker is busy.
func (w *keyWorker[T]) tickIfDue(ctx context.Context) {
	env := w.env
	if env.timer == nil || env.next.IsZero() {
		return
	}
	select {
	case now := <-env.timer.C:
		env.next = time.Time{}
		w.entry.tick(ctx, now)
	default:
	}
}

// markBusy tells the watchdog that the worker works outside a batch of
// values (a linger tick), or stopped.
func (w *keyWorker[T]) markBusy(busy bool) {
	w.qmu.Lock()
	w.busySince = 0
	if busy {
		w.busySince = w.env.clock.Load()
	}
	w.qmu.Unlock()
}

// publish adds what the worker's chain counted to the counters, and the
// sink's acknowledgements. Called on the worker's goroutine.
func (w *keyWorker[T]) publish() {
	publishChain(w.env.metrics, w.env.stages, w.pushed)
	w.pubTick = w.env.clock.Load()
	w.env.publishAcks()
}
