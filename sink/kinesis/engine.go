package kinesissink

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow"
)

// Result is the outcome of one record.
type Result struct {
	// Entry is the record as it was put.
	Entry Entry
	// ShardID and SequenceNumber say where Kinesis wrote the record (of the
	// aggregate holding it, when it was aggregated). Empty when Err is set.
	ShardID, SequenceNumber string
	// SubSequenceNumber is the record's index in its KPL aggregate; 0 for a
	// plain record.
	SubSequenceNumber uint64
	// Aggregated reports that the record was written inside a KPL aggregate.
	Aggregated bool
	// Err is nil when the record was written, else a *PutError.
	Err error
}

// record is one accepted entry until its outcome is known.
type record struct {
	e    Entry
	hash u128
	size int
	seq  uint64 // acceptance order
	// accepted is when the record was accepted: set where something needs
	// it (Options.RecordTTL, the ordered and plain modes' linger), zero
	// else (time.Now per record is a tenth of the aggregating mode's cost).
	accepted time.Time
	// failedSince is when the first attempt that failed with a retryable
	// error was sent; zero before. Touched only by the request goroutine
	// holding the record.
	failedSince time.Time
	// misroutes counts the times the record came back in an aggregate
	// that landed on a shard not holding all its members. Touched only by
	// the request goroutine holding the record.
	misroutes int
	epoch     uint64
	ack       shardflow.Ack // the pipeline's, for the Sink
	done      func(Result)  // the Producer's, when set
}

// wire is one PutRecords entry: a plain record, or an aggregate of several.
type wire struct {
	one      *record
	many     []*record // aggregate members, in order; nil for a plain record
	data     []byte
	pk, ehk  string
	size     int    // len(data) + len(pk), what Kinesis counts
	shard    string // predicted shard, when predicted ("" in a gap of the map)
	routed   bool   // the shard was predicted: check where the entry lands
	attempts int
}

func plainWire(r *record) wire {
	return wire{one: r, data: r.e.Data, pk: r.e.PartitionKey, ehk: r.e.ExplicitHashKey, size: r.size}
}

func routedWire(r *record, shard string) wire {
	w := plainWire(r)
	w.shard, w.routed = shard, true
	return w
}

// members returns the records the wire entry carries.
func (w *wire) members() []*record {
	if w.many != nil {
		return w.many
	}
	return []*record{w.one}
}

func (w *wire) oldest() time.Time {
	if w.many == nil {
		return w.one.accepted
	}
	t := w.many[0].accepted
	for _, r := range w.many[1:] {
		if r.accepted.Before(t) {
			t = r.accepted
		}
	}
	return t
}

// job is the work of one request slot: wire entries to put. q and keys are
// the scheduler's, given back to it by release: the ordered modes' shard
// and partition keys to free once every entry has its outcome.
type job struct {
	wires []wire
	q     *queue
	keys  []string
}

// completion is a record's outcome, delivered outside the engine's lock:
// its Result but for the Entry, which the record holds (so that a request
// of tens of thousands of aggregated records does not copy each entry
// twice).
type completion struct {
	r          *record
	shard, seq string
	sub        uint64
	aggregated bool
	err        error
}

// result is the record's Result.
func (c *completion) result() Result {
	return Result{Entry: c.r.e, ShardID: c.shard, SequenceNumber: c.seq, SubSequenceNumber: c.sub, Aggregated: c.aggregated, Err: c.err}
}

// failed returns the completion of r failed with err.
func failed(r *record, err error) completion { return completion{r: r, err: err} }

