package shardflow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow/internal/telemetry"
)

// ShardSource delivers the records of a sharded stream to a pipeline. It is
// the extension point the Kinesis source, the in-memory test source and user
// sources implement.
//
// Run reads until ctx is done or the source is exhausted, and returns nil in
// both cases (or ctx's error); any other error stops the pipeline. For each
// shard it reads, Run opens a [Lane] with shards.Open, calls [Lane.Emit] for
// each record in shard order ([Lane.Skip] for one it drops), and finally
// either ends the lane
// ([Lane.End], for a closed shard), closes it ([Lane.Close], when it stops
// reading a shard that goes on) or abandons it ([Lane.Abandon], when it lost
// the shard). Lanes still open when Run returns are drained and checkpointed by
// the pipeline. Run must not call Emit after it returned.
type ShardSource[T any] interface {
	Run(ctx context.Context, shards *Shards[T]) error
}

// Shards opens lanes for a [ShardSource]. It is safe for concurrent use.
type Shards[T any] struct {
	r *run
}

// Open starts the lane of one shard: a goroutine that runs the shard's
// records through the pipeline's stages in order. Checkpoints of the lane are
// saved to store (nil: none are). Open fails with [ErrShardOpen] when the
// shard already has an open lane, and with [ErrLaneClosed] once the pipeline
// is stopping.
func (s *Shards[T]) Open(stream, shardID string, store CheckpointStore) (*Lane[T], error) {
	r := s.r
	key := stream + "\x00" + shardID
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing {
		return nil, fmt.Errorf("open lane of shard %s/%s: %w", stream, shardID, ErrLaneClosed)
	}
	if _, ok := r.lanes[key]; ok {
		return nil, fmt.Errorf("open lane of shard %s/%s: %w", stream, shardID, ErrShardOpen)
	}
	l := &Lane[T]{
		r:      r,
		key:    key,
		stream: stream,
		shard:  shardID,
		store:  store,
		notify: make(chan struct{}, 1),
		exited: make(chan struct{}),
		log:    r.log.With("stream", stream, "shard_id", shardID),
	}
	every := 0
	if store != nil {
		every = r.opts.CheckpointEvery
	}
	onDue := func() {
		l.saveDue.Store(true)
		select {
		case r.saveDue <- struct{}{}:
		default:
		}
	}
	l.trk = newSavingTracker(r.opts.MaxInFlight, every, onDue, &r.clock, func(err error) {
		// Records of a lane whose lease was lost (or that was abandoned)
		// fail as their handlers see the lane's context end: that is the
		// lost lease, not a failure of the pipeline, and the lane's
		// checkpoint cannot move any more. Its new owner reads them again.
		if l.lost.Load() {
			l.log.Debug("record of a lost shard not finished", "err", err)
			return
		}
		r.fail(err)
	})
	l.ctx, l.cancel = context.WithCancelCause(r.procCtx)
	l.env = &laneEnv{stream: stream, shard: shardID, log: l.log, metrics: r.metrics, clock: &r.clock,
		shardAttrs: telemetry.Shard(stream, shardID), streamOpt: metric.WithAttributeSet(telemetry.Stream(stream)),
		goroutines: &r.wg, publishAcks: l.publishAcks}
	if n := r.keyWorkers; n > 1 {
		// With ByKey, the stages after it are wired once per key worker,
		// each chain in an env of its own; ByKey's node wires the stages
		// before it into the lane's env once it has every chain.
		for i := range n {
			we := l.env.workerEnv(i)
			r.attach(we)
			slices.Reverse(we.stages)
		}
	} else {
		r.attach(l.env)
	}
	slices.Reverse(l.env.stages) // attach registered them from the sink up
	l.entry = l.env.entry.(node[T])
	l.sinkStats = l.env.lastStats()
	r.lanes[key] = l
	r.wg.Add(1)
	go l.loop()
	l.log.Debug("lane opened")
	return l, nil
}

