package shardflow

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"runtime/debug"
	"time"

	"github.com/shardflow/shardflow/internal/retry"
)

// Stream is a typed stage of a pipeline under construction: the values of
// type T that come out of the stages before it. Build it with [Source], the
// methods below and [Batch], and finish it with [Stream.Sink]. The methods
// only describe the pipeline; nothing runs before [Pipeline.Run].
//
// A Stream feeds exactly one stage: building a second stage from the same
// Stream (branching) is a [*ConfigError], reported by Run.
type Stream[T any] struct {
	p *plan
	// attach wires a lane's nodes: it is given the downstream node for T and
	// wires it below the upstream ones.
	attach func(env *laneEnv, down node[T])
	// usedBy names the stage built from this Stream; under p.mu.
	usedBy string
}

// feed registers stage as the one stage s feeds, or reports a second one.
func (s *Stream[T]) feed(stage string) {
	s.p.mu.Lock()
	first := s.usedBy
	if first == "" {
		s.usedBy = stage
	}
	s.p.mu.Unlock()
	if first != "" {
		s.p.setErr(&ConfigError{Field: stage, Reason: fmt.Sprintf(
			"its input Stream already feeds %s: a Stream feeds one stage (branching is not supported)", first)})
	}
}

// DeadLetter returns s with handle as the dead-letter handler of the one
// stage built next from it: d.Map, d.Filter, d.FlatMap, d.Tap or d.Sink.
// handle takes that stage's input, so the compiler checks its type:
//
//	records.DeadLetter(quarantine).Map(decode) // quarantine: func(ctx, shardflow.Record, error) error
//
// A record that fails that stage for good (after its retries) is handed to
// handle with its error instead of stopping the pipeline. The error is a
// [*DeadLetter]: it reads and unwraps as the stage's error, and carries the
// provenance (stream, shard, position, arrival time, attempts, first and
// last error) for a destination that keeps it, such as
// kinesissink.DeadLetterTo. When handle returns nil the record counts as
// done and its shard's checkpoint may pass it; when handle fails too, the
// pipeline stops with both errors. handle is called on
// the shard's goroutine (a key worker's, after [ByKey]), or on the sink's
// goroutine for records a sink failed after accepting them; it must be safe
// for concurrent use across shards and key workers. A
// nil handle means no dead-letter handler: the stage's failures stop the
// pipeline, as without DeadLetter.
func (s *Stream[T]) DeadLetter(handle func(ctx context.Context, v T, err error) error) *DeadLettered[T] {
	return &DeadLettered[T]{s: s, handle: handle}
}

// DeadLettered is a [Stream] whose next stage has a dead-letter handler; see
// [Stream.DeadLetter]. Its methods build that stage as the Stream methods of
// the same names do and return a plain Stream (or Pipeline).
type DeadLettered[T any] struct {
	s      *Stream[T]
	handle func(context.Context, T, error) error
}

// Sink is where a pipeline's values end up: the Kinesis sink, the test kit's
// collecting sink, or user code. Write is called on the shard's goroutine, in
// shard order, and concurrently across shards; after [ByKey], on the shard's
// key workers, in order per key and concurrently within a shard.
type Sink[T any] interface {
	// Write takes v. When it returns nil, the sink owns v and must call
	// ack.Done exactly once, now or later, from any goroutine: with nil once v
	// is durable, or with the error it gave up with. When Write returns an
	// error, v was not taken and ack must not be called; the stage retries
	// Write per its retry policy, then applies its failure policy.
	Write(ctx context.Context, v T, ack Ack) error
	// Flush asks the sink to write what it buffers now and returns once it
	// did (acks may still follow). It may be called concurrently with Write
	// and more than once.
	Flush(ctx context.Context) error
}

// SinkFunc adapts a synchronous function to a [Sink]: each value is durable
// once the function returned nil.
type SinkFunc[T any] func(ctx context.Context, v T) error

// Write calls f and acknowledges v when f returns nil.
func (f SinkFunc[T]) Write(ctx context.Context, v T, ack Ack) error {
	if err := f(ctx, v); err != nil {
		return err
	}
	ack.Done(nil)
	return nil
}

// Flush does nothing: a SinkFunc buffers nothing.
func (f SinkFunc[T]) Flush(context.Context) error { return nil }

// item is a value in flight with the token of the record(s) it came from.
type item[T any] struct {
	v   T
	tok token
}

