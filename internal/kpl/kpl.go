// Package kpl encodes and decodes the KPL aggregated record format, the one
// the Kinesis Producer Library writes and the Kinesis Client Library reads:
//
//	magic F3 89 9A C2 | protobuf AggregatedRecord | MD5 of the protobuf bytes (16)
//
// with the proto2 messages
//
//	AggregatedRecord { repeated string partition_key_table = 1;
//	                   repeated string explicit_hash_key_table = 2;
//	                   repeated Record records = 3; }
//	Record           { required uint64 partition_key_index = 1;
//	                   optional uint64 explicit_hash_key_index = 2;
//	                   required bytes data = 3;
//	                   repeated Tag tags = 4; }
//	Tag              { required string key = 1; optional string value = 2; }
//
// The format is small enough to write by hand with encoding/binary varints,
// which keeps protobuf out of shardflow's dependencies. [Aggregator] builds an
// aggregate with exact size accounting, so a caller can keep it under a record
// size limit; [Decode] takes one apart and returns an error, never a panic,
// for anything malformed.
//
// Decode follows the KCL's AggregatorUtil: a record without the magic, with
// at most 16 bytes after it, with a wrong MD5 or with a malformed protobuf
// body is not an aggregate, and a reader delivers it as one plain record.
// Decode takes apart one level only: user data that looks like an aggregate
// stays user data.
package kpl

