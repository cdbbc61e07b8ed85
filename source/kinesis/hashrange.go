package kinesissource

import (
	"crypto/md5"
	"encoding/binary"
	"math/bits"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow/internal/kpl"
)

// hashKey is a 128-bit Kinesis hash key.
type hashKey struct{ hi, lo uint64 }

func (a hashKey) less(b hashKey) bool { return a.hi < b.hi || a.hi == b.hi && a.lo < b.lo }

// parseHashKey reads a decimal hash key: digits only, at most 2^128-1.
func parseHashKey(s string) (hashKey, bool) {
	if s == "" {
		return hashKey{}, false
	}
	var k hashKey
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return hashKey{}, false
		}
		// k = k*10 + digit, refusing an overflow of 128 bits.
		hiCarry, lo := bits.Mul64(k.lo, 10)
		hiTop, hi := bits.Mul64(k.hi, 10)
		hi, carry := bits.Add64(hi, hiCarry, 0)
		if hiTop != 0 || carry != 0 {
			return hashKey{}, false
		}
		lo, carry = bits.Add64(lo, uint64(c-'0'), 0)
		hi, carry = bits.Add64(hi, 0, carry)
		if carry != 0 {
			return hashKey{}, false
		}
		k = hashKey{hi, lo}
	}
	return k, true
}

// partitionKeyHash is where Kinesis routes a partition key: the MD5 of its
// bytes, read as a big-endian 128-bit integer.
func partitionKeyHash(pk string) hashKey {
	// Copying the key to the stack spares an allocation per user record:
	// Kinesis partition keys are at most 256 bytes.
	var buf [256]byte
	sum := md5.Sum(append(buf[:0], pk...))
	return hashKey{binary.BigEndian.Uint64(sum[:8]), binary.BigEndian.Uint64(sum[8:])}
}

// hashRange is a shard's inclusive range of hash keys. The zero hashRange
// is unknown, and nothing is checked against it.
type hashRange struct {
	start, end hashKey
	known      bool
}

// shardHashRange returns the range ListShards gave for a shard, or the
// unknown range when it gave none that parses.
func shardHashRange(r *types.HashKeyRange) hashRange {
	if r == nil {
		return hashRange{}
	}
	start, ok1 := parseHashKey(aws.ToString(r.StartingHashKey))
	end, ok2 := parseHashKey(aws.ToString(r.EndingHashKey))
	if !ok1 || !ok2 || end.less(start) {
		return hashRange{}
	}
	return hashRange{start, end, true}
}

// checked reports whether user records need checking against the range:
// not when it is unknown or holds every hash key (a stream of one shard).
func (r hashRange) checked() bool {
	return r.known && (r.start != hashKey{} || r.end != hashKey{^uint64(0), ^uint64(0)})
}

// contains reports whether Kinesis routes a user record to the shard of
// this range: its explicit hash key if it has one, else the MD5 of its
// partition key, within the range. An explicit hash key that is not a
// 128-bit decimal routes nowhere.
func (r hashRange) contains(u *kpl.Record) bool {
	var k hashKey
	if u.ExplicitHashKey != "" {
		var ok bool
		if k, ok = parseHashKey(u.ExplicitHashKey); !ok {
			return false
		}
	} else {
		k = partitionKeyHash(u.PartitionKey)
	}
	return !k.less(r.start) && !r.end.less(k)
}

// outOfRange counts the user records that lie outside the range.
func (r hashRange) outOfRange(users []kpl.Record) int {
	if !r.checked() {
		return 0
	}
	n := 0
	for i := range users {
		if !r.contains(&users[i]) {
			n++
		}
	}
	return n
}
