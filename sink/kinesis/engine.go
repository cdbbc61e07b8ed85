package kinesissink

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/batcher"
	"github.com/shardflow/shardflow/internal/kpl"
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
	e        Entry
	hash     u128
	size     int
	accepted time.Time
	// failedSince is when the first attempt that failed with a retryable
	// error was sent; zero before. Touched only by the request goroutine
	// holding the record.
	failedSince time.Time
	epoch       uint64
	ack         shardflow.Ack // the pipeline's, for the Sink
	done        func(Result)  // the Producer's, when set
}

// wire is one PutRecords entry: a plain record, or an aggregate of several.
type wire struct {
	one      *record
	many     []*record // aggregate members, in order; nil for a plain record
	data     []byte
	pk, ehk  string
	size     int    // len(data) + len(pk), what Kinesis counts
	shard    string // predicted shard; "" when not predicted
	attempts int
}

func plainWire(r *record, shard string) wire {
	return wire{one: r, data: r.e.Data, pk: r.e.PartitionKey, ehk: r.e.ExplicitHashKey, size: r.size, shard: shard}
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

// queue holds the records predicted for one shard (ordered and aggregating
// modes).
type queue struct {
	id    string
	recs  []*record // in acceptance order
	bytes int
	busy  bool // ordered: a request for this shard is in flight
	ready bool // in engine.readyQ
}

// job is the work of one request slot: wire entries to put, and in ordered
// mode the shard and keys to release when they are all done.
type job struct {
	wires []wire
	q     *queue
	keys  []string
}

// completion is a record's outcome, delivered outside the engine's lock.
type completion struct {
	r   *record
	res Result
}

// engine is what Sink and Producer share: it accepts records, batches them,
// runs PutRecords requests and reports each record's outcome once.
//
// Goroutines: none while idle. A request slot is a goroutine started when
// there is a request to send and fewer than MaxInFlight run; it sends
// requests, with their retries, until there is none left, then exits. The
// linger is a time.AfterFunc timer. So once every record's outcome is known
// (after Flush, or Close), no goroutine of the engine is left behind.
type engine struct {
	client API
	stream string
	o      Options
	log    *slog.Logger
	mode   mode

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

	epoch       uint64         // Flush generation of new records
	outstanding map[uint64]int // records not done, by epoch
	flushing    int            // Flush calls running: send without lingering
	waiting     int            // writers waiting for buffer space: send without lingering

	batch     *batcher.Batcher[wire] // plain and unordered aggregating modes
	sealed    [][]wire               // batches waiting for a request slot
	openSince time.Time              // unordered aggregating: first record still open

	queues  map[string]*queue // by predicted shard
	readyQ  []*queue          // ordered: shards due for a request
	blocked map[*queue]bool   // ordered: shards whose head keys were in flight
	keys    map[string]int    // ordered: partition keys in flight

	agg kpl.Aggregator // reused under mu

	smap      *shardMap
	mapLoaded time.Time
	timer     *time.Timer
	timerAt   time.Time
	workers   int
	wg        sync.WaitGroup
}

type mode int

const (
	modePlain     mode = iota // one batcher
	modeAggregate             // per-shard aggregation, unordered requests
	modeOrdered               // per-shard queues, one request in flight per shard
)

func newEngine(client API, stream string, optFns []func(*Options)) (*engine, error) {
	if client == nil {
		return nil, &ConfigError{Field: "client", Reason: "is nil"}
	}
	if stream == "" {
		return nil, &ConfigError{Field: "stream", Reason: "is empty"}
	}
	o := defaultOptions()
	for _, fn := range optFns {
		if fn != nil {
			fn(&o)
		}
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &engine{
		client:      client,
		stream:      stream,
		o:           o,
		log:         log.With("component", "kinesis.sink", "stream", stream),
		mapSem:      make(chan struct{}, 1),
		outstanding: make(map[uint64]int),
		queues:      make(map[string]*queue),
		keys:        make(map[string]int),
		blocked:     make(map[*queue]bool),
	}
	switch {
	case o.Ordered:
		e.mode = modeOrdered
	case o.Aggregate:
		e.mode = modeAggregate
	}
	if e.mode != modeOrdered {
		linger := o.Linger
		if e.mode == modeAggregate {
			// The engine lingers over the per-shard queues itself; the
			// batcher only packs sealed aggregates into requests.
			linger = 0
		}
		var err error
		e.batch, err = batcher.New[wire](batcher.Policy{MaxCount: o.MaxRequestEntries, MaxBytes: o.MaxRequestBytes, Linger: linger})
		if err != nil {
			return nil, &ConfigError{Field: "batching", Reason: err.Error()}
		}
	}
	e.life, e.abort = context.WithCancelCause(context.Background())
	return e, nil
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

// accept validates an entry, waits for buffer space, and queues it. On
// success the record's outcome is reported exactly once through ack or done.
func (e *engine) accept(ctx context.Context, ent Entry, ack shardflow.Ack, done func(Result)) error {
	hash, err := ent.validate(e.o.MaxRecordBytes)
	if err != nil {
		return err
	}
	if e.o.Aggregate && startsWithMagic(ent.Data) {
		if n := wrappedSize(&ent); n > e.o.MaxRecordBytes {
			return &ValidationError{Field: "Data", Reason: fmt.Sprintf("begins with the KPL magic bytes, so it is sent inside an aggregate, of %d bytes with the partition key, more than the record limit of %d", n, e.o.MaxRecordBytes)}
		}
	}
	var m *shardMap
	if e.mode != modePlain {
		if m, err = e.shardMap(ctx); err != nil {
			return err
		}
	}
	r := &record{e: ent, hash: hash, size: ent.size(), ack: ack, done: done}
	e.mu.Lock()
	for {
		if e.closed {
			e.mu.Unlock()
			return ErrClosed
		}
		if e.bufRecords+1 <= e.o.MaxBufferedRecords && e.bufBytes+r.size <= e.o.MaxBufferedBytes {
			break
		}
		// The buffer is full: lingering cannot fill a request any more, so
		// send what is open now (and, while anybody waits, as soon as a
		// shard is free).
		e.waiting++
		e.flushOpenLocked()
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
	e.bufRecords++
	e.bufBytes += r.size
	r.epoch = e.epoch
	e.outstanding[r.epoch]++
	r.accepted = time.Now()
	switch e.mode {
	case modePlain:
		e.addWireLocked(plainWire(r, ""))
		if d, ok := e.batch.UntilNext(); ok && d > 0 {
			e.armLocked(r.accepted.Add(d))
		} else if ok {
			e.sealLocked()
		}
	case modeAggregate:
		if e.smap != nil {
			m = e.smap // a refresh may have replaced it meanwhile
		}
		q := e.queueLocked(m.shardOf(hash))
		q.push(r)
		if e.openSince.IsZero() {
			e.openSince = r.accepted
		}
		if q.bytes >= e.o.AggregateMaxBytes || e.flushing > 0 {
			e.aggregateLocked(q, e.flushing > 0)
		}
		if e.flushing > 0 {
			e.sealLocked()
		}
		e.armLocked(e.openSince.Add(e.o.Linger))
	case modeOrdered:
		if e.smap != nil {
			m = e.smap
		}
		q := e.queueLocked(m.shardOf(hash))
		q.push(r)
		e.considerLocked(q, r.accepted)
	}
	e.kickLocked()
	e.mu.Unlock()
	return nil
}

func (q *queue) push(r *record) {
	q.recs = append(q.recs, r)
	q.bytes += r.size
}

func (e *engine) queueLocked(shard string) *queue {
	q := e.queues[shard]
	if q == nil {
		q = &queue{id: shard}
		e.queues[shard] = q
	}
	return q
}

// addWireLocked adds a wire entry to the open batch, sealing batches that
// are full.
func (e *engine) addWireLocked(w wire) {
	if !e.batch.Fits(w.size) {
		e.sealLocked()
	}
	if e.batch.Add(w, w.size) {
		e.sealLocked()
	}
}

// sealLocked hands the open batch to the request slots.
func (e *engine) sealLocked() {
	b, _ := e.batch.Flush(context.Background())
	if len(b) > 0 {
		e.sealed = append(e.sealed, b)
	}
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

// onTimer sends what lingered long enough and re-arms for the rest.
func (e *engine) onTimer() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.timerAt = time.Time{}
	now := time.Now()
	switch e.mode {
	case modePlain:
		if d, ok := e.batch.UntilNext(); ok {
			if d <= 0 {
				e.sealLocked()
			} else {
				e.armLocked(now.Add(d))
			}
		}
	case modeAggregate:
		if !e.openSince.IsZero() {
			if deadline := e.openSince.Add(e.o.Linger); now.Before(deadline) {
				e.armLocked(deadline)
			} else {
				e.flushOpenLocked()
			}
		}
	case modeOrdered:
		for _, q := range e.queues {
			e.considerLocked(q, now)
		}
	}
	e.kickLocked()
}

// considerLocked marks an ordered shard ready when it is free and due, or
// arms the timer for when its oldest record will be due.
func (e *engine) considerLocked(q *queue, now time.Time) {
	if q.busy || q.ready || len(q.recs) == 0 {
		return
	}
	due := e.flushing > 0 || e.waiting > 0
	if e.o.Aggregate {
		due = due || q.bytes >= e.o.AggregateMaxBytes
	} else {
		due = due || len(q.recs) >= e.o.MaxRequestEntries || q.bytes >= e.o.MaxRequestBytes
	}
	deadline := q.recs[0].accepted.Add(e.o.Linger)
	if due || !now.Before(deadline) {
		q.ready = true
		e.readyQ = append(e.readyQ, q)
		return
	}
	e.armLocked(deadline)
}

// flushOpenLocked sends everything not yet in a request: the open batch,
// and every shard queue.
func (e *engine) flushOpenLocked() {
	switch e.mode {
	case modePlain:
		e.sealLocked()
	case modeAggregate:
		for _, q := range e.queues {
			e.aggregateLocked(q, true)
		}
		e.sealLocked()
		e.openSince = time.Time{}
	case modeOrdered:
		now := time.Now()
		for _, q := range e.queues {
			e.considerLocked(q, now)
		}
	}
}

// kickLocked starts request goroutines while there is work and a free slot.
func (e *engine) kickLocked() {
	for e.workers < e.o.MaxInFlight && (len(e.sealed) > 0 || len(e.readyQ) > 0) {
		e.workers++
		e.wg.Add(1)
		go e.work()
	}
}

// work is a request slot: it runs jobs until there is none.
func (e *engine) work() {
	defer e.wg.Done()
	for {
		e.mu.Lock()
		j, ok := e.nextJobLocked()
		if !ok {
			e.workers--
			e.notifyLocked()
			e.mu.Unlock()
			return
		}
		e.mu.Unlock()
		e.run(j)
	}
}

func (e *engine) nextJobLocked() (job, bool) {
	if len(e.sealed) > 0 {
		b := e.sealed[0]
		e.sealed[0] = nil
		e.sealed = e.sealed[1:]
		return job{wires: b}, true
	}
	for len(e.readyQ) > 0 {
		q := e.readyQ[0]
		e.readyQ[0] = nil
		e.readyQ = e.readyQ[1:]
		q.ready = false
		if q.busy || len(q.recs) == 0 || e.queues[q.id] != q {
			continue
		}
		j := e.buildOrderedLocked(q)
		if len(j.wires) == 0 {
			// Every record at the head has a key still in flight on
			// another shard (after a shard map refresh): try again when
			// those keys are released.
			e.blocked[q] = true
			continue
		}
		q.busy = true
		for _, k := range j.keys {
			e.keys[k]++
		}
		return j, true
	}
	return job{}, false
}

// buildOrderedLocked takes the next request of an ordered shard from the
// head of its queue: at most one entry per partition key (with Aggregate,
// one aggregate), skipping keys in flight and every later record of a
// skipped key, so no record of a key is ever sent before an older one.
func (e *engine) buildOrderedLocked(q *queue) job {
	j := job{q: q}
	if e.o.Aggregate {
		w, keys, ok := e.takeAggregateLocked(q, true)
		if ok {
			j.wires, j.keys = []wire{w}, keys
		}
		return j
	}
	seen := make(map[string]struct{})
	limit := min(len(q.recs), 4*e.o.MaxRequestEntries) // bound the scan past skipped records
	old := q.recs
	kept := q.recs[:0]
	bytes := 0
	i := 0
	for ; i < limit && len(j.wires) < e.o.MaxRequestEntries; i++ {
		r := q.recs[i]
		k := r.e.PartitionKey
		_, dup := seen[k]
		if dup || e.keys[k] > 0 {
			// A later record of a key held back, or a key in flight.
			seen[k] = struct{}{}
			kept = append(kept, r)
			continue
		}
		if bytes+r.size > e.o.MaxRequestBytes {
			break // the request is full; r stays at the head of the rest
		}
		seen[k] = struct{}{}
		bytes += r.size
		q.bytes -= r.size
		j.wires = append(j.wires, plainWire(r, q.id))
		j.keys = append(j.keys, k)
	}
	q.recs = append(kept, old[i:]...)
	clear(old[len(q.recs):])
	return j
}
