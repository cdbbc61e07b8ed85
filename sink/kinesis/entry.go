package kinesissink

import (
	"context"
	"crypto/md5"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strconv"
	"unicode/utf8"

	"github.com/shardflow/shardflow"
)

// Limits of one Kinesis record.
const (
	// MaxPartitionKeyLen is the most characters (Unicode code points) of a
	// partition key; the least is 1.
	MaxPartitionKeyLen = 256
	// MaxRecordBytesLimit is the largest record size a stream can be
	// configured for (10 MiB); [Options].MaxRecordBytes may not exceed it.
	MaxRecordBytesLimit = 10 << 20
)

// Entry is one record to write: the element type of the sink and what a
// [Producer] puts.
type Entry struct {
	// Data is the payload. The sink keeps it, without copying, until the
	// entry's outcome is known: do not modify it after handing it over.
	Data []byte
	// PartitionKey routes the entry to a shard (the MD5 of the key picks the
	// shard) and is what per-key order is kept by. 1 to 256 characters.
	PartitionKey string
	// ExplicitHashKey, when not empty, routes the entry instead of the
	// partition key: a decimal integer from 0 to 2^128-1.
	ExplicitHashKey string
}

// size is what the entry counts against the record and request limits: data
// plus partition key, as Kinesis counts them.
func (e *Entry) size() int { return len(e.Data) + len(e.PartitionKey) }

// validate checks e against Kinesis' limits and returns the 128-bit hash key
// it is routed by: its explicit hash key, else hashKey of its partition key
// (none when hashKey is nil: the plain mode does not route records).
func (e *Entry) validate(maxRecordBytes int, hashKey func(string) u128) (u128, error) {
	n := len(e.PartitionKey) // as many characters or more: count them only when too many
	if n > MaxPartitionKeyLen {
		n = utf8.RuneCountInString(e.PartitionKey)
	}
	switch {
	case n == 0 || n > MaxPartitionKeyLen:
		return u128{}, &ValidationError{Field: "PartitionKey", Reason: fmt.Sprintf("must be 1 to %d characters, got %d", MaxPartitionKeyLen, n)}
	case !utf8.ValidString(e.PartitionKey):
		return u128{}, &ValidationError{Field: "PartitionKey", Reason: "is not valid UTF-8"}
	case len(e.Data) == 0:
		// The SDK refuses a nil Data for the whole PutRecords request.
		return u128{}, &ValidationError{Field: "Data", Reason: "is empty"}
	case e.size() > maxRecordBytes:
		return u128{}, &ValidationError{Field: "Data", Reason: fmt.Sprintf("data and partition key are %d bytes, more than the record limit of %d", e.size(), maxRecordBytes)}
	}
	if e.ExplicitHashKey != "" {
		h, ok := parseHashKey(e.ExplicitHashKey)
		if !ok {
			return u128{}, &ValidationError{Field: "ExplicitHashKey", Reason: fmt.Sprintf("%.50q is not a decimal integer from 0 to 2^128-1", e.ExplicitHashKey)}
		}
		return h, nil
	}
	if hashKey == nil {
		return u128{}, nil
	}
	return hashKey(e.PartitionKey), nil
}

// hashPartitionKey is Kinesis' routing hash: the MD5 of the key, read as a
// big-endian 128-bit integer.
func hashPartitionKey(key string) u128 {
	sum := md5.Sum([]byte(key))
	return u128{hi: binary.BigEndian.Uint64(sum[:8]), lo: binary.BigEndian.Uint64(sum[8:])}
}

// KeyFunc picks the partition key of a value.
type KeyFunc[T any] func(v T) string

// KeyFromField uses a field (or any string derived from the value) as the
// partition key: entries with the same key stay in order on one shard.
func KeyFromField[T any](field func(v T) string) KeyFunc[T] { return KeyFunc[T](field) }

// RandomKey gives every value a random partition key of 32 hexadecimal
// digits, spreading values evenly over the shards, with no order between
// them.
func RandomKey[T any]() KeyFunc[T] {
	return func(T) string { return randomKey() }
}

func randomKey() string {
	var b [32]byte
	out := strconv.AppendUint(b[:0], rand.Uint64()|1<<63, 16)
	out = strconv.AppendUint(out, rand.Uint64()|1<<63, 16)
	return string(out)
}

// FixedKey gives every value the same partition key: one shard, one order.
func FixedKey[T any](key string) KeyFunc[T] {
	return func(T) string { return key }
}

// ToEntry returns a Map handler that turns a value into an [Entry] with the
// data encode returns and the partition key key picks:
//
//	Map(kinesissink.ToEntry(encodeOrder, kinesissink.KeyFromField(func(o Order) string { return o.CustomerID })))
func ToEntry[T any](encode func(ctx context.Context, v T) ([]byte, error), key KeyFunc[T]) func(context.Context, T) (Entry, error) {
	return func(ctx context.Context, v T) (Entry, error) {
		data, err := encode(ctx, v)
		if err != nil {
			return Entry{}, err
		}
		return Entry{Data: data, PartitionKey: key(v)}, nil
	}
}

// FromRecord is a Map handler that writes a record read from a stream as it
// is, keeping its partition key (and explicit hash key): a relay.
func FromRecord(_ context.Context, r shardflow.Record) (Entry, error) {
	return Entry{Data: r.Data, PartitionKey: r.PartitionKey, ExplicitHashKey: r.ExplicitHashKey}, nil
}