import (
	"bytes"
	"crypto/md5"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// Magic is the prefix of every aggregated record.
const Magic = "\xf3\x89\x9a\xc2"

// Overhead is the size of an empty aggregated record: the magic prefix and the
// MD5 trailer.
const Overhead = len(Magic) + md5.Size

// Protobuf field tags (field number << 3 | wire type).
const (
	tagPartitionKeyTable    = 1<<3 | 2
	tagExplicitHashKeyTable = 2<<3 | 2
	tagRecords              = 3<<3 | 2
	tagPartitionKeyIndex    = 1 << 3 // wire type 0 (varint)
	tagExplicitHashKeyIndex = 2 << 3 // wire type 0 (varint)
	tagData                 = 3<<3 | 2
	tagTags                 = 4<<3 | 2
	tagTagKey               = 1<<3 | 2
	tagTagValue             = 2<<3 | 2
)

var (
	// ErrNotAggregated is returned by Decode for data that does not start with
	// [Magic] or has at most 16 bytes after it: a plain record.
	ErrNotAggregated = errors.New("kpl: not an aggregated record")
	// ErrChecksum is returned by Decode when the MD5 trailer does not match
	// the protobuf bytes. The KCL treats such a record as a plain record.
	ErrChecksum = errors.New("kpl: aggregated record checksum mismatch")
)

// FormatError reports a malformed protobuf body in a record whose magic and
// checksum were right.
type FormatError struct {
	// Offset is the byte offset in the protobuf body where decoding failed.
	Offset int
	// Reason says what was wrong.
	Reason string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("kpl: malformed aggregated record at protobuf offset %d: %s", e.Offset, e.Reason)
}

// Record is one user record inside an aggregate.
type Record struct {
	// PartitionKey is the user record's partition key.
	PartitionKey string
	// ExplicitHashKey is the user record's explicit hash key, "" if none.
	ExplicitHashKey string
	// Data is the payload. Decode returns slices of its input, not copies.
	Data []byte
}

// IsAggregated reports whether b starts with the magic prefix and has more
// than the 16 bytes of the checksum after it, as the KCL requires of an
// aggregate: the magic followed by at most 16 bytes (such as the MD5 of an
// empty message) is a plain record. It does not check the checksum.
func IsAggregated(b []byte) bool {
	return len(b) > Overhead && string(b[:len(Magic)]) == Magic
}

func uvarintLen(v uint64) int {
	// 1 byte per started 7 bits; 0 takes one byte.
	return (bits.Len64(v|1) + 6) / 7
}

// fieldLen is the encoded size of a length-delimited field of n bytes with a
// one-byte tag.
func fieldLen(n int) int { return 1 + uvarintLen(uint64(n)) + n }

// Aggregator builds one aggregated record. Add user records, read Size to stay
// under a limit, then Encode. The zero Aggregator is ready to use; Reset makes
// it reusable. It is not safe for concurrent use.
type Aggregator struct {
	pkIndex  map[string]uint64
	ehkIndex map[string]uint64
	pks      []string
	ehks     []string
	recs     []aggRec
	pbSize   int // bytes of the protobuf body so far
}

type aggRec struct {
	pk, ehk  uint64
	hasEHK   bool
	data     []byte
	bodySize int
}

// Len returns the number of user records added.
func (a *Aggregator) Len() int { return len(a.recs) }

// Size returns the exact size Encode would return now: magic, protobuf body
// and checksum.
func (a *Aggregator) Size() int { return Overhead + a.pbSize }

// SizeWith returns the exact size of the aggregate with one more user record
// of the given keys and data length added, without adding it.
func (a *Aggregator) SizeWith(partitionKey, explicitHashKey string, dataLen int) int {
	return a.Size() + a.growth(partitionKey, explicitHashKey, dataLen)
}

// growth is the protobuf size a user record adds: a new table entry per key
// the aggregate does not hold yet, plus the record message.
func (a *Aggregator) growth(pk, ehk string, dataLen int) int {
	n := 0
	pki, ok := a.pkIndex[pk]
	if !ok {
		pki = uint64(len(a.pks))
		n += fieldLen(len(pk))
	}
	body := 1 + uvarintLen(pki) + fieldLen(dataLen)
	if ehk != "" {
		ehki, ok := a.ehkIndex[ehk]
		if !ok {
			ehki = uint64(len(a.ehks))
			n += fieldLen(len(ehk))
		}
		body += 1 + uvarintLen(ehki)
	}
	return n + fieldLen(body)
}

// Add appends a user record. data is kept, not copied, until Encode or Reset.
func (a *Aggregator) Add(partitionKey, explicitHashKey string, data []byte) {
	a.pbSize += a.growth(partitionKey, explicitHashKey, len(data))
	if a.pkIndex == nil {
		a.pkIndex = make(map[string]uint64)
	}
	pki, ok := a.pkIndex[partitionKey]
	if !ok {
		pki = uint64(len(a.pks))
		a.pkIndex[partitionKey] = pki
		a.pks = append(a.pks, partitionKey)
	}
	r := aggRec{pk: pki, data: data}
	r.bodySize = 1 + uvarintLen(pki) + fieldLen(len(data))
	if explicitHashKey != "" {
		if a.ehkIndex == nil {
			a.ehkIndex = make(map[string]uint64)
		}
		ehki, ok := a.ehkIndex[explicitHashKey]
		if !ok {
			ehki = uint64(len(a.ehks))
			a.ehkIndex[explicitHashKey] = ehki
			a.ehks = append(a.ehks, explicitHashKey)
		}
		r.ehk, r.hasEHK = ehki, true
		r.bodySize += 1 + uvarintLen(ehki)
	}
	a.recs = append(a.recs, r)
}

// Reset empties the aggregator, keeping its memory.
func (a *Aggregator) Reset() {
	clear(a.pkIndex)
	clear(a.ehkIndex)
	clear(a.pks)
	clear(a.ehks)
	clear(a.recs)
	a.pks, a.ehks, a.recs, a.pbSize = a.pks[:0], a.ehks[:0], a.recs[:0], 0
}

// Encode returns the aggregated record: exactly Size bytes in a new slice.
// The encoding of an empty Aggregator is read as a plain record (see
// [IsAggregated]): send aggregates of at least one user record.
func (a *Aggregator) Encode() []byte {
	return a.AppendEncode(make([]byte, 0, a.Size()))
}

// AppendEncode appends the aggregated record to dst and returns the result.
func (a *Aggregator) AppendEncode(dst []byte) []byte {
	dst = append(dst, Magic...)
	start := len(dst)
	for _, k := range a.pks {
		dst = appendBytesField(dst, tagPartitionKeyTable, k)
	}
	for _, k := range a.ehks {
		dst = appendBytesField(dst, tagExplicitHashKeyTable, k)
	}
	for _, r := range a.recs {
		dst = append(dst, tagRecords)
		dst = binary.AppendUvarint(dst, uint64(r.bodySize))
		dst = append(dst, tagPartitionKeyIndex)
		dst = binary.AppendUvarint(dst, r.pk)
		if r.hasEHK {
			dst = append(dst, tagExplicitHashKeyIndex)
			dst = binary.AppendUvarint(dst, r.ehk)
		}
		dst = appendBytesField(dst, tagData, r.data)
	}
	sum := md5.Sum(dst[start:])
	return append(dst, sum[:]...)
}

func appendBytesField[S string | []byte](dst []byte, tag byte, v S) []byte {
	dst = append(dst, tag)
	dst = binary.AppendUvarint(dst, uint64(len(v)))
	return append(dst, v...)
}

// Decode returns the user records of an aggregated record, in order; their
// Data slices point into b. It returns [ErrNotAggregated] when b has no magic
// prefix or at most 16 bytes after it, [ErrChecksum] when the MD5 trailer is
// wrong, and a [*FormatError] when the protobuf body is malformed (a
// partition key index out of the table, a required field missing, a
// truncated field...). Unknown fields are skipped, as proto2 readers do. A
// valid body without records gives no records and no error.
func Decode(b []byte) ([]Record, error) {
	return AppendDecode(nil, b)
}

// AppendDecode is Decode appending to dst, so a caller can reuse a slice.
func AppendDecode(dst []Record, b []byte) ([]Record, error) {
	if !IsAggregated(b) {
		return dst, ErrNotAggregated
	}
	pb := b[len(Magic) : len(b)-md5.Size]
	sum := md5.Sum(pb)
	if !bytes.Equal(sum[:], b[len(b)-md5.Size:]) {
		return dst, ErrChecksum
	}
	d := decoder{b: pb}
	var pks, ehks []string
	// Records may come before the tables that they index in a valid encoding
	// (protobuf fields may appear in any order), so indexes are resolved after
	// the whole body was read.
	var raws []decodedRecord
	for !d.done() {
		tag, err := d.uvarint()
		if err != nil {
			return dst, err
		}
		switch tag {
		case tagPartitionKeyTable:
			s, err := d.bytes()
			if err != nil {
				return dst, err
			}
			pks = append(pks, string(s))
		case tagExplicitHashKeyTable:
			s, err := d.bytes()
			if err != nil {
				return dst, err
			}
			ehks = append(ehks, string(s))
		case tagRecords:
			at := d.off
			body, err := d.bytes()
			if err != nil {
				return dst, err
			}
			r, err := decodeRecord(body, at)
			if err != nil {
				return dst, err
			}
			raws = append(raws, r)
		default:
			if err := d.skip(tag); err != nil {
				return dst, err
			}
		}
	}
	for _, r := range raws {
		if r.pk >= uint64(len(pks)) {
			return dst, &FormatError{Offset: len(pb), Reason: fmt.Sprintf("partition key index %d outside a table of %d", r.pk, len(pks))}
		}
		rec := Record{PartitionKey: pks[r.pk], Data: r.data}
		if r.hasEHK {
			if r.ehk >= uint64(len(ehks)) {
				return dst, &FormatError{Offset: len(pb), Reason: fmt.Sprintf("explicit hash key index %d outside a table of %d", r.ehk, len(ehks))}
			}
			rec.ExplicitHashKey = ehks[r.ehk]
		}
		dst = append(dst, rec)
	}
	return dst, nil
}

type decodedRecord struct {
	pk, ehk uint64
	hasEHK  bool
	data    []byte
}

func decodeRecord(body []byte, base int) (decodedRecord, error) {
	d := decoder{b: body, base: base}
	var r decodedRecord
	var hasPK, hasData bool
	for !d.done() {
		tag, err := d.uvarint()
		if err != nil {
			return r, err
		}
		switch tag {
		case tagPartitionKeyIndex:
			if r.pk, err = d.uvarint(); err != nil {
				return r, err
			}
			hasPK = true
		case tagExplicitHashKeyIndex:
			if r.ehk, err = d.uvarint(); err != nil {
				return r, err
			}
			r.hasEHK = true
		case tagData:
			if r.data, err = d.bytes(); err != nil {
				return r, err
			}
			hasData = true
		case tagTags:
			tag, err := d.bytes()
			if err != nil {
				return r, err
			}
			if err := checkTag(tag, base+d.off-len(tag)); err != nil {
				return r, err
			}
		default:
			if err := d.skip(tag); err != nil {
				return r, err
			}
		}
	}
	switch {
	case !hasPK:
		return r, &FormatError{Offset: base, Reason: "record without partition_key_index"}
	case !hasData:
		return r, &FormatError{Offset: base, Reason: "record without data"}
	}
	if r.data == nil {
		r.data = []byte{}
	}
	return r, nil
}

// checkTag validates a Tag message; tags are read and dropped.
func checkTag(b []byte, base int) error {
	d := decoder{b: b, base: base}
	hasKey := false
	for !d.done() {
		tag, err := d.uvarint()
		if err != nil {
			return err
		}
		switch tag {
		case tagTagKey:
			hasKey = true
			_, err = d.bytes()
		case tagTagValue:
			_, err = d.bytes()
		default:
			err = d.skip(tag)
		}
		if err != nil {
			return err
		}
	}
	if !hasKey {
		return &FormatError{Offset: base, Reason: "tag without key"}
	}
	return nil
}

// decoder reads protobuf wire format from b; base is b's offset in the body,
// for error messages.
type decoder struct {
	b    []byte
	off  int
	base int
}

func (d *decoder) done() bool { return d.off >= len(d.b) }

func (d *decoder) fail(reason string) error {
	return &FormatError{Offset: d.base + d.off, Reason: reason}
}

func (d *decoder) uvarint() (uint64, error) {
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		return 0, d.fail("bad varint")
	}
	d.off += n
	return v, nil
}

