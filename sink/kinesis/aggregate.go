package kinesissink

import (
	"math/bits"
	"slices"
	"time"

	"github.com/shardflow/shardflow/internal/kpl"
)

// aggregateScheduler is the unordered aggregating mode: records are queued
// by predicted shard and packed into KPL aggregates of at most
// Options.AggregateMaxBytes, which go into requests in any order. A shard's
// queue is packed as soon as it holds a full aggregate; everything queued
// goes when the oldest open record lingered Options.Linger, or on Flush.
//
// With Options.RateLimit, a shard's queue is packed only while its budget
// (the engine's limiter) allows the next aggregate; what it holds back
// waits in the queue, in held, until the timer fires when the budget
// allows it. Packed aggregates are reserved in the budget and charged when
// their request is taken (next).
type aggregateScheduler struct {
	e *engine
	requests
	queues    shardQueues
	openSince time.Time // when the oldest record not yet packed was accepted
	// held are the queues the limiter held back: true when all their
	// records are due (lingered or flushed), false for full aggregates only.
	held map[*queue]bool
}

func (s *aggregateScheduler) routed() bool { return true }

func (s *aggregateScheduler) add(r *record) {
	q := s.queues.get(s.e.smap.shardOf(r.hash))
	q.push(r)
	var now time.Time // read only when needed: records are not stamped
	if s.openSince.IsZero() {
		now = acceptedAt(r)
		s.openSince = now
	}
	flushing := s.e.flushing > 0
	if q.bytes >= s.e.o.AggregateMaxBytes || flushing {
		if now.IsZero() {
			now = acceptedAt(r)
		}
		s.pack(q, flushing, now)
	}
	// A request holding a quarter of the buffer caps goes now, full or
	// not: small records fill the buffer long before 5 MiB of aggregates,
	// and the writer would then wait for each request in turn instead of
	// packing the next one while this one is sent.
	if flushing || s.open.records >= s.e.o.MaxBufferedRecords/4 || s.open.bytes >= s.e.o.MaxBufferedBytes/4 {
		s.seal()
	}
	s.e.armLocked(s.openSince.Add(s.e.o.linger))
}

func (s *aggregateScheduler) timer(now time.Time) {
	if len(s.held) > 0 {
		held := s.held
		s.held = make(map[*queue]bool, len(held))
		for q, all := range held {
			if s.queues[q.id] == q {
				s.pack(q, all, now)
			}
		}
		// What the budget let go goes now: an aggregate charged to its
		// shard must not wait in an open request while the shard's bucket
		// fills again.
		s.seal()
	}
	if s.openSince.IsZero() {
		return
	}
	if deadline := s.openSince.Add(s.e.o.linger); now.Before(deadline) {
		s.e.armLocked(deadline)
	} else {
		s.flushOpen()
	}
}

func (s *aggregateScheduler) flushOpen() {
	now := time.Now()
	for _, q := range s.queues {
		s.pack(q, true, now)
	}
	s.seal()
	s.openSince = time.Time{}
}

// pack turns a shard queue into aggregates for the request batcher: the
// full ones, or with all, every record, as far as the shard's budget
// allows.
func (s *aggregateScheduler) pack(q *queue, all bool, now time.Time) {
	lim := s.e.lim
	for len(q.recs) > 0 && (all || q.bytes >= s.e.o.AggregateMaxBytes) {
		limit := s.e.o.AggregateMaxBytes
		if lim != nil && q.id != "" {
			need := nextAggregateBytes(q, limit)
			a := lim.allowance(q.id, now)
			if !a.admits(0, 0, need) {
				s.hold(q, all, need, now)
				return
			}
			if !a.whole {
				limit = min(limit, a.bytes)
			}
		}
		w, _, ok := takeAggregate(q, limit, nil)
		if !ok {
			return
		}
		if lim != nil && q.id != "" {
			lim.reserve(q.id, 1, w.size)
			s.tookHeld(q, len(w.members()))
		}
		s.addWire(w)
	}
}

// hold keeps q's records back until its budget allows need bytes, and arms
// the timer for then.
func (s *aggregateScheduler) hold(q *queue, all bool, need int, now time.Time) {
	if s.held == nil {
		s.held = make(map[*queue]bool)
	}
	s.held[q] = s.held[q] || all
	q.held = len(q.recs)
	s.e.armLocked(now.Add(s.e.lim.wait(q.id, 1, need, now)))
}