// Lane carries the records of one shard through the pipeline, in order, and
// tracks them until they are done. Emit, End, Close and Abandon are called by
// the source; they are safe for concurrent use, but a shard's records must be
// emitted from one goroutine to have an order.
type Lane[T any] struct {
	r      *run
	key    string
	stream string
	shard  string
	store  CheckpointStore
	trk    *tracker
	exited chan struct{}

	// The hand-over from the source to the lane's goroutine, step by step:
	//  1. Emit reserves the record's tracker slot (trk.beginEmit, which
	//     returns with the tracker's emit lock held), appends the record to
	//     queue under qmu, wakes the goroutine if it is idle, and only then
	//     releases the tracker's lock (trk.endEmit). So shutdown, which
	//     closes the tracker first, never falls between a reservation and
	//     its append: every reserved record is in the queue.
	//  2. The goroutine swaps queue with its spare slice under qmu (taking
	//     every queued record at once, so a busy lane costs one queue lock
	//     per record on each side and no channel operation) and runs them
	//     through the stages without the lock.
	//  3. Finding the queue empty, it yields once, then marks itself idle
	//     and sleeps on notify; the next append sends one wake-up.
	//  4. shutdown closes the tracker, then sets closed under qmu and wakes
	//     the goroutine, which drains what is queued, flushes and exits.
	// Lock order: the tracker's emit lock, then qmu; qmu is never held
	// while taking a tracker lock.
	qmu    sync.Mutex
	queue  []item[T] // under qmu
	idle   bool      // under qmu: the goroutine sleeps or is about to
	closed bool      // under qmu: no record will be appended again
	notify chan struct{}
	spare  []item[T]       // the goroutine's own
	ctx    context.Context // the stages' context: ends with the pipeline or on Abandon
	cancel context.CancelCauseFunc
	env    *laneEnv
	entry  node[T]
	log    *slog.Logger

	lost     atomic.Bool
	lastRead atomic.Int64 // run clock of the last Heartbeat; 0: never

	// For the watchdog, under qmu: when the goroutine took the batch of
	// records it is on (0: it is not on one), and the index after the
	// last record it took.
	busySince int64
	taken     uint64
	gid       uint64 // the lane goroutine's id, to find its stack

	// The goroutine's own counts for the metrics (see publish).
	pushed    uint64 // records taken from the queue into the first stage
	pubTick   int64  // run clock of the last publish
	saveMu    sync.Mutex
	savedHead uint64
	saveDue   atomic.Bool // CheckpointEvery asks for a save (see run.saveDue)
	saving    atomic.Bool // checkpointLoop runs a save of the lane

	sinkStats *nodeStats // the sink stage's (of the first key worker, with ByKey); set by Open
}

// stageNames returns the names of the lane's stages, first to last (with
// ByKey, those of its first key worker after it).
func (l *Lane[T]) stageNames() []string {
	var names []string
	for e := l.env; e != nil; e = e.nextEnv() {
		for _, c := range e.stages {
			names = append(names, c.st.name)
		}
	}
	return names
}

// blockedIn returns the stage the lane's goroutine is in, and what it is
// blocked on, from its stack.
func (l *Lane[T]) blockedIn(stacks *stackDump) (stage, detail string, ok bool) {
	l.qmu.Lock()
	gid := l.gid
	l.qmu.Unlock()
	depth, where, ok := blockedStage(stacks, gid)
	if !ok || depth > len(l.env.stages) {
		return "", "", false
	}
	return l.env.stages[depth-1].st.name, where, true
}

// heldInBatch returns the Batch stage holding the record at idx, if one
// does.
func (l *Lane[T]) heldInBatch(idx uint64) (string, bool) {
	if name, ok := heldInBatch(l.env.stages, idx); ok {
		return name, true
	}
	if l.env.keys != nil {
		return l.env.keys.heldInBatch(idx)
	}
	return "", false
}

// heldInBatch returns the Batch stage of a chain holding the record at idx,
// if one does.
func heldInBatch(stages []*nodeStats, idx uint64) (string, bool) {
	for _, c := range stages {
		if h := c.held.Load(); c.kind == kindBatch && h != 0 && h-1 <= idx {
			return c.st.name, true
		}
	}
	return "", false
}

// heldByKeyWorker returns, with ByKey, where a key worker holds the record at
// idx (see keyWorkers.holding).
func (l *Lane[T]) heldByKeyWorker(idx uint64, stacks *stackDump) (stage, detail string, ok bool) {
	if l.env.keys == nil {
		return "", "", false
	}
	return l.env.keys.holding(idx, stacks)
}

// keyWorkerBlocked returns, with ByKey, the stage a key worker busy since
// before busyBefore is blocked in (see keyWorkers.blockedSince).
func (l *Lane[T]) keyWorkerBlocked(busyBefore int64, stacks *stackDump) (stage, detail string, ok bool) {
	if l.env.keys == nil {
		return "", "", false
	}
	return l.env.keys.blockedSince(busyBefore, stacks)
}

