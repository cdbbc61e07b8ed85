package kinesissink

import (
	"hash/maphash"
	"math/rand/v2"
	"strings"
	"sync/atomic"
)

// keyCacheSlots is how many partition keys a keyCache remembers at most.
const keyCacheSlots = 8192

// keyCache remembers the routing hash (the MD5) of recently put partition
// keys, for the modes that route records by shard: an MD5 is a sixth of the
// aggregating mode's CPU time per record, and many workloads put the same
// keys again and again (a customer, a device, a tenant). It is
// direct-mapped: a key has one slot, found by a hash much cheaper than MD5.
// A key whose slot is empty takes it; one whose slot holds another key
// takes it only once in 64 misses, so that keys put once (random or unique
// keys) cost a lookup each and, once the slots are full, almost never an
// allocation, while a working set that changes still moves in. It is safe
// for concurrent use without a lock: a slot holds an immutable entry.
//
// A lookup that misses costs more than nothing (a hash, and a slot that is
// often out of the processor's caches): up to half an MD5 while the
// producer writes megabytes of requests. So the cache watches a sixteenth
// of its lookups: when fewer than an eighth of the keyCacheWindow last
// watched ones hit, it goes cold, and only one key in 16, at random, is
// looked up (and, when missing, remembered) until the watched lookups hit
// again. Keys that never repeat then pay a sixteenth of a lookup each.
//
// Memory: the slots (128 KiB), and an entry per slot taken (32 bytes and a
// copy of the key), so at most about 2.5 MiB with keys of 256 characters.
type keyCache struct {
	seed maphash.Seed
	// cold: lookups hit too seldom to pay. samples and hits count the
	// watched lookups of the current window; they are approximate when
	// several goroutines put at once, which only moves a window a little.
	cold          atomic.Bool
	samples, hits atomic.Int32
	slots         [keyCacheSlots]keyCacheSlot
}

// keyCacheWindow is how many watched lookups keyCache judges itself by.
const keyCacheWindow = 64

// keyCacheSlot is a slot of keyCache. tag is the maphash of the key last put in
// it, so that a key not remembered is told apart without reading the entry
// (a cache miss of the processor's when the entry is cold); a tag that
// matches is checked against the entry's key.
type keyCacheSlot struct {
	tag atomic.Uint64
	kh  atomic.Pointer[keyHash]
}

// keyHash is one remembered key: never modified once in a slot.
type keyHash struct {
	key string
	h   u128
}

func newKeyCache() *keyCache { return &keyCache{seed: maphash.MakeSeed()} }

// hash returns hashPartitionKey(key).
func (c *keyCache) hash(key string) u128 {
	cold := c.cold.Load()
	if cold && rand.Uint32()%16 != 0 {
		return hashPartitionKey(key)
	}
	tag := maphash.String(c.seed, key)
	watched := cold || tag%(16*keyCacheSlots) < keyCacheSlots // 1 in 16, by bits the slot index does not use
	slot := &c.slots[tag%keyCacheSlots]
	if slot.tag.Load() == tag {
		if kh := slot.kh.Load(); kh != nil && kh.key == key {
			if watched {
				c.watch(true)
			}
			return kh.h
		}
	}
	if watched {
		c.watch(false)
	}
	h := hashPartitionKey(key)
	if slot.kh.Load() == nil || rand.Uint32()%64 == 0 {
		// A copy: the key may be part of a larger string the caller
		// would not expect the producer to keep.
		slot.kh.Store(&keyHash{key: strings.Clone(key), h: h})
		slot.tag.Store(tag)
	}
	return h
}

// watch counts a watched lookup, and at the end of a window judges whether
// the cache is worth its lookups.
func (c *keyCache) watch(hit bool) {
	hits := c.hits.Load()
	if hit {
		hits = c.hits.Add(1)
	}
	if c.samples.Add(1) < keyCacheWindow {
		return
	}
	c.cold.Store(hits < keyCacheWindow/8)
	c.samples.Store(0)
	c.hits.Store(0)
}