// node is one stage of one lane. Nodes of a lane are called on the lane's
// goroutine only.
type node[T any] interface {
	// push handles one value; failures are reported through its token.
	push(ctx context.Context, it item[T])
	// tick lets time-driven nodes emit what is due, then passes it on.
	tick(ctx context.Context, now time.Time)
	// flush emits everything held, then passes it on.
	flush(ctx context.Context)
}

// stage is the lane-independent part of a stage.
type stage struct {
	name   string
	retry  retry.Policy
	maxAge time.Duration // RetryPolicy.MaxRecordAge; 0: none
	bisect bool          // RetryPolicy.Bisect, for a stage whose input is a slice
	log    *slog.Logger
}

// newStage registers a stage of kind, fed by in, with its options. retries
// says whether the stage calls a handler that WithRetry can apply to.
func newStage[In any](in *Stream[In], kind string, fnNil, retries bool, opts []StageOption) *stage {
	p := in.p
	p.mu.Lock()
	p.nstages++
	n := p.nstages
	p.mu.Unlock()
	cfg := stageConfig{name: fmt.Sprintf("%s#%d", kind, n)}
	if kind == "sink" {
		cfg.name = "sink"
	}
	for _, o := range opts {
		if o != nil {
			o.applyStage(&cfg)
		}
	}
	in.feed(cfg.name)
	if fnNil {
		p.setErr(&ConfigError{Field: cfg.name, Reason: "nil handler"})
	}
	pol := p.opts.Retry
	sliceIn := reflect.TypeFor[In]().Kind() == reflect.Slice
	if cfg.retry != nil {
		if !retries {
			p.setErr(&ConfigError{Field: cfg.name, Reason: "WithRetry: a " + kind + " stage calls no handler to retry"})
		}
		if err := cfg.retry.validate(cfg.name + " retry"); err != nil {
			p.setErr(err)
		}
		if cfg.retry.Bisect && !sliceIn {
			p.setErr(&ConfigError{Field: cfg.name + " retry.Bisect", Reason: "the stage's input is not a slice: there is no batch to split"})
		}
		pol = *cfg.retry
	}
	return &stage{name: cfg.name, retry: pol.resolve(), maxAge: pol.MaxRecordAge, bisect: pol.Bisect && sliceIn, log: p.opts.Logger}
}

// protect calls f, turning a panic into a *PanicError.
func protect[In, Out any](ctx context.Context, f func(context.Context, In) (Out, error), v In) (out Out, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	return f(ctx, v)
}

// invoke calls f with v under the stage's retry policy; a value that
// failed for good gets a *failedCalls (see retryCall). tok is v's token, for
// the record's age. Panics are not retried.
func invoke[In, Out any](ctx context.Context, st *stage, env *laneEnv, c *nodeStats, f func(context.Context, In) (Out, error), v In, tok token) (Out, error) {
	if c.sample() {
		start := time.Now()
		defer c.timed(ctx, env.metrics, start)
	}
	out, err := protect(ctx, f, v)
	if err == nil {
		return out, nil
	}
	return retryInvoke(ctx, st, env, c, f, v, tok, err)
}

// retryInvoke is invoke's retries, out of its way.
func retryInvoke[In, Out any](ctx context.Context, st *stage, env *laneEnv, c *nodeStats, f func(context.Context, In) (Out, error), v In, tok token, err error) (Out, error) {
	var out Out
	err = retryCall(ctx, st, env, c, tok, err, "handler", func() error {
		var e error
		out, e = protect(ctx, f, v)
		return e
	})
	return out, err
}

// failed applies the failure policy of a stage with handler f to a value
// that failed for good: with Bisect, the parts of a batch that fail on
// their own go to settleFailure and the others to pass (the stage's own
// way of passing f's output on), else the whole value goes to
// settleFailure. It returns how many outcomes (parts passed on or
// settled) the value had, for the stage's counts of values out.
func failed[In, Out any](ctx context.Context, st *stage, env *laneEnv, c *nodeStats, dl func(context.Context, In, error) error,
	f func(context.Context, In) (Out, error), pass func(In, Out, token), it item[In], err error) int {
	if st.bisect {
		try := func(part In, t token) error {
			out, err := protect(ctx, f, part)
			if err == nil {
				pass(part, out, t)
			}
			return err
		}
		settle := func(part In, t token, err error) { settleFailure(ctx, st, env, c, true, dl, part, t, err) }
		if parts, ok := bisect(ctx, it.v, it.tok, err, try, settle); ok {
			return parts
		}
	}
	settleFailure(ctx, st, env, c, true, dl, it.v, it.tok, err)
	return 1
}