// Stream returns the name of the lane's stream.
func (l *Lane[T]) Stream() string { return l.stream }

// ShardID returns the id of the lane's shard.
func (l *Lane[T]) ShardID() string { return l.shard }

// Emit hands the next record of the shard, at position pos, to the pipeline.
// It blocks while [Options].MaxInFlight records of the shard are in flight,
// until one is done or ctx ends. It returns [ErrLaneClosed] once the lane was
// ended, closed or abandoned or the pipeline stopped, and [ErrLeaseLost] once a
// checkpoint save reported the shard's lease lost: the source then stops
// reading the shard.
func (l *Lane[T]) Emit(ctx context.Context, pos Position, v T) error {
	idx, err := l.trk.beginEmit(ctx, l.ctx, pos, 0)
	if err != nil {
		return err
	}
	l.qmu.Lock()
	l.queue = append(l.queue, item[T]{v: v, tok: token{t: l.trk, idx: idx}})
	l.wakeLocked()
	l.qmu.Unlock()
	l.trk.endEmit()
	return nil
}

// EmitArrived is [Lane.Emit] for a record that arrived in its stream at
// arrival (Kinesis' ApproximateArrivalTimestamp; the zero time means
// unknown, as with Emit). The pipeline keeps it with the record for
// [RetryPolicy].MaxRecordAge, which applies only to records emitted with
// their arrival time, and reports it in [DeadLetter]. It blocks and fails as
// Emit does.
func (l *Lane[T]) EmitArrived(ctx context.Context, pos Position, arrival time.Time, v T) error {
	var at int64
	if !arrival.IsZero() {
		at = arrival.UnixNano()
	}
	idx, err := l.trk.beginEmit(ctx, l.ctx, pos, at)
	if err != nil {
		return err
	}
	l.qmu.Lock()
	l.queue = append(l.queue, item[T]{v: v, tok: token{t: l.trk, idx: idx}})
	l.wakeLocked()
	l.qmu.Unlock()
	l.trk.endEmit()
	return nil
}

// Skip records that the shard's next record, at position pos, was read but
// goes to no stage (the source dropped it on purpose): the checkpoint may
// advance past pos once every record before it is done, so a shard whose
// records are all skipped is still checkpointed. It blocks and fails as
// [Lane.Emit] does.
func (l *Lane[T]) Skip(ctx context.Context, pos Position) error {
	idx, err := l.trk.beginEmit(ctx, l.ctx, pos, 0)
	if err != nil {
		return err
	}
	l.trk.endEmit()
	l.trk.complete(idx, nil)
	return nil
}

// Heartbeat records that the source's reader of this shard made a
// successful read call, whether or not it returned records. A source that
// calls it is watched by the stall watchdog: a shard whose reader made no
// successful call for [Options].StallTimeout is reported stalled at stage
// "source". It is cheap, safe for concurrent use, and meant once per call,
// not per record.
func (l *Lane[T]) Heartbeat() { l.lastRead.Store(l.r.now()) }

// wakeLocked wakes the lane's goroutine if it sleeps. Called with qmu held.
func (l *Lane[T]) wakeLocked() {
	if l.idle {
		l.idle = false
		select {
		case l.notify <- struct{}{}:
		default:
		}
	}
}

// End declares the shard closed (resharded) after its last record was
// emitted: it waits until every record of the shard is done, then saves the
// shard's checkpoint as SHARD_END so that readers move on to its children.
// It returns the failure of a record of the shard, if one failed, without
// saving SHARD_END, or ctx's error.
func (l *Lane[T]) End(ctx context.Context) error {
	if err := l.finish(ctx); err != nil {
		return err
	}
	defer l.r.removeLane(l)
	if _, _, _, err := l.trk.progress(); err != nil {
		return err
	}
	if err := l.saveProgress(ctx, true); err != nil {
		return err
	}
	l.log.Info("shard ended and checkpointed at SHARD_END")
	return nil
}

// Close stops the lane of a shard that is not finished (the source hands it
// to another reader): it waits, within ctx, until the records already emitted
// are done, then saves the checkpoint as far as they got.
//
// When ctx ends before the records are done, the checkpoint is still saved
// as far as they got, within closeSaveTimeout of that: the lease is still
// this instance's until the source releases it, and every record saved is
// one the next owner does not read again.
func (l *Lane[T]) Close(ctx context.Context) error {
	waitErr := l.finish(ctx)
	defer l.r.removeLane(l)
	saveCtx := ctx
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		saveCtx, cancel = context.WithTimeout(context.WithoutCancel(ctx), closeSaveTimeout)
		defer cancel()
	}
	if err := l.saveProgress(saveCtx, false); err != nil {
		return errors.Join(waitErr, err)
	}
	return waitErr
}