func (d *decoder) bytes() ([]byte, error) {
	n, err := d.uvarint()
	if err != nil {
		return nil, err
	}
	if n > uint64(len(d.b)-d.off) {
		return nil, d.fail(fmt.Sprintf("field of %d bytes past the end", n))
	}
	v := d.b[d.off : d.off+int(n) : d.off+int(n)]
	d.off += int(n)
	return v, nil
}

// maxGroupDepth bounds the nesting of skipped groups, as protobuf-java's
// recursion limit does.
const maxGroupDepth = 100

// skip skips the value of an unknown field.
func (d *decoder) skip(tag uint64) error {
	return d.skipDepth(tag, 0)
}

func (d *decoder) skipDepth(tag uint64, depth int) error {
	if tag>>3 == 0 {
		return d.fail("field number 0")
	}
	switch tag & 7 {
	case 0:
		_, err := d.uvarint()
		return err
	case 1:
		return d.advance(8)
	case 2:
		_, err := d.bytes()
		return err
	case 3:
		// A group (deprecated, but proto2 readers skip unknown ones):
		// fields up to the end-group tag of the same field number.
		if depth >= maxGroupDepth {
			return d.fail("groups nested too deep")
		}
		for {
			if d.done() {
				return d.fail("group without its end")
			}
			inner, err := d.uvarint()
			if err != nil {
				return err
			}
			if inner&7 == 4 {
				if inner>>3 != tag>>3 {
					return d.fail("group ended by another field number")
				}
				return nil
			}
			if err := d.skipDepth(inner, depth+1); err != nil {
				return err
			}
		}
	case 5:
		return d.advance(4)
	default:
		// 4: an end of group outside a group; 6 and 7 do not exist.
		return d.fail(fmt.Sprintf("unexpected wire type %d", tag&7))
	}
}

func (d *decoder) advance(n int) error {
	if len(d.b)-d.off < n {
		return d.fail("truncated fixed-size field")
	}
	d.off += n
	return nil
}