// tookHeld counts the records taken from q that the limiter had held back.
func (s *aggregateScheduler) tookHeld(q *queue, n int) {
	if n = min(n, q.held); n > 0 {
		q.held -= n
		s.e.lim.noteHeld(n)
	}
}

// next takes the next sealed request, and charges its entries, reserved
// when packed, to their shards' budgets: they are sent now.
func (s *aggregateScheduler) next() (job, bool) {
	j, ok := s.requests.next()
	if ok && s.e.lim != nil {
		now := time.Now()
		for i := range j.wires {
			if w := &j.wires[i]; w.shard != "" {
				s.e.lim.chargeReserved(w.shard, 1, w.size, now)
			}
		}
	}
	return j, ok
}

func (s *aggregateScheduler) release(job) {}

// requeue re-aggregates the records by their shard and sends them at once,
// ahead of newer records of that shard.
func (s *aggregateScheduler) requeue(recs []*record) {
	now := time.Now()
	for _, q := range s.queues.requeue(s.e.smap, recs) {
		s.pack(q, true, now)
		s.seal()
	}
}

// remap moves the queued records to their shards in m. Every queue is
// then packed at the next timer, as far as the new shards' budgets allow,
// since records held back before were due.
func (s *aggregateScheduler) remap(m *shardMap) {
	s.queues = s.queues.remap(m)
	clear(s.held)
	if s.e.lim == nil {
		return
	}
	for _, q := range s.queues {
		if s.held == nil {
			s.held = make(map[*queue]bool)
		}
		s.held[q] = true
	}
	s.e.armLocked(time.Now())
}

func (s *aggregateScheduler) drain() []*record {
	recs := s.requests.drain()
	s.openSince = time.Time{}
	clear(s.held)
	return append(recs, s.queues.drain()...)
}

// nextAggregateBytes is at least the size of the next aggregate q's head
// would make with limit: the budget it needs to be sent. It is the limit,
// or, for a queue holding less, its records with room for the aggregate's
// framing; never less than the head record (which goes alone when too
// large to share).
func nextAggregateBytes(q *queue, limit int) int {
	est := min(limit, q.bytes+kpl.Overhead+8*len(q.recs))
	if len(q.recs) > 0 {
		est = max(est, wrappedSize(&q.recs[0].e))
	}
	return est
}

// startsWithMagic reports whether data begins with the KPL magic bytes: a
// reader may take such data for an aggregate, so in aggregating mode it is
// always sent inside one.
func startsWithMagic(data []byte) bool {
	return len(data) >= len(kpl.Magic) && string(data[:len(kpl.Magic)]) == kpl.Magic
}

// wrappedSize is the size Kinesis counts for e sent in an aggregate of its
// own: the aggregate and the partition key.
func wrappedSize(e *Entry) int {
	var a kpl.Aggregator
	return a.SizeWith(e.PartitionKey, e.ExplicitHashKey, len(e.Data)) + len(e.PartitionKey)
}

