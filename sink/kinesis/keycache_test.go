package kinesissink

import (
	"hash/maphash"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// The cache returns every key's MD5, whether the key is new, remembered, or
// shares its slot with another key (8 times more keys than slots, twice
// over, so most slots see several keys and some are replaced).
func TestKeyCacheHashesAsMD5(t *testing.T) {
	t.Parallel()
	c := newKeyCache()
	for round := range 2 {
		for i := range 8 * keyCacheSlots {
			k := "key-" + strconv.Itoa(i)
			if got, want := c.hash(k), hashPartitionKey(k); got != want {
				t.Fatalf("round %d: hash(%q) = %v, want %v", round, k, got, want)
			}
		}
	}
	for i := range c.slots {
		if kh := c.slots[i].kh.Load(); kh != nil && kh.h != hashPartitionKey(kh.key) {
			t.Fatalf("slot %d holds %q with a hash not its own", i, kh.key)
		}
	}
}

// The cache goes cold while keys do not repeat, and warm again once they
// do; warm, a small working set is remembered whole.
func TestKeyCacheGoesColdAndWarm(t *testing.T) {
	t.Parallel()
	c := newKeyCache()
	hot := func() {
		for range 200 {
			for i := range 100 {
				c.hash("hot-" + strconv.Itoa(i))
			}
		}
	}
	hot()
	if c.cold.Load() {
		t.Fatal("cold while 100 keys are put again and again")
	}
	for i := range 100 {
		k := "hot-" + strconv.Itoa(i)
		tag := maphash.String(c.seed, k)
		if kh := c.slots[tag%keyCacheSlots].kh.Load(); kh == nil || kh.key != k {
			// Two of the 100 keys may share a slot; the first keeps it.
			if kh == nil || !strings.HasPrefix(kh.key, "hot-") {
				t.Errorf("key %q is not remembered", k)
			}
		}
	}
	for i := range 100 * 16 * keyCacheWindow {
		c.hash("once-" + strconv.Itoa(i))
	}
	if !c.cold.Load() {
		t.Fatal("warm while no key is put twice")
	}
	hot()
	if c.cold.Load() {
		t.Fatal("still cold after 20,000 puts of 100 keys")
	}
}

// A remembered key is a copy: the cache does not keep the string it was
// given (which may be part of a larger one) alive.
func TestKeyCacheCopiesKeys(t *testing.T) {
	t.Parallel()
	c := newKeyCache()
	big := strings.Repeat("x", 1<<16) + "tail"
	key := big[len(big)-6:]
	c.hash(key)
	var kh *keyHash
	for i := range c.slots {
		if p := c.slots[i].kh.Load(); p != nil {
			kh = p
		}
	}
	if kh == nil || kh.key != key {
		t.Fatalf("the key is not remembered: %+v", kh)
	}
	if unsafe.StringData(kh.key) == unsafe.StringData(key) {
		t.Fatal("the cache keeps the caller's string, not a copy")
	}
}

// BenchmarkKeyHash is the cost of a record's routing hash: the MD5 alone,
// and through the cache with keys put once (every lookup misses) and with
// 1,000 or 10,000 keys in turn.
func BenchmarkKeyHash(b *testing.B) {
	distinct := make([]string, 1<<20)
	for i := range distinct {
		distinct[i] = "user-" + strconv.Itoa(i)
	}
	var sink u128
	b.Run("md5", func(b *testing.B) {
		i := 0
		for b.Loop() {
			sink = hashPartitionKey(distinct[i%len(distinct)])
			i++
		}
	})
	for _, n := range []int{len(distinct), 10000, 1000} {
		b.Run("cache-keys="+strconv.Itoa(n), func(b *testing.B) {
			c := newKeyCache()
			i := 0
			for b.Loop() {
				sink = c.hash(distinct[i%n])
				i++
			}
		})
	}
	_ = sink
}