// Map applies f to each value. A record whose f fails for good is handled by
// the stage's failure policy.
func (s *Stream[T]) Map[U any](f func(context.Context, T) (U, error), opts ...StageOption) *Stream[U] {
	return mapStage(s, f, nil, opts)
}

// Map is [Stream.Map] with the dead-letter handler.
func (d *DeadLettered[T]) Map[U any](f func(context.Context, T) (U, error), opts ...StageOption) *Stream[U] {
	return mapStage(d.s, f, d.handle, opts)
}

func mapStage[T, U any](s *Stream[T], f func(context.Context, T) (U, error), dl func(context.Context, T, error) error, opts []StageOption) *Stream[U] {
	st := newStage(s, "map", f == nil, true, opts)
	return &Stream[U]{p: s.p, attach: func(env *laneEnv, down node[U]) {
		s.attach(env, &mapNode[T, U]{st: st, env: env, c: env.addStage(st, kindPlain), f: f, dl: dl, next: down})
	}}
}

type mapNode[In, Out any] struct {
	st   *stage
	env  *laneEnv
	c    *nodeStats
	f    func(context.Context, In) (Out, error)
	dl   func(context.Context, In, error) error
	next node[Out]
}

func (n *mapNode[In, Out]) push(ctx context.Context, it item[In]) {
	out, err := invoke(ctx, n.st, n.env, n.c, n.f, it.v, it.tok)
	if err != nil {
		n.fail(ctx, it, err)
		return
	}
	n.next.push(ctx, item[Out]{v: out, tok: it.tok})
}

// fail applies the stage's failure policy to a value that failed for good.
func (n *mapNode[In, Out]) fail(ctx context.Context, it item[In], err error) {
	n.c.grown += int64(failed(ctx, n.st, n.env, n.c, n.dl, n.f, func(_ In, out Out, t token) {
		n.next.push(ctx, item[Out]{v: out, tok: t})
	}, it, err) - 1)
}

func (n *mapNode[In, Out]) tick(ctx context.Context, now time.Time) { n.next.tick(ctx, now) }
func (n *mapNode[In, Out]) flush(ctx context.Context)               { n.next.flush(ctx) }

// Filter keeps the values for which keep returns true. A dropped value's
// record is done at once, so the checkpoint may pass it.
func (s *Stream[T]) Filter(keep func(context.Context, T) (bool, error), opts ...StageOption) *Stream[T] {
	return filterStage(s, keep, nil, opts)
}

// Filter is [Stream.Filter] with the dead-letter handler.
func (d *DeadLettered[T]) Filter(keep func(context.Context, T) (bool, error), opts ...StageOption) *Stream[T] {
	return filterStage(d.s, keep, d.handle, opts)
}

func filterStage[T any](s *Stream[T], keep func(context.Context, T) (bool, error), dl func(context.Context, T, error) error, opts []StageOption) *Stream[T] {
	st := newStage(s, "filter", keep == nil, true, opts)
	return &Stream[T]{p: s.p, attach: func(env *laneEnv, down node[T]) {
		s.attach(env, &filterNode[T]{st: st, env: env, c: env.addStage(st, kindPlain), f: keep, dl: dl, next: down})
	}}
}

type filterNode[T any] struct {
	st   *stage
	env  *laneEnv
	c    *nodeStats
	f    func(context.Context, T) (bool, error)
	dl   func(context.Context, T, error) error
	next node[T]
}

func (n *filterNode[T]) push(ctx context.Context, it item[T]) {
	keep, err := invoke(ctx, n.st, n.env, n.c, n.f, it.v, it.tok)
	switch {
	case err != nil:
		n.fail(ctx, it, err)
	case keep:
		n.next.push(ctx, it)
	default:
		n.c.dropped++
		it.tok.done(nil)
	}
}

// fail applies the stage's failure policy to a value that failed for good.
func (n *filterNode[T]) fail(ctx context.Context, it item[T], err error) {
	n.c.grown += int64(failed(ctx, n.st, n.env, n.c, n.dl, n.f, func(part T, keep bool, t token) {
		if keep {
			n.next.push(ctx, item[T]{v: part, tok: t})
			return
		}
		n.c.dropped++
		t.done(nil)
	}, it, err) - 1)
}

func (n *filterNode[T]) tick(ctx context.Context, now time.Time) { n.next.tick(ctx, now) }
func (n *filterNode[T]) flush(ctx context.Context)               { n.next.flush(ctx) }

// FlatMap turns each value into zero or more values, in order. The record is
// done when all of its children are (at once, when there are none); if one
// child fails, the record fails.
func (s *Stream[T]) FlatMap[U any](f func(context.Context, T) ([]U, error), opts ...StageOption) *Stream[U] {
	return flatMapStage(s, f, nil, opts)
}

