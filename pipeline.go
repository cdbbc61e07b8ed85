package shardflow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shardflow/shardflow/internal/telemetry"
)

// Source starts a pipeline that reads from src. optFns adjust the pipeline's
// [Options]; invalid options are reported by [Pipeline.Run].
func Source[T any](src ShardSource[T], optFns ...func(*Options)) *Stream[T] {
	p := &plan{}
	for _, fn := range optFns {
		fn(&p.opts)
	}
	if err := p.opts.resolve(); err != nil {
		p.setErr(err)
	}
	if src == nil {
		p.setErr(&ConfigError{Field: "Source", Reason: "nil source"})
	}
	p.runSource = func(ctx context.Context, r *run) error {
		return src.Run(ctx, &Shards[T]{r: r})
	}
	p.loggers = append(p.loggers, src)
	p.src = src
	return &Stream[T]{p: p, attach: func(env *laneEnv, down node[T]) { env.entry = down }}
}

// plan is what the builder methods collect: options, the source, and the
// first configuration error.
type plan struct {
	opts      Options
	runSource func(ctx context.Context, r *run) error
	loggers   []any // the source and the sink: PipelineLogger candidates
	src       any   // the source, for Ready
	nstages   int
	// keyWorkers is n of the pipeline's ByKey stage (0: none, or n = 1):
	// each lane runs the stages after it on that many key workers.
	keyWorkers int
	byKey      string // the ByKey stage's name
	mu         sync.Mutex
	err        error
}

func (p *plan) setErr(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
}

// Pipeline is a complete chain from a source to a sink, ready to [Pipeline.Run].
type Pipeline struct {
	p      *plan
	attach func(env *laneEnv)
	flush  func(ctx context.Context) error
	ran    atomic.Bool
	cur    atomic.Pointer[run] // the run in progress, for Status
}

// Run runs the pipeline until the source is exhausted, ctx is cancelled, or a
// record fails for good, and returns only when every lane has stopped.
//
// Cancelling ctx drains the pipeline: the source stops reading, records
// already read finish, partial batches and the sink are flushed, and each
// shard's final checkpoint is saved; all within [Options].DrainTimeout,
// counted from the cancel (or from the source's return), so Run returns
// within DrainTimeout of the cancel once the source returned. A
// clean drain, like an exhausted source, returns nil. Run returns a
// [*StageError] when a record failed a stage (it is not checkpointed, nor
// anything after it in its shard), [ErrDrainTimeout] when the drain ran out of
// time, a [*ConfigError] when the pipeline was built wrong, and the source's
// error when it failed. Run may be called once.
func (pl *Pipeline) Run(ctx context.Context) error { return pl.run(ctx, nil) }

// errStopped ends a run that [Each] stopped because its loop ended: the
// source stops and the lanes stop at once (the records the loop did not
// finish are not done), then the final checkpoints are saved.
var errStopped = errors.New("shardflow: the loop over the source ended")

