package kinesissink

import (
	"cmp"
	"context"
	"fmt"
	"math/big"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
)

// u128 is a Kinesis hash key: an unsigned 128-bit integer.
type u128 struct{ hi, lo uint64 }

func (a u128) cmp(b u128) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, b.lo)
}

func (a u128) String() string {
	v := new(big.Int).SetUint64(a.hi)
	v.Lsh(v, 64).Or(v, new(big.Int).SetUint64(a.lo))
	return v.String()
}

// parseHashKey parses a decimal hash key as Kinesis accepts it: digits only,
// no sign, no leading zeros, at most 2^128-1.
func parseHashKey(s string) (u128, bool) {
	if s == "" || len(s) > 39 || (len(s) > 1 && s[0] == '0') || strings.TrimLeft(s, "0123456789") != "" {
		return u128{}, false
	}
	v, ok := new(big.Int).SetString(s, 10)
	if !ok || v.BitLen() > 128 {
		return u128{}, false
	}
	var b [16]byte
	v.FillBytes(b[:])
	return u128{hi: beUint64(b[:8]), lo: beUint64(b[8:])}, true
}

func beUint64(b []byte) uint64 {
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v
}

// shardRange is one shard's inclusive hash key range.
type shardRange struct {
	id         string
	start, end u128
	open       bool
}

// shardMap predicts the shard of a hash key from a ListShards snapshot.
// It is immutable once built.
type shardMap struct {
	open []shardRange // open shards, by start
	all  map[string]shardRange
}

// shardOf returns the open shard whose range holds h, or "" when none does
// (a gap while the stream reshards).
func (m *shardMap) shardOf(h u128) string {
	if i := m.indexOf(h); i >= 0 {
		return m.open[i].id
	}
	return ""
}

// indexOf returns the index in m.open of the shard whose range holds h, or
// -1 when none does.
func (m *shardMap) indexOf(h u128) int {
	// The last shard starting at or before h: a binary search written out
	// (slices.BinarySearchFunc with a comparison function costs several
	// times more, per record).
	lo, hi := 0, len(m.open)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if s := m.open[mid].start; s.hi < h.hi || (s.hi == h.hi && s.lo <= h.lo) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	i := lo - 1
	if i < 0 || m.open[i].end.cmp(h) < 0 {
		return -1
	}
	return i
}

// holds reports whether shard id's range holds h; ok is false when the map
// does not know the shard.
func (m *shardMap) holds(id string, h u128) (holds, ok bool) {
	r, ok := m.all[id]
	if !ok {
		return false, false
	}
	return r.start.cmp(h) <= 0 && h.cmp(r.end) <= 0, true
}

// holdsAll reports whether shard id is known and its range holds the hash
// key of every record.
func (m *shardMap) holdsAll(id string, recs []*record) bool {
	for _, r := range recs {
		if in, known := m.holds(id, r.hash); !known || !in {
			return false
		}
	}
	return true
}

// loadShardMap lists every shard of the stream, open and closed.
func loadShardMap(ctx context.Context, client API, stream string) (*shardMap, error) {
	m := &shardMap{all: make(map[string]shardRange)}
	in := &kinesis.ListShardsInput{}
	setStream(stream, &in.StreamName, &in.StreamARN)
	for {
		out, err := client.ListShards(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("list shards of %q: %w", stream, err)
		}
		for _, s := range out.Shards {
			if s.HashKeyRange == nil {
				continue
			}
			start, ok1 := parseHashKey(aws.ToString(s.HashKeyRange.StartingHashKey))
			end, ok2 := parseHashKey(aws.ToString(s.HashKeyRange.EndingHashKey))
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("list shards of %q: shard %s has a malformed hash key range", stream, aws.ToString(s.ShardId))
			}
			r := shardRange{id: aws.ToString(s.ShardId), start: start, end: end,
				open: s.SequenceNumberRange == nil || s.SequenceNumberRange.EndingSequenceNumber == nil}
			m.all[r.id] = r
			if r.open {
				m.open = append(m.open, r)
			}
		}
		if out.NextToken == nil {
			break
		}
		in = &kinesis.ListShardsInput{NextToken: out.NextToken}
	}
	slices.SortFunc(m.open, func(a, b shardRange) int { return a.start.cmp(b.start) })
	return m, nil
}

// setStream names the stream by ARN when it looks like one, else by name.
func setStream(stream string, name, arn **string) {
	if strings.HasPrefix(stream, "arn:") {
		*arn = aws.String(stream)
	} else {
		*name = aws.String(stream)
	}
}