// FlatMap is [Stream.FlatMap] with the dead-letter handler.
func (d *DeadLettered[T]) FlatMap[U any](f func(context.Context, T) ([]U, error), opts ...StageOption) *Stream[U] {
	return flatMapStage(d.s, f, d.handle, opts)
}

func flatMapStage[T, U any](s *Stream[T], f func(context.Context, T) ([]U, error), dl func(context.Context, T, error) error, opts []StageOption) *Stream[U] {
	st := newStage(s, "flatmap", f == nil, true, opts)
	return &Stream[U]{p: s.p, attach: func(env *laneEnv, down node[U]) {
		s.attach(env, &flatMapNode[T, U]{st: st, env: env, c: env.addStage(st, kindPlain), f: f, dl: dl, next: down})
	}}
}

type flatMapNode[In, Out any] struct {
	st   *stage
	env  *laneEnv
	c    *nodeStats
	f    func(context.Context, In) ([]Out, error)
	dl   func(context.Context, In, error) error
	next node[Out]
}

func (n *flatMapNode[In, Out]) push(ctx context.Context, it item[In]) {
	outs, err := invoke(ctx, n.st, n.env, n.c, n.f, it.v, it.tok)
	if err != nil {
		n.fail(ctx, it, err)
		return
	}
	n.pass(ctx, outs, it.tok)
}

// fail applies the stage's failure policy to a value that failed for good.
func (n *flatMapNode[In, Out]) fail(ctx context.Context, it item[In], err error) {
	n.c.grown += int64(failed(ctx, n.st, n.env, n.c, n.dl, n.f, func(_ In, outs []Out, t token) {
		n.pass(ctx, outs, t)
	}, it, err) - 1)
}

// pass hands the values f gave for the record(s) of tok on.
func (n *flatMapNode[In, Out]) pass(ctx context.Context, outs []Out, tok token) {
	n.c.grown += int64(len(outs)) - 1
	if len(outs) == 0 {
		tok.done(nil)
		return
	}
	// Declare every child before the first can complete.
	tok.addRef(int32(len(outs) - 1))
	for _, o := range outs {
		n.next.push(ctx, item[Out]{v: o, tok: tok})
	}
}

func (n *flatMapNode[In, Out]) tick(ctx context.Context, now time.Time) { n.next.tick(ctx, now) }
func (n *flatMapNode[In, Out]) flush(ctx context.Context)               { n.next.flush(ctx) }

// Tap calls f with each value for its side effect and passes the value on
// unchanged.
func (s *Stream[T]) Tap(f func(context.Context, T) error, opts ...StageOption) *Stream[T] {
	return tapStage(s, f, nil, opts)
}

// Tap is [Stream.Tap] with the dead-letter handler.
func (d *DeadLettered[T]) Tap(f func(context.Context, T) error, opts ...StageOption) *Stream[T] {
	return tapStage(d.s, f, d.handle, opts)
}

func tapStage[T any](s *Stream[T], f func(context.Context, T) error, dl func(context.Context, T, error) error, opts []StageOption) *Stream[T] {
	var g func(context.Context, T) (struct{}, error)
	if f != nil {
		g = func(ctx context.Context, v T) (struct{}, error) { return struct{}{}, f(ctx, v) }
	}
	st := newStage(s, "tap", f == nil, true, opts)
	return &Stream[T]{p: s.p, attach: func(env *laneEnv, down node[T]) {
		s.attach(env, &tapNode[T]{st: st, env: env, c: env.addStage(st, kindPlain), f: g, dl: dl, next: down})
	}}
}

type tapNode[T any] struct {
	st   *stage
	env  *laneEnv
	c    *nodeStats
	f    func(context.Context, T) (struct{}, error)
	dl   func(context.Context, T, error) error
	next node[T]
}

func (n *tapNode[T]) push(ctx context.Context, it item[T]) {
	if _, err := invoke(ctx, n.st, n.env, n.c, n.f, it.v, it.tok); err != nil {
		n.fail(ctx, it, err)
		return
	}
	n.next.push(ctx, it)
}

// fail applies the stage's failure policy to a value that failed for good.
func (n *tapNode[T]) fail(ctx context.Context, it item[T], err error) {
	n.c.grown += int64(failed(ctx, n.st, n.env, n.c, n.dl, n.f, func(part T, _ struct{}, t token) {
		n.next.push(ctx, item[T]{v: part, tok: t})
	}, it, err) - 1)
}