// run is Run; when stop is not nil, its end stops the run as errStopped
// says, and a run stopped so returns nil unless the final saves failed.
func (pl *Pipeline) run(ctx, stop context.Context) error {
	if !pl.ran.CompareAndSwap(false, true) {
		return ErrAlreadyRun
	}
	if err := pl.p.err; err != nil {
		return err
	}
	o := pl.p.opts
	for _, c := range pl.p.loggers {
		if lu, ok := c.(PipelineLogger); ok {
			lu.UsePipelineLogger(o.Logger)
		}
		if mu, ok := c.(PipelineMeterProvider); ok {
			mu.UsePipelineMeterProvider(o.MeterProvider)
		}
	}
	metrics, err := newPipelineMetrics(o.MeterProvider)
	if err != nil {
		return &ConfigError{Field: "Options.MeterProvider", Reason: err.Error()}
	}
	r := &run{
		start:      time.Now(),
		opts:       o,
		attach:     pl.attach,
		flush:      pl.flush,
		keyWorkers: pl.p.keyWorkers,
		lanes:      make(map[string]laneHandle),
		log:        o.Logger.With("component", "shardflow.pipeline"),
		metrics:    metrics,
		stalls:     make(map[laneHandle]*stallState),
		saveDue:    make(chan struct{}, 1),
	}
	r.clock.Store(r.now())
	if reg, err := telemetry.Meter(o.MeterProvider).RegisterCallback(r.observe,
		metrics.inFlight, metrics.lagSeconds, metrics.stalled); err == nil {
		defer func() { _ = reg.Unregister() }()
	} else {
		r.log.Warn("pipeline gauges not registered", "err", err)
	}
	pl.cur.Store(r)
	defer func() {
		r.mu.Lock()
		r.finished = true
		r.mu.Unlock()
	}()
	monCtx, stopMonitor := context.WithCancel(context.Background())
	monDone := make(chan struct{})
	go func() {
		defer close(monDone)
		r.monitor(monCtx)
	}()
	defer func() {
		stopMonitor()
		<-monDone
	}()
	r.srcCtx, r.cancelSrc = context.WithCancelCause(ctx)
	r.procCtx, r.cancelProc = context.WithCancelCause(context.WithoutCancel(ctx))
	defer r.cancelSrc(nil)
	defer r.cancelProc(nil)
	if stop != nil {
		defer context.AfterFunc(stop, func() {
			r.cancelSrc(errStopped)
			r.cancelProc(errStopped)
		})()
	}

	cpCtx, stopCheckpoints := context.WithCancel(r.procCtx)
	cpDone := make(chan struct{})
	go func() {
		defer close(cpDone)
		r.checkpointLoop(cpCtx)
	}()

	// The drain clock starts when ctx is cancelled or the source returns,
	// whichever comes first.
	stopWatch := context.AfterFunc(ctx, r.startDrainClock)
	srcErr := pl.p.runSource(r.srcCtx, r)
	stopWatch()
	r.startDrainClock()
	defer r.stopDrainClock()
	if srcErr != nil && !(r.srcCtx.Err() != nil && isContextErr(srcErr, r.srcCtx)) {
		r.fail(fmt.Errorf("source: %w", srcErr))
	}

	r.mu.Lock()
	r.closing = true
	r.mu.Unlock()
	for _, l := range r.openLanes() {
		l.shutdown(ErrLaneClosed)
	}
	r.wg.Wait()
	if r.procCtx.Err() == nil {
		if err := r.flush(r.procCtx); err != nil && r.procCtx.Err() == nil {
			r.fail(err)
		}
	}
	for _, l := range r.openLanes() {
		_ = l.waitIdle(r.procCtx) // failures are in r.err; timeouts in procCtx
	}
	stopCheckpoints()
	<-cpDone

	// The final saves get what is left of the drain's one budget: the whole
	// Run ends within DrainTimeout of the drain's start.
	saveCtx, cancelSave := context.WithDeadline(context.WithoutCancel(ctx), r.drainDeadline())
	defer cancelSave()
	var errs []error
	for _, l := range r.openLanes() {
		if err := l.saveProgress(saveCtx, false); err != nil && !errors.Is(err, ErrLeaseLost) {
			errs = append(errs, err)
		}
		l.publishAcks()
	}

	r.mu.Lock()
	failure := r.err
	r.mu.Unlock()
	switch {
	case failure != nil:
		errs = append([]error{failure}, errs...)
	case errors.Is(context.Cause(r.procCtx), ErrDrainTimeout):
		errs = append([]error{ErrDrainTimeout}, errs...)
	}
	if len(errs) == 0 {
		r.log.Info("pipeline stopped cleanly")
	}
	return errors.Join(errs...)
}

func isContextErr(err error, ctx context.Context) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, context.Cause(ctx))
}

// laneHandle is the element-type-free view of a lane the run needs.
type laneHandle interface {
	shutdown(err error)
	waitIdle(ctx context.Context) error
	saveProgress(ctx context.Context, end bool) error
	takeSaveDue() bool
	saveAsked() bool
	startSave() bool // false: a save of the lane's is under way
	endSave()
	laneKey() string

	// For metrics, the watchdog and Status.
	publishAcks()
	watch(now int64) laneWatch
	progress() (head, tail uint64, last Position, err error)
	stageNames() []string
	blockedIn(stacks *stackDump) (stage, detail string, ok bool)
	heldInBatch(idx uint64) (string, bool)
	heldByKeyWorker(idx uint64, stacks *stackDump) (stage, detail string, ok bool)
	keyWorkerBlocked(busyBefore int64, stacks *stackDump) (stage, detail string, ok bool)
}

func (l *Lane[T]) progress() (head, tail uint64, last Position, err error) { return l.trk.progress() }

func (l *Lane[T]) laneKey() string { return l.key }

func (l *Lane[T]) takeSaveDue() bool { return l.saveDue.Swap(false) }

func (l *Lane[T]) saveAsked() bool { return l.saveDue.Load() }

func (l *Lane[T]) startSave() bool { return l.saving.CompareAndSwap(false, true) }

func (l *Lane[T]) endSave() {
	l.saving.Store(false)
	// A save asked for (CheckpointEvery) while this one ran was skipped:
	// wake the loop for it.
	if l.saveDue.Load() {
		select {
		case l.r.saveDue <- struct{}{}:
		default:
		}
	}
}