// engine is what Sink and Producer share: it accepts records, hands them to
// its mode's scheduler (plain, aggregate, ordered; see scheduler), runs the
// PutRecords requests the scheduler builds, and reports each record's
// outcome once. The engine owns what every mode shares: validation, the
// buffer caps and backpressure, Flush epochs, completion, Close, the shard
// map, the linger timer and the request slots with the retries of a
// request.
//
// Goroutines: none while idle. A request slot is a goroutine started when
// there is a request to send and fewer than MaxInFlight run; it sends
// requests, with their retries, until there is none left, then exits. The
// linger is a time.AfterFunc timer. So once every record's outcome is known
// (after Flush, or Close), no goroutine of the engine is left behind.
//
// Locking: mu guards the engine's fields and the scheduler, whose methods
// are all called with mu held. Acks and callbacks run with mu released
// (complete); mapSem is taken before mu, never while holding it. Metrics
// are recorded with mu released too: the buffered gauges' callback takes mu
// while the meter provider collects, holding its own lock, so the order is
// meterMu, then the provider's lock, then mu.
type engine struct {
	client API
	stream string
	o      settings
	sched  scheduler
	// hashKey hashes partition keys for the modes that route records by
	// shard; nil in the plain mode, which needs no hash (no MD5 per record).
	hashKey func(string) u128
	// sdkClient: the client is a *kinesis.Client, which keeps no entry's
	// data once PutRecords returns, so aggregate buffers are reused.
	sdkClient bool
	// collect gets the failed outcomes of a Producer's records put without
	// a callback; nil for a Sink, whose records have acks.
	collect func(Result)

	log       atomic.Pointer[slog.Logger]
	component string
	ownLogger bool // Options.Logger was set: the pipeline's is not used

	// met holds the instruments once made (see metrics). meterMu guards
	// making them, mp and metricsStopped.
	met            atomic.Pointer[metrics]
	meterMu        sync.Mutex
	mp             metric.MeterProvider // Options.MeterProvider or the pipeline's; nil: the global one
	ownMeter       bool                 // Options.MeterProvider was set: the pipeline's is not used
	metricsStopped bool                 // Close is done: no buffered gauges any more

	// life bounds the requests and retry waits of the request goroutines,
	// which belong to the engine, not to any caller: Close cancels it when
	// its own context ends first. It is a context only because the SDK takes
	// one.
	life  context.Context
	abort context.CancelCauseFunc

	mapSem chan struct{} // one shard map load at a time

	mu       sync.Mutex
	closed   bool
	aborted  error
	closing  chan struct{} // closed when Close finished
	closeErr error
	wake     chan struct{} // closed on progress while somebody waits

	bufRecords, bufBytes int
	seq                  uint64   // of the next record accepted
	slab                 []record // zero records for newRecordLocked
	stamp                bool     // records need their acceptance time (record.accepted)

	epoch       uint64         // Flush generation of new records
	outstanding map[uint64]int // records not done, by epoch
	flushing    int            // Flush calls running: send without lingering
	waiting     int            // writers waiting for buffer space: send without lingering

	smap      *shardMap
	mapLoaded time.Time
	lim       *limiter    // Options.RateLimit; nil: no limit
	mapReady  atomic.Bool // smap is loaded: accept need not take mu to know
	timer     *time.Timer
	timerAt   time.Time
	workers   int
	wg        sync.WaitGroup
}

func newEngine(client API, stream, component string, optFns []func(*Options)) (*engine, error) {
	if client == nil {
		return nil, &shardflow.ConfigError{Field: "client", Reason: "is nil"}
	}
	if stream == "" {
		return nil, &shardflow.ConfigError{Field: "stream", Reason: "is empty"}
	}
	var o Options
	for _, fn := range optFns {
		if fn != nil {
			fn(&o)
		}
	}
	s, err := o.resolve()
	if err != nil {
		return nil, err
	}
	e := &engine{
		client:      client,
		stream:      stream,
		o:           s,
		component:   component,
		mapSem:      make(chan struct{}, 1),
		outstanding: make(map[uint64]int),
	}
	log := o.Logger
	e.ownLogger = log != nil
	if log == nil {
		log = slog.Default()
	}
	e.setLogger(log)
	_, e.sdkClient = client.(*kinesis.Client)
	e.mp, e.ownMeter = o.MeterProvider, o.MeterProvider != nil
	e.lim = newLimiter(s.rateLimit)
	e.stamp = o.RecordTTL > 0 || o.Ordered || !o.Aggregate
	if e.sched, err = newScheduler(e); err != nil {
		return nil, err
	}
	if e.sched.routed() {
		e.hashKey = newKeyCache().hash
	}
	e.life, e.abort = context.WithCancelCause(context.Background())
	return e, nil
}

func (e *engine) setLogger(l *slog.Logger) {
	e.log.Store(l.With("component", e.component, "stream", e.stream))
}

func (e *engine) logger() *slog.Logger { return e.log.Load() }

// usePipelineLogger logs through l from now on, unless Options.Logger was
// set.
func (e *engine) usePipelineLogger(l *slog.Logger) {
	if l != nil && !e.ownLogger {
		e.setLogger(l)
	}
}

// notifyLocked wakes everybody waiting for progress. Called with mu held.
func (e *engine) notifyLocked() {
	if e.wake != nil {
		close(e.wake)
		e.wake = nil
	}
}

func (e *engine) waitChanLocked() chan struct{} {
	if e.wake == nil {
		e.wake = make(chan struct{})
	}
	return e.wake
}

// urgentLocked reports whether queued records should go without lingering:
// a Flush runs, or a writer waits for buffer space.
func (e *engine) urgentLocked() bool { return e.flushing > 0 || e.waiting > 0 }