// closeSaveTimeout bounds the checkpoint save of a Close whose wait ran out.
const closeSaveTimeout = 2 * time.Second

// Abandon stops the lane at once, without waiting for its records and
// without saving its checkpoint again: the source lost the shard, and its new
// owner will process the records in flight here again.
func (l *Lane[T]) Abandon() {
	l.lost.Store(true)
	l.shutdown(ErrLaneClosed)
	l.cancel(ErrLaneClosed)
	l.r.removeLane(l)
}

// finish stops taking records, lets the lane's goroutine drain them, flushes
// the sink and waits until every record is done or failed.
func (l *Lane[T]) finish(ctx context.Context) error {
	l.shutdown(ErrLaneClosed)
	select {
	case <-l.exited:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	if err := l.r.flush(ctx); err != nil {
		return err
	}
	return l.waitIdle(ctx)
}

func (l *Lane[T]) shutdown(err error) {
	l.trk.close(err)
	l.qmu.Lock()
	l.closed = true
	l.idle = true // force a wake-up even if the goroutine is busy: it rechecks
	l.wakeLocked()
	l.qmu.Unlock()
}

// waitIdle waits until every emitted record is done, a record failed, or
// the lane's or ctx's end.
func (l *Lane[T]) waitIdle(ctx context.Context) error {
	return l.trk.waitIdle(ctx, l.ctx)
}

// saveProgress saves the checkpoint if it moved since the last save (or, with
// end, saves SHARD_END).
func (l *Lane[T]) saveProgress(ctx context.Context, end bool) error {
	if l.store == nil {
		return nil
	}
	l.saveMu.Lock()
	defer l.saveMu.Unlock()
	if l.lost.Load() {
		return nil
	}
	head, _, last, _ := l.trk.progress()
	if !end && head == l.savedHead {
		return nil
	}
	err := l.store.Save(ctx, l.stream, l.shard, Checkpoint{Position: last, ShardEnd: end})
	if err != nil && !errors.Is(err, ErrLeaseLost) && ctx.Err() == nil {
		l.r.metrics.saveFailures.Add(context.Background(), 1, l.env.streamAttrs())
	}
	if err != nil {
		if errors.Is(err, ErrLeaseLost) {
			l.log.Warn("lease lost: stopping the shard's lane", "err", err)
			l.lost.Store(true)
			l.shutdown(ErrLeaseLost)
			l.cancel(ErrLeaseLost)
			l.r.removeLane(l)
		}
		return fmt.Errorf("save checkpoint of shard %s/%s: %w", l.stream, l.shard, err)
	}
	l.savedHead = head
	l.trk.markSaved(head)
	l.r.metrics.saves.Add(context.Background(), 1, l.env.streamAttrs())
	l.log.Debug("checkpoint saved", "sequence_number", last.SequenceNumber,
		"sub_sequence_number", last.SubSequenceNumber, "shard_end", end)
	return nil
}

// loop is the lane's goroutine: it runs each record through the stages, in
// order, fires linger timers, and on shutdown drains what was emitted and
// flushes partial batches.
func (l *Lane[T]) loop() {
	defer l.r.wg.Done()
	defer close(l.exited)
	defer l.publish()
	l.qmu.Lock()
	l.gid = goroutineID()
	l.qmu.Unlock()
	env := l.env
	done := l.ctx.Done()
	defer func() {
		if env.timer != nil {
			env.timer.Stop()
		}
	}()
	yielded := false
	for {
		l.qmu.Lock()
		closed := l.closed
		if len(l.queue) == 0 && !closed && !yielded {
			// Yield once before sleeping: a source in the middle of a
			// batch of records usually emits more right away, and a
			// sleep and wake-up costs more than a yield.
			l.qmu.Unlock()
			yielded = true
			runtime.Gosched()
			continue
		}
		yielded = false
		// Swap the queue with the spare slice: the two alternate, so the
		// source never appends to the slice being processed.
		batch := l.queue
		l.queue = l.spare[:0]
		if len(batch) == 0 && !closed {
			l.idle = true
		}
		if len(batch) > 0 {
			l.busySince = l.r.clock.Load()
			l.taken = batch[len(batch)-1].tok.idx + 1
			l.pushed += uint64(len(batch))
		} else {
			l.busySince = 0
		}
		l.qmu.Unlock()

		for i := range batch {
			select {
			case <-done:
				return // failed or timed out: what is left is not processed
			default:
			}
			l.entry.push(l.ctx, batch[i])
			batch[i] = item[T]{} // let the value be collected
		}
		l.spare = batch[:0]
		if len(batch) > 0 {
			l.tickIfDue()
			if l.r.clock.Load() != l.pubTick {
				l.publish()
			}
			continue
		}
		l.publish() // going idle: the counts are exact now
		if closed {
			select {
			case <-done:
			default:
				l.entry.flush(l.ctx)
			}
			return
		}
		var timer <-chan time.Time
		if env.timer != nil && !env.next.IsZero() {
			timer = env.timer.C
		}
		select {
		case <-l.notify:
		case now := <-timer:
			env.next = time.Time{}
			l.markBusy(true)
			l.entry.tick(l.ctx, now)
			l.markBusy(false)
		case <-done:
			return
		}
	}
}

// markBusy tells the watchdog that the goroutine works outside a batch of
// records (a linger tick), or stopped.
func (l *Lane[T]) markBusy(busy bool) {
	l.qmu.Lock()
	l.busySince = 0
	if busy {
		l.busySince = l.r.clock.Load()
	}
	l.qmu.Unlock()
}

// tickIfDue fires a due linger timer while the lane is busy.
func (l *Lane[T]) tickIfDue() {
	env := l.env
	if env.timer == nil || env.next.IsZero() {
		return
	}
	select {
	case now := <-env.timer.C:
		env.next = time.Time{}
		l.entry.tick(l.ctx, now)
	default:
	}
}

// laneEnv is the non-generic state of a lane that stage nodes use.
type laneEnv struct {
	stream, shard string
	log           *slog.Logger
	entry         any // node[T] of the lane's element type, set by the source stage

	timer *time.Timer
	next  time.Time

	metrics    *pipelineMetrics
	clock      *atomic.Int64 // the run clock
	shardAttrs attribute.Set
	stages     []*nodeStats // the chain's stages, first to last
	streamOpt  metric.MeasurementOption

	goroutines  *sync.WaitGroup // the run's: a key worker's goroutine counts in it
	publishAcks func()          // the lane's publishAcks

	// With ByKey: in the env of a key worker's chain, the lane's env and
	// the worker's index; in the lane's env, ByKey's node while it is
	// wired (split), then its workers (keys).
	parent *laneEnv
	worker int
	split  any
	keys   keyWorkers
}

// workerEnv returns the env of the chain of key worker i of the lane whose
// env is e: e's identity and instruments, and stages, timer and entry of its
// own.
func (e *laneEnv) workerEnv(i int) *laneEnv {
	return &laneEnv{stream: e.stream, shard: e.shard, log: e.log, metrics: e.metrics, clock: e.clock,
		shardAttrs: e.shardAttrs, streamOpt: e.streamOpt, goroutines: e.goroutines, publishAcks: e.publishAcks,
		parent: e, worker: i}
}

// nextEnv returns, for the lane's env with ByKey, the env of the first key
// worker's chain; else nil.
func (e *laneEnv) nextEnv() *laneEnv {
	if e.keys == nil {
		return nil
	}
	return e.keys.firstChain()
}

// lastStats returns the stats of the last stage of the lane: its sink
// (with ByKey, the first key worker's).
func (e *laneEnv) lastStats() *nodeStats {
	for next := e.nextEnv(); next != nil; next = next.nextEnv() {
		e = next
	}
	if len(e.stages) == 0 {
		return nil
	}
	return e.stages[len(e.stages)-1]
}

// streamAttrs is the {stream} attribute option of the lane's metrics.
func (e *laneEnv) streamAttrs() metric.MeasurementOption { return e.streamOpt }

// schedule asks for a tick at or soon after at. Called on the lane's
// goroutine only.
func (e *laneEnv) schedule(at time.Time) {
	if !e.next.IsZero() && !at.Before(e.next) {
		return
	}
	e.next = at
	d := time.Until(at)
	if e.timer == nil {
		e.timer = time.NewTimer(d)
	} else {
		e.timer.Reset(d)
	}
}
