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
// Memory: the slots (128 KiB), and an entry per slot taken (48 bytes and a
// copy of the key), so at most about 2.5 MiB with keys of 256 characters.
type keyCache struct {
	seed  maphash.Seed
	slots [keyCacheSlots]keyCacheSlot
}

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
	tag := maphash.String(c.seed, key)
	slot := &c.slots[tag%keyCacheSlots]
	if slot.tag.Load() == tag {
		if kh := slot.kh.Load(); kh != nil && kh.key == key {
			return kh.h
		}
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