// run is the state of one Pipeline.Run.
type run struct {
	opts       Options
	attach     func(env *laneEnv)
	flush      func(ctx context.Context) error
	log        *slog.Logger
	keyWorkers int // see plan.keyWorkers

	// srcCtx is the source's: it ends when Run's ctx does or on failure.
	srcCtx    context.Context
	cancelSrc context.CancelCauseFunc
	// procCtx is the stages': it outlives Run's ctx for the drain, and ends
	// on failure or when the drain times out.
	procCtx    context.Context
	cancelProc context.CancelCauseFunc

	mu      sync.Mutex
	lanes   map[string]laneHandle
	closing bool
	err     error
	wg      sync.WaitGroup // lane goroutines

	start   time.Time    // Run's start: the run clock counts from it
	clock   atomic.Int64 // the run clock, coarse: updated each clockTick
	metrics *pipelineMetrics
	stalls  map[laneHandle]*stallState // the watchdog's, by lane; under mu
	// stallReports queues reports for OnStall (see notifyStall); the
	// monitor's own.
	stallReports chan StallReport
	finished     bool // Run returned; under mu

	// saveDue wakes checkpointLoop when a lane asks for a save before the
	// interval (CheckpointEvery); the lanes that asked are flagged.
	saveDue chan struct{}

	drainOnce  sync.Once
	drainTimer *time.Timer
	drainEnd   time.Time // when the drain's budget runs out; under mu
}

// now is the run clock: nanoseconds since Run started, at least 1.
func (r *run) now() int64 { return max(int64(time.Since(r.start)), 1) }

// fail records the first failure and stops the pipeline.
func (r *run) fail(err error) {
	r.mu.Lock()
	// Once the pipeline is stopping (an earlier failure, or the drain timed
	// out), later failures are consequences of that: keep the first cause.
	first := r.err == nil && r.procCtx.Err() == nil
	if first {
		r.err = err
	}
	r.mu.Unlock()
	if first {
		r.log.Error("pipeline stopping on failure", "err", err)
	}
	r.cancelSrc(err)
	r.cancelProc(err)
}

func (r *run) removeLane(l laneHandle) {
	l.publishAcks()
	r.mu.Lock()
	if cur, ok := r.lanes[l.laneKey()]; ok && cur == l {
		delete(r.lanes, l.laneKey())
	}
	r.mu.Unlock()
}

func (r *run) openLanes() []laneHandle {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := slices.Sorted(maps.Keys(r.lanes))
	out := make([]laneHandle, len(keys))
	for i, k := range keys {
		out[i] = r.lanes[k]
	}
	return out
}

// startDrainClock starts the drain's one budget, DrainTimeout: records in
// flight get it less the share kept for the final checkpoint saves
// (saveReserve), the saves get what is left of it.
func (r *run) startDrainClock() {
	r.drainOnce.Do(func() {
		d := r.opts.DrainTimeout
		r.mu.Lock()
		r.drainEnd = time.Now().Add(d)
		r.drainTimer = time.AfterFunc(d-saveReserve(d), func() { r.cancelProc(ErrDrainTimeout) })
		r.mu.Unlock()
	})
}

// saveReserve is the share of a drain budget d kept for the final
// checkpoint saves when records are still in flight: a fifth of d, at most
// 5s.
func saveReserve(d time.Duration) time.Duration { return min(d/5, 5*time.Second) }

func (r *run) drainDeadline() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.drainEnd
}

func (r *run) stopDrainClock() {
	r.mu.Lock()
	if r.drainTimer != nil {
		r.drainTimer.Stop()
	}
	r.mu.Unlock()
}

// checkpointLoop saves every lane's checkpoint that moved, each interval,
// and the checkpoints of the lanes that asked for a save (CheckpointEvery).
// Saves of different lanes run concurrently (at most saveConcurrency at a
// time), so that one slow or stuck save holds up only its own shard; a
// lane whose save is still under way is skipped until it is done.
func (r *run) checkpointLoop(ctx context.Context) {
	t := time.NewTicker(r.opts.CheckpointInterval)
	defer t.Stop()
	sem := make(chan struct{}, saveConcurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		due := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.saveDue:
			due = true
		}
		for _, l := range r.openLanes() {
			if due && !l.saveAsked() {
				continue
			}
			if !l.startSave() {
				continue // its last save is still under way: endSave wakes the loop if asked
			}
			l.takeSaveDue()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				l.endSave()
				return
			}
			wg.Go(func() {
				defer func() { <-sem }()
				defer l.endSave()
				if err := l.saveProgress(ctx, false); err != nil && ctx.Err() == nil && !errors.Is(err, ErrLeaseLost) {
					r.log.Warn("checkpoint not saved; retrying next interval", "err", err)
				}
			})
		}
	}
}

// saveConcurrency bounds the checkpoint saves checkpointLoop runs at once.
const saveConcurrency = 16