// accept validates an entry, waits for buffer space, and queues it. On
// success the record's outcome is reported exactly once through done, else
// (a Producer's record without a callback) to collect when it failed, else
// through ack.
func (e *engine) accept(ctx context.Context, ent Entry, ack shardflow.Ack, done func(Result)) error {
	hash, err := ent.validate(e.o.MaxRecordBytes, e.hashKey)
	if err != nil {
		return err
	}
	if e.o.Aggregate && startsWithMagic(ent.Data) {
		if n := wrappedSize(&ent); n > e.o.MaxRecordBytes {
			return &ValidationError{Field: "Data", Reason: fmt.Sprintf("begins with the KPL magic bytes, so it is sent inside an aggregate, of %d bytes with the partition key, more than the record limit of %d", n, e.o.MaxRecordBytes)}
		}
	}
	e.metrics() // the buffered gauges report from the first record on
	if e.sched.routed() && !e.mapReady.Load() {
		if err := e.loadShardMapOnce(ctx); err != nil {
			return err
		}
	}
	size := ent.size()
	e.mu.Lock()
	for {
		if e.closed {
			e.mu.Unlock()
			return ErrClosed
		}
		if e.bufRecords+1 <= e.o.MaxBufferedRecords && e.bufBytes+size <= e.o.MaxBufferedBytes {
			break
		}
		// The buffer is full: lingering cannot fill a request any more, so
		// send what is open now (and, while anybody waits, as soon as a
		// shard is free).
		e.waiting++
		e.sched.flushOpen()
		e.kickLocked()
		w := e.waitChanLocked()
		e.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			e.mu.Lock()
			e.waiting--
			e.mu.Unlock()
			return fmt.Errorf("wait for buffer space: %w", context.Cause(ctx))
		}
		e.mu.Lock()
		e.waiting--
	}
	// Field by field: the record is zero, and a composite literal would
	// be built aside and copied whole, with write barriers for all of it.
	r := e.newRecordLocked()
	r.e, r.hash, r.size, r.ack, r.done = ent, hash, size, ack, done
	e.bufRecords++
	e.bufBytes += size
	r.epoch = e.epoch
	e.outstanding[r.epoch]++
	r.seq = e.seq
	e.seq++
	if e.stamp {
		r.accepted = time.Now()
	}
	e.sched.add(r)
	e.kickLocked()
	e.mu.Unlock()
	return nil
}

// recordSlab is how many records newRecordLocked allocates at once.
const recordSlab = 64

// newRecordLocked returns a zero record, cut from a slab of recordSlab
// records: one allocation, not one per record (records accepted together
// are done together, so a slab is not held long by one of them).
func (e *engine) newRecordLocked() *record {
	if len(e.slab) == 0 {
		e.slab = make([]record, recordSlab)
	}
	r := &e.slab[0]
	e.slab = e.slab[1:]
	return r
}

// acceptedAt returns when r was accepted: its stamp, or now for a record
// not stamped (it is being added now).
func acceptedAt(r *record) time.Time {
	if r.accepted.IsZero() {
		return time.Now()
	}
	return r.accepted
}

// armLocked makes the linger timer fire at at, unless it fires earlier.
func (e *engine) armLocked(at time.Time) {
	if !e.timerAt.IsZero() && !at.Before(e.timerAt) {
		return
	}
	e.timerAt = at
	d := time.Until(at)
	if e.timer == nil {
		e.timer = time.AfterFunc(d, e.onTimer)
	} else {
		e.timer.Reset(d)
	}
}

// onTimer lets the scheduler send what lingered long enough (and re-arm for
// the rest).
func (e *engine) onTimer() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.timerAt = time.Time{}
	e.sched.timer(time.Now())
	e.kickLocked()
}

// kickLocked starts request goroutines while there is work and a free slot.
func (e *engine) kickLocked() {
	for e.workers < e.o.MaxInFlight && e.sched.pending() {
		e.workers++
		e.wg.Add(1)
		go e.work()
	}
}

// worker is what a request slot reuses from job to job: the outcomes of a
// call, and the aggregator that encodes its aggregates.
type worker struct {
	comps  []completion
	silent []*record // written, reported to nobody (see succeed)
	agg    aggEncoder
}

// workers keeps the workers of request slots that ended, so that a slot
// started later does not grow its buffers again.
var workers = sync.Pool{New: func() any { return new(worker) }}

// work is a request slot: it runs jobs until there is none.
func (e *engine) work() {
	defer e.wg.Done()
	w := workers.Get().(*worker)
	defer workers.Put(w)
	for {
		e.mu.Lock()
		j, ok := e.sched.next()
		if !ok {
			e.workers--
			e.notifyLocked()
			e.mu.Unlock()
			return
		}
		held := e.lim.takeHeld()
		e.mu.Unlock()
		e.metrics().limited(held)
		e.run(j, w)
	}
}
