package kinesissink

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/batcher"
)

// scheduler is one mode's way of turning accepted records into PutRecords
// requests: it owns the mode's queues and decides what a request holds and
// when it is due. The engine calls every method with its mu held.
//
// The modes, each in its own file:
//   - plainScheduler (plain.go): one request batcher, no shard map.
//   - aggregateScheduler (aggregate.go): records queued by predicted shard
//     and packed into KPL aggregates, the aggregates batched into requests
//     in any order.
//   - orderedScheduler (ordered.go): records queued by predicted shard, at
//     most one request in flight per shard and one entry per partition key;
//     its packer makes plain entries (ordered.go) or one KPL aggregate
//     (ordered_aggregate.go) per request.
type scheduler interface {
	// routed reports whether records are routed by the stream's shard map:
	// the engine loads it before the first record is accepted, and checks
	// where each entry landed against its prediction.
	routed() bool
	// add queues a record just accepted, and sends or arms the linger
	// timer (engine.armLocked) as the mode's rules say.
	add(r *record)
	// timer is called when the linger timer fires.
	timer(now time.Time)
	// flushOpen makes every queued record due now: a Flush runs, or a
	// writer waits for buffer space.
	flushOpen()
	// pending reports whether next may have a job: the engine starts
	// request slots while it does.
	pending() bool
	// next takes the next request, if one is due.
	next() (job, bool)
	// release is called once every entry of a job has its outcome.
	release(j job)
	// requeue puts records back ahead of the newer records of their shard
	// (the members of an aggregate that landed on the wrong shard), in the
	// order given.
	requeue(recs []*record)
	// remap moves the queued records to their shards in the new map m,
	// keeping their order.
	remap(m *shardMap)
	// drain takes every record not in a request, for Close to fail them.
	drain() []*record
}

// newScheduler returns the scheduler of e's mode. It is the one place that
// looks at Options.Ordered and Options.Aggregate.
func newScheduler(e *engine) (scheduler, error) {
	switch {
	case e.o.Ordered && e.o.Aggregate:
		return newOrderedScheduler(e, &aggregatePacker{limit: e.o.AggregateMaxBytes}), nil
	case e.o.Ordered:
		return newOrderedScheduler(e, &plainPacker{maxEntries: e.o.MaxRequestEntries, maxBytes: e.o.MaxRequestBytes}), nil
	case e.o.Aggregate:
		// The scheduler lingers over the per-shard queues itself; the
		// batcher only packs sealed aggregates into requests.
		reqs, err := newRequests(e.o.MaxRequestEntries, e.o.MaxRequestBytes, 0)
		if err != nil {
			return nil, err
		}
		return &aggregateScheduler{e: e, requests: reqs, queues: make(shardQueues)}, nil
	}
	reqs, err := newRequests(e.o.MaxRequestEntries, e.o.MaxRequestBytes, e.o.linger)
	if err != nil {
		return nil, err
	}
	return &plainScheduler{e: e, requests: reqs}, nil
}

// requests batches wire entries into requests (plain and aggregate modes):
// an open batch, and the sealed ones waiting for a request slot.
type requests struct {
	batch  *batcher.Batcher[wire]
	sealed [][]wire
	// open counts the records and bytes (as accepted) of the open batch:
	// an aggregate holds many.
	open struct{ records, bytes int }
}

func newRequests(maxEntries, maxBytes int, linger time.Duration) (requests, error) {
	b, err := batcher.New[wire](batcher.Policy{MaxCount: maxEntries, MaxBytes: maxBytes, Linger: linger})
	if err != nil {
		return requests{}, &shardflow.ConfigError{Field: "Options", Reason: err.Error()}
	}
	return requests{batch: b}, nil
}

// addWire adds a wire entry to the open batch, sealing batches that are
// full.
func (rq *requests) addWire(w wire) {
	if !rq.batch.Fits(w.size) {
		rq.seal()
	}
	if w.many == nil {
		rq.open.records++
		rq.open.bytes += w.one.size
	} else {
		rq.open.records += len(w.many)
		for _, r := range w.many {
			rq.open.bytes += r.size
		}
	}
	if rq.batch.Add(w, w.size) {
		rq.seal()
	}
}

// seal hands the open batch to the request slots.
func (rq *requests) seal() {
	rq.open.records, rq.open.bytes = 0, 0
	if b, _ := rq.batch.Flush(context.Background()); len(b) > 0 {
		rq.sealed = append(rq.sealed, b)
	}
}

func (rq *requests) pending() bool { return len(rq.sealed) > 0 }

func (rq *requests) next() (job, bool) {
	if len(rq.sealed) == 0 {
		return job{}, false
	}
	b := rq.sealed[0]
	rq.sealed[0] = nil
	rq.sealed = rq.sealed[1:]
	return job{wires: b}, true
}

// drain takes the records of the open and the sealed batches.
func (rq *requests) drain() []*record {
	var recs []*record
	rq.seal()
	for _, b := range rq.sealed {
		for i := range b {
			recs = append(recs, b[i].members()...)
		}
	}
	rq.sealed = nil
	return recs
}

// queue holds the records predicted for one shard (ordered and aggregating
// modes).
type queue struct {
	id    string
	recs  []*record // in acceptance order
	bytes int
	busy  bool // ordered: a request for this shard is in flight
	ready bool // ordered: in orderedScheduler.readyQ
	held  int  // head records the limiter held back, not taken since
}

func (q *queue) push(r *record) {
	q.recs = append(q.recs, r)
	q.bytes += r.size
}

// pushFront puts recs, in their order, ahead of the queued records.
func (q *queue) pushFront(recs []*record) {
	q.recs = append(recs, q.recs...)
	for _, r := range recs {
		q.bytes += r.size
	}
}

// shardQueues are the queues of the ordered and aggregating modes, by
// predicted shard.
type shardQueues map[string]*queue

func (qs shardQueues) get(shard string) *queue {
	q := qs[shard]
	if q == nil {
		q = &queue{id: shard}
		qs[shard] = q
	}
	return q
}

// requeue puts recs back at the front of their shards' queues in m, keeping
// their order, and returns the queues touched, in the order of their first
// record.
func (qs shardQueues) requeue(m *shardMap, recs []*record) []*queue {
	byShard := make(map[string][]*record)
	var order []string
	for _, r := range recs {
		id := m.shardOf(r.hash)
		if _, ok := byShard[id]; !ok {
			order = append(order, id)
		}
		byShard[id] = append(byShard[id], r)
	}
	touched := make([]*queue, len(order))
	for i, id := range order {
		touched[i] = qs.get(id)
		touched[i].pushFront(byShard[id])
	}
	return touched
}

// remap returns the queued records bucketed by their shards in m, in new
// queues. Records of one key are all in one queue, in order, so
// re-bucketing them by acceptance order keeps key order.
func (qs shardQueues) remap(m *shardMap) shardQueues {
	var recs []*record
	for _, q := range qs {
		recs = append(recs, q.recs...)
	}
	sortByAcceptance(recs)
	out := make(shardQueues)
	for _, r := range recs {
		out.get(m.shardOf(r.hash)).push(r)
	}
	return out
}

// drain empties every queue and returns their records.
func (qs shardQueues) drain() []*record {
	var recs []*record
	for _, q := range qs {
		recs = append(recs, q.recs...)
		q.recs, q.bytes = nil, 0
	}
	return recs
}

func sortByAcceptance(recs []*record) {
	slices.SortFunc(recs, func(a, b *record) int { return cmp.Compare(a.seq, b.seq) })
}
