package kinesissink

import (
	"strings"

	"github.com/shardflow/shardflow/internal/kpl"
)

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

// takeAggregateLocked takes records from the head of a shard queue into one
// KPL aggregate of at most AggregateMaxBytes (data and partition key, as
// Kinesis counts the record), exactly sized. A record that is alone, or too
// large to share an aggregate, goes as a plain record, unless its data
// begins with the KPL magic: it then goes in an aggregate of its own (at
// most MaxRecordBytes, checked when it was accepted), so no reader takes it
// for an aggregate. In ordered mode,
// records whose key is in flight are skipped, with every later record of
// their key. It returns the wire entry and, in ordered mode, the distinct
// keys it carries; ok is false when it took nothing.
func (e *engine) takeAggregateLocked(q *queue, ordered bool) (w wire, keys []string, ok bool) {
	limit := min(e.o.AggregateMaxBytes, e.o.MaxRecordBytes)
	a := &e.agg
	a.Reset()
	var members []*record
	var held map[string]bool
	old := q.recs
	kept := q.recs[:0]
	i := 0
	for ; i < len(old); i++ {
		r := old[i]
		if ordered {
			if k := r.e.PartitionKey; held[k] || e.keys[k] > 0 {
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
	if ordered {
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
			return plainWire(r, q.id), keys, true
		}
		// Sent plain, data that reads as an aggregate would be
		// de-aggregated into its inner records: wrap it, as the KPL does.
		a.Reset()
		a.Add(r.e.PartitionKey, r.e.ExplicitHashKey, r.e.Data)
	}
	data := a.Encode()
	first := members[0].e
	return wire{many: members, data: data, pk: first.PartitionKey, ehk: first.ExplicitHashKey,
		size: len(data) + len(first.PartitionKey), shard: q.id}, keys, true
}

// aggregateLocked turns a shard queue of the unordered aggregating mode into
// aggregates for the request batcher: the full ones, or with all, every
// record.
func (e *engine) aggregateLocked(q *queue, all bool) {
	for len(q.recs) > 0 && (all || q.bytes >= e.o.AggregateMaxBytes) {
		w, _, ok := e.takeAggregateLocked(q, false)
		if !ok {
			return
		}
		e.addWireLocked(w)
	}
}