func (n *tapNode[T]) tick(ctx context.Context, now time.Time) { n.next.tick(ctx, now) }
func (n *tapNode[T]) flush(ctx context.Context)               { n.next.flush(ctx) }

// Sink ends the pipeline in sink. The stage's retry policy applies to errors
// returned by sink.Write; its failure policy to those and to errors the sink
// reports through Ack.Done.
func (s *Stream[T]) Sink(sink Sink[T], opts ...StageOption) *Pipeline {
	return sinkStage(s, sink, nil, opts)
}

// Sink is [Stream.Sink] with the dead-letter handler: it also takes the
// records the sink fails through their [Ack].
func (d *DeadLettered[T]) Sink(sink Sink[T], opts ...StageOption) *Pipeline {
	return sinkStage(d.s, sink, d.handle, opts)
}

func sinkStage[T any](s *Stream[T], sink Sink[T], dl func(context.Context, T, error) error, opts []StageOption) *Pipeline {
	st := newStage(s, "sink", sink == nil, true, opts)
	s.p.loggers = append(s.p.loggers, sink)
	pl := &Pipeline{p: s.p}
	pl.attach = func(env *laneEnv) {
		s.attach(env, &sinkNode[T]{st: st, env: env, c: env.addStage(st, kindSink), sink: sink, dl: dl})
	}
	pl.flush = func(ctx context.Context) error {
		if err := sink.Flush(ctx); err != nil {
			return fmt.Errorf("stage %q: flush: %w", st.name, err)
		}
		return nil
	}
	return pl
}

type sinkNode[T any] struct {
	st   *stage
	env  *laneEnv
	c    *nodeStats
	sink Sink[T]
	dl   func(context.Context, T, error) error
}

func (n *sinkNode[T]) push(ctx context.Context, it item[T]) {
	if n.c.sample() {
		start := time.Now()
		defer n.c.timed(ctx, n.env.metrics, start)
	}
	ack := n.ack(ctx, it.v, it.tok)
	err := n.write(ctx, it.v, ack)
	if err == nil {
		return
	}
	n.fail(ctx, it, ack, err)
}

// fail retries a Write that failed, under the stage's retry policy, then
// applies its failure policy.
func (n *sinkNode[T]) fail(ctx context.Context, it item[T], ack Ack, err error) {
	err = retryCall(ctx, n.st, n.env, n.c, it.tok, err, "sink write", func() error { return n.write(ctx, it.v, ack) })
	if err == nil {
		return
	}
	if n.st.bisect {
		try := func(part T, t token) error { return n.write(ctx, part, n.ack(ctx, part, t)) }
		settle := func(part T, t token, err error) { settleFailure(ctx, n.st, n.env, n.c, true, n.dl, part, t, err) }
		if _, ok := bisect(ctx, it.v, it.tok, err, try, settle); ok {
			return
		}
	}
	settleFailure(ctx, n.st, n.env, n.c, true, n.dl, it.v, it.tok, err)
}

// ack returns the Ack of v, whose record(s) tok holds.
func (n *sinkNode[T]) ack(ctx context.Context, v T, tok token) Ack {
	if n.dl != nil {
		// The dead-letter handler of a record the sink fails later needs
		// the value: the one allocation per record this option costs.
		return Ack{tok: tok, h: &sinkLetter[T]{n: n, v: v, ctx: ctx}}
	}
	return Ack{tok: tok, h: n}
}

// write calls the sink, turning a panic into a *PanicError.
func (n *sinkNode[T]) write(ctx context.Context, v T, ack Ack) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	return n.sink.Write(ctx, v, ack)
}

func (n *sinkNode[T]) tick(context.Context, time.Time) {}
func (n *sinkNode[T]) flush(context.Context)           {}

func (n *sinkNode[T]) ackFailed(tok token, err error) {
	n.env.metrics.recordsFailed.Add(context.Background(), 1, n.c.attrs)
	tok.done(&StageError{Stage: n.st.name, Stream: n.env.stream, ShardID: n.env.shard, Position: tok.position(), Err: err})
}

// sinkLetter remembers a value handed to a sink with a dead-letter handler.
type sinkLetter[T any] struct {
	n   *sinkNode[T]
	v   T
	ctx context.Context // the lane's context: the handler runs within the pipeline's life
}

func (s *sinkLetter[T]) ackFailed(tok token, err error) {
	settleFailure(s.ctx, s.n.st, s.n.env, s.n.c, false, s.n.dl, s.v, tok, err)
}
