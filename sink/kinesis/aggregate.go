package kinesissink

import (
	"strings"
	"time"

	"github.com/shardflow/shardflow/internal/kpl"
)

// aggregateScheduler is the unordered aggregating mode: records are queued
// by predicted shard and packed into KPL aggregates of at most
// Options.AggregateMaxBytes, which go into requests in any order. A shard's
// queue is packed as soon as it holds a full aggregate; everything queued
// goes when the oldest open record lingered Options.Linger, or on Flush.
type aggregateScheduler struct {
	e *engine
	requests
	queues    shardQueues
	openSince time.Time // when the oldest record not yet packed was accepted
	agg       kpl.Aggregator
}

func (s *aggregateScheduler) routed() bool { return true }

func (s *aggregateScheduler) add(r *record) {
	q := s.queues.get(s.e.smap.shardOf(r.hash))
	q.push(r)
	if s.openSince.IsZero() {
		s.openSince = r.accepted
	}
	flushing := s.e.flushing > 0
	if q.bytes >= s.e.o.AggregateMaxBytes || flushing {
		s.pack(q, flushing)
	}
	if flushing {
		s.seal()
	}
	s.e.armLocked(s.openSince.Add(s.e.o.linger))
}

func (s *aggregateScheduler) timer(now time.Time) {
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
	for _, q := range s.queues {
		s.pack(q, true)
	}
	s.seal()
	s.openSince = time.Time{}
}

// pack turns a shard queue into aggregates for the request batcher: the
// full ones, or with all, every record.
func (s *aggregateScheduler) pack(q *queue, all bool) {
	for len(q.recs) > 0 && (all || q.bytes >= s.e.o.AggregateMaxBytes) {
		w, _, ok := takeAggregate(&s.agg, q, s.e.o.AggregateMaxBytes, nil)
		if !ok {
			return
		}
		s.addWire(w)
	}
}

func (s *aggregateScheduler) release(job) {}

// requeue re-aggregates the records by their shard and sends them at once,
// ahead of newer records of that shard.
func (s *aggregateScheduler) requeue(recs []*record) {
	for _, q := range s.queues.requeue(s.e.smap, recs) {
		s.pack(q, true)
		s.seal()
	}
}

func (s *aggregateScheduler) remap(m *shardMap) { s.queues = s.queues.remap(m) }

func (s *aggregateScheduler) drain() []*record {
	recs := s.requests.drain()
	s.openSince = time.Time{}
	return append(recs, s.queues.drain()...)
}

// startsWithMagic reports whether data begins with the KPL magic bytes: a
// reader may take such data for an aggregate, so in aggregating mode it is
// always sent inside one.
func startsWithMagic(data []byte) bool { return strings.HasPrefix(string(data), kpl.Magic) }

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
func takeAggregate(a *kpl.Aggregator, q *queue, limit int, inFlight map[string]int) (w wire, keys []string, ok bool) {
	a.Reset()
	var members []*record
	var held map[string]bool
	old := q.recs
	kept := q.recs[:0]
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
		if len(members) > 0 {
			pk = members[0].e.PartitionKey
		}
		if a.SizeWith(r.e.PartitionKey, r.e.ExplicitHashKey, len(r.e.Data))+len(pk) > limit {
			if len(members) == 0 {
				// Too large to share an aggregate: it goes alone.
				members = append(members, r)
				i++
			}
			break
		}
		a.Add(r.e.PartitionKey, r.e.ExplicitHashKey, r.e.Data)
		members = append(members, r)
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
		a.Reset()
		a.Add(r.e.PartitionKey, r.e.ExplicitHashKey, r.e.Data)
	}
	data := a.Encode()
	first := members[0].e
	return wire{many: members, data: data, pk: first.PartitionKey, ehk: first.ExplicitHashKey,
		size: len(data) + len(first.PartitionKey), shard: q.id, routed: true}, keys, true
}