// takeAggregate takes records from the head of a shard queue into one KPL
// aggregate of at most limit bytes (data and partition key, as Kinesis
// counts the record), exactly sized, using a. A record that is alone, or
// too large to share an aggregate, goes as a plain record, unless its data
// begins with the KPL magic: it then goes in an aggregate of its own (at
// most MaxRecordBytes, checked when it was accepted), so no reader takes it
// for an aggregate.
//
// With inFlight not nil (ordered mode), records whose partition key is in
// flight are skipped, with every later record of their key, and keys
// returns the distinct keys the aggregate carries. ok is false when it took
// nothing.
func takeAggregate(q *queue, limit int, inFlight map[string]int) (w wire, keys []string, ok bool) {
	var a aggBound
	var members []*record // in ordered mode; else old[:i], cloned below
	var first *record     // the first member
	var held map[string]bool
	old := q.recs
	kept := q.recs[:0]
	take := func(r *record) {
		if first == nil {
			first = r
		}
		if inFlight != nil {
			members = append(members, r)
		}
	}
	i := 0
	for ; i < len(old); i++ {
		r := old[i]
		if inFlight != nil {
			if k := r.e.PartitionKey; held[k] || inFlight[k] > 0 {
				if held == nil {
					held = make(map[string]bool)
				}
				held[k] = true
				kept = append(kept, r)
				continue
			}
		}
		pk := r.e.PartitionKey
		if first != nil {
			pk = first.e.PartitionKey
		}
		if a.with(r.e.PartitionKey, r.e.ExplicitHashKey, len(r.e.Data))+len(pk) > limit {
			if first == nil {
				// Too large to share an aggregate: it goes alone.
				take(r)
				i++
			}
			break
		}
		a.add(r.e.PartitionKey, r.e.ExplicitHashKey, len(r.e.Data))
		take(r)
	}
	if inFlight == nil {
		// Nothing skipped: the members are the head of the queue, in a
		// slice of their own, allocated once at its size.
		members = slices.Clone(old[:i])
	}
	q.recs = append(kept, old[i:]...)
	clear(old[len(q.recs):])
	if len(members) == 0 {
		return wire{}, nil, false
	}
	for _, r := range members {
		q.bytes -= r.size
	}
	if inFlight != nil {
		seen := make(map[string]bool, 1)
		for _, r := range members {
			if k := r.e.PartitionKey; !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	if len(members) == 1 {
		r := members[0]
		if !startsWithMagic(r.e.Data) {
			return routedWire(r, q.id), keys, true
		}
		// Sent plain, data that reads as an aggregate would be
		// de-aggregated into its inner records: wrap it, as the KPL does.
		a = aggBound{}
		a.add(r.e.PartitionKey, r.e.ExplicitHashKey, len(r.e.Data))
	}
	// The aggregate is encoded (protobuf and MD5, the costly part) by the
	// request goroutine that sends it (engine.encode), not here under the
	// engine's lock on the writer's goroutine.
	head := first.e
	return wire{many: members, pk: head.PartitionKey, ehk: head.ExplicitHashKey,
		size: a.size + len(head.PartitionKey), shard: q.id, routed: true}, keys, true
}

// aggBound sizes a KPL aggregate as records are added, with no map: a
// record's partition key (and explicit hash key) counts as a new key table
// entry unless it is the previous record's. The request goroutine encodes
// the aggregate with kpl.Aggregator, which shares every repeated key, so
// the aggregate is at most this size: exactly it when no key repeats but
// in a row (distinct keys, or one hot key), a little smaller otherwise.
// It is the size the aggregate counts for against the request and record
// limits and the rate limit until it is encoded.
type aggBound struct {
	size            int // magic, protobuf and checksum so far
	pks, ehks       int // key table entries counted
	lastPK, lastEHK string
}

// growth is the protobuf bytes one more record adds (kpl.Aggregator's
// growth, with the table indexes bounded as above).
func (a *aggBound) growth(pk, ehk string, dataLen int) int {
	n := 0
	pki := a.pks
	if a.pks > 0 && pk == a.lastPK {
		pki--
	} else {
		n += protoFieldLen(len(pk))
	}
	body := 1 + uvarintLen(uint64(pki)) + protoFieldLen(dataLen)
	if ehk != "" {
		ehki := a.ehks
		if a.ehks > 0 && ehk == a.lastEHK {
			ehki--
		} else {
			n += protoFieldLen(len(ehk))
		}
		body += 1 + uvarintLen(uint64(ehki))
	}
	return n + protoFieldLen(body)
}

// with returns the size with one more record.
func (a *aggBound) with(pk, ehk string, dataLen int) int {
	if a.size == 0 {
		return kpl.Overhead + a.growth(pk, ehk, dataLen)
	}
	return a.size + a.growth(pk, ehk, dataLen)
}

// add counts one more record.
func (a *aggBound) add(pk, ehk string, dataLen int) {
	a.size = a.with(pk, ehk, dataLen)
	if a.pks == 0 || pk != a.lastPK {
		a.pks++
		a.lastPK = pk
	}
	if ehk != "" && (a.ehks == 0 || ehk != a.lastEHK) {
		a.ehks++
		a.lastEHK = ehk
	}
}

// uvarintLen is the size of v as a protobuf varint.
func uvarintLen(v uint64) int { return (bits.Len64(v|1) + 6) / 7 }

// protoFieldLen is the size of a length-delimited protobuf field of n bytes
// with a one-byte tag.
func protoFieldLen(n int) int { return 1 + uvarintLen(uint64(n)) + n }
