package kinesissink

import (
	"crypto/md5"
	"encoding/binary"
	"hash/maphash"

	"github.com/shardflow/shardflow/internal/kpl"
)

// aggEncoder encodes KPL aggregates of records, byte for byte as
// kpl.Aggregator does (every repeated key shares one table entry, in
// first-seen order), with less work per record: the key tables are indexed
// by the hash each record already carries (the MD5 of its partition key,
// or its explicit hash key), in an open-addressing table of plain integers
// reused from aggregate to aggregate, not by a map of strings; and the
// aggregate is written straight into a buffer of its exact size. A request
// goroutine keeps one (worker).
type aggEncoder struct {
	pk, ehk keyTable
	idx     []uint32 // per member: its partition key's, then its explicit hash key's, index
	seed    maphash.Seed
	// spare are buffers of aggregates whose request is done, to encode
	// the next ones into (engine.reclaim): at most maxSpare.
	spare [][]byte
}

// maxSpare is how many spare buffers an aggEncoder keeps.
const maxSpare = 16

// reuse keeps buf, the encoding of an aggregate nothing refers to any more,
// for a next aggregate.
func (a *aggEncoder) reuse(buf []byte) {
	if len(a.spare) < maxSpare {
		a.spare = append(a.spare, buf[:0])
	}
}

// buffer returns an empty buffer of at least n bytes: a spare one when one
// is large enough.
func (a *aggEncoder) buffer(n int) []byte {
	for len(a.spare) > 0 {
		last := len(a.spare) - 1
		buf := a.spare[last]
		a.spare[last] = nil
		a.spare = a.spare[:last]
		if cap(buf) >= n {
			return buf
		}
	}
	return make([]byte, 0, n)
}

// keyTable assigns table indexes to distinct keys in first-seen order.
type keyTable struct {
	keys  []string
	slots []keySlot // open addressing, a power of two long
	gen   uint32    // slots of another generation are empty
}

type keySlot struct {
	h   uint64 // the key's hash, to compare strings only when it matches
	idx uint32
	gen uint32
}

// reset empties the table, sized for up to n keys.
func (t *keyTable) reset(n int) {
	clear(t.keys)
	t.keys = t.keys[:0]
	size := 16
	for size < 2*n {
		size *= 2
	}
	if len(t.slots) < size {
		t.slots, t.gen = make([]keySlot, size), 1
		return
	}
	if t.gen++; t.gen == 0 {
		clear(t.slots)
		t.gen = 1
	}
}

// index returns the index of key, whose hash is h, adding it when new.
func (t *keyTable) index(key string, h uint64) uint32 {
	mask := uint64(len(t.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.gen != t.gen {
			*s = keySlot{h: h, idx: uint32(len(t.keys)), gen: t.gen}
			t.keys = append(t.keys, key)
			return s.idx
		}
		if s.h == h && t.keys[s.idx] == key {
			return s.idx
		}
	}
}

// encode returns the aggregate of recs: what kpl.Aggregator's Encode returns
// for them, added in order.
func (a *aggEncoder) encode(recs []*record) []byte {
	a.pk.reset(len(recs))
	ehks := false // the explicit hash key table is reset for this aggregate
	a.idx = a.idx[:0]
	if a.seed == (maphash.Seed{}) {
		a.seed = maphash.MakeSeed()
	}
	// A record's hash is the MD5 of its partition key unless it has an
	// explicit hash key: the same key must hash alike in every record.
	md5Keys := true
	for _, r := range recs {
		if r.e.ExplicitHashKey != "" {
			md5Keys = false
			break
		}
	}
	body := 0 // protobuf bytes
	for _, r := range recs {
		pk, ehk := r.e.PartitionKey, r.e.ExplicitHashKey
		var h uint64
		if md5Keys {
			h = r.hash.hi ^ r.hash.lo // as good a hash as any
		} else {
			h = maphash.String(a.seed, pk)
		}
		n := len(a.pk.keys)
		pki := a.pk.index(pk, h)
		if len(a.pk.keys) > n {
			body += protoFieldLen(len(pk))
		}
		a.idx = append(a.idx, pki)
		rec := 1 + uvarintLen(uint64(pki)) + protoFieldLen(len(r.e.Data))
		if ehk != "" {
			if !ehks {
				a.ehk.reset(len(recs))
				ehks = true
			}
			n := len(a.ehk.keys)
			ehki := a.ehk.index(ehk, r.hash.hi^r.hash.lo) // the key's value: distinct keys, distinct hashes
			if len(a.ehk.keys) > n {
				body += protoFieldLen(len(ehk))
			}
			a.idx = append(a.idx, ehki)
			rec += 1 + uvarintLen(uint64(ehki))
		}
		body += protoFieldLen(rec)
	}
	dst := a.buffer(kpl.Overhead + body)
	dst = append(dst, kpl.Magic...)
	for _, k := range a.pk.keys {
		dst = appendField(dst, 1<<3|2, k)
	}
	if ehks {
		for _, k := range a.ehk.keys {
			dst = appendField(dst, 2<<3|2, k)
		}
	}
	idx := a.idx
	for _, r := range recs {
		pki := uint64(idx[0])
		rec := 1 + uvarintLen(pki) + protoFieldLen(len(r.e.Data))
		var ehki uint64
		hasEHK := r.e.ExplicitHashKey != ""
		if hasEHK {
			ehki = uint64(idx[1])
			rec += 1 + uvarintLen(ehki)
			idx = idx[2:]
		} else {
			idx = idx[1:]
		}
		dst = append(dst, 3<<3|2)
		dst = binary.AppendUvarint(dst, uint64(rec))
		dst = append(dst, 1<<3)
		dst = binary.AppendUvarint(dst, pki)
		if hasEHK {
			dst = append(dst, 2<<3)
			dst = binary.AppendUvarint(dst, ehki)
		}
		dst = appendField(dst, 3<<3|2, r.e.Data)
	}
	sum := md5.Sum(dst[len(kpl.Magic):])
	dst = append(dst, sum[:]...)
	clear(a.pk.keys) // hold no record's key
	a.pk.keys = a.pk.keys[:0]
	if ehks {
		clear(a.ehk.keys)
		a.ehk.keys = a.ehk.keys[:0]
	}
	return dst
}

// appendField appends a length-delimited protobuf field with a one-byte tag.
func appendField[S string | []byte](dst []byte, tag byte, v S) []byte {
	dst = append(dst, tag)
	dst = binary.AppendUvarint(dst, uint64(len(v)))
	return append(dst, v...)
}
