package kpl

import (
	"bytes"
	"crypto/md5"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func encode(recs []Record) []byte {
	var a Aggregator
	for _, r := range recs {
		a.Add(r.PartitionKey, r.ExplicitHashKey, r.Data)
	}
	return a.Encode()
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		recs []Record
	}{
		{"one record", []Record{{PartitionKey: "k", Data: []byte("hello")}}},
		{"shared keys are stored once", []Record{
			{PartitionKey: "a", Data: []byte("1")}, {PartitionKey: "b", Data: []byte("2")}, {PartitionKey: "a", Data: []byte("3")},
		}},
		{"explicit hash keys", []Record{
			{PartitionKey: "a", ExplicitHashKey: "0", Data: []byte("1")},
			{PartitionKey: "a", Data: []byte("2")},
			{PartitionKey: "b", ExplicitHashKey: "340282366920938463463374607431768211455", Data: []byte("3")},
		}},
		{"empty data", []Record{{PartitionKey: "k", Data: []byte{}}}},
		{"large data and many keys", func() []Record {
			var out []Record
			for i := range 300 {
				out = append(out, Record{PartitionKey: fmt.Sprintf("key-%d", i%170), Data: bytes.Repeat([]byte{byte(i)}, i*7)})
			}
			return out
		}()},
		{"unicode partition key", []Record{{PartitionKey: strings.Repeat("é", 256), Data: []byte("x")}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := encode(tc.recs)
			got, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if diff := cmp.Diff(tc.recs, got); diff != "" {
				t.Errorf("records mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSizeIsExact(t *testing.T) {
	t.Parallel()
	var a Aggregator
	if got := len(a.Encode()); got != a.Size() || got != Overhead {
		t.Fatalf("empty aggregate: Encode is %d bytes, Size %d, Overhead %d", got, a.Size(), Overhead)
	}
	// Sizes crossing varint boundaries (127/128, 16383/16384) and indexes
	// past 127 are where an estimate would go wrong.
	for i, n := range []int{0, 1, 100, 117, 118, 127, 128, 129, 16250, 16383, 16384, 70000} {
		for j := range 140 {
			pk := fmt.Sprintf("p%d-%d", i, j)
			ehk := ""
			if j%3 == 0 {
				ehk = fmt.Sprint(j * 1000)
			}
			want := a.SizeWith(pk, ehk, n%(j+1)*10)
			a.Add(pk, ehk, make([]byte, n%(j+1)*10))
			if a.Size() != want {
				t.Fatalf("Size after Add = %d, SizeWith before = %d", a.Size(), want)
			}
		}
		if got := len(a.Encode()); got != a.Size() {
			t.Fatalf("after %d records: Encode is %d bytes, Size says %d", a.Len(), got, a.Size())
		}
	}
	a.Reset()
	if a.Size() != Overhead || a.Len() != 0 {
		t.Fatalf("after Reset: Size %d, Len %d", a.Size(), a.Len())
	}
}

// TestKnownBytes pins the encoding against bytes written out by hand from the
// format description, so encoder and decoder cannot drift together.
func TestKnownBytes(t *testing.T) {
	t.Parallel()
	pb := []byte{
		0x0a, 0x01, 'a', // partition_key_table "a"
		0x12, 0x01, '7', // explicit_hash_key_table "7"
		0x1a, 0x07, 0x08, 0x00, 0x10, 0x00, 0x1a, 0x01, 'x', // record {pk 0, ehk 0, data "x"}
		0x1a, 0x05, 0x08, 0x00, 0x1a, 0x01, 'y', // record {pk 0, data "y"}
	}
	sum := md5.Sum(pb)
	want := append(append([]byte(Magic), pb...), sum[:]...)
	got := encode([]Record{{PartitionKey: "a", ExplicitHashKey: "7", Data: []byte("x")}, {PartitionKey: "a", Data: []byte("y")}})
	if !bytes.Equal(want, got) {
		t.Errorf("Encode =\n% x\nwant\n% x", got, want)
	}
}

func withSum(pb []byte) []byte {
	sum := md5.Sum(pb)
	return append(append([]byte(Magic), pb...), sum[:]...)
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	good := encode([]Record{{PartitionKey: "k", Data: []byte("v")}})
	badSum := bytes.Clone(good)
	badSum[len(badSum)-1] ^= 1
	tests := []struct {
		name    string
		in      []byte
		wantErr error
		format  bool
	}{
		{"plain data is not an aggregate", []byte("hello world, a plain record"), ErrNotAggregated, false},
		{"empty input", nil, ErrNotAggregated, false},
		{"magic alone is too short", []byte(Magic), ErrNotAggregated, false},
		// The KCL reads a record with at most 16 bytes after the magic as
		// a plain record: magic + MD5 of an empty message is user data.
		{"magic and the checksum of an empty body is a plain record", withSum(nil), ErrNotAggregated, false},
		{"magic and 16 bytes is a plain record", append([]byte(Magic), bytes.Repeat([]byte{0xAB}, 16)...), ErrNotAggregated, false},
		{"wrong checksum", badSum, ErrChecksum, false},
		{"record without partition key index", withSum([]byte{0x0a, 0x01, 'a', 0x1a, 0x03, 0x1a, 0x01, 'x'}), nil, true},
		{"record without data", withSum([]byte{0x0a, 0x01, 'a', 0x1a, 0x02, 0x08, 0x00}), nil, true},
		{"partition key index outside the table", withSum([]byte{0x0a, 0x01, 'a', 0x1a, 0x05, 0x08, 0x01, 0x1a, 0x01, 'x'}), nil, true},
		{"explicit hash key index with no table", withSum([]byte{0x0a, 0x01, 'a', 0x1a, 0x07, 0x08, 0x00, 0x10, 0x00, 0x1a, 0x01, 'x'}), nil, true},
		{"length past the end", withSum([]byte{0x0a, 0x05, 'a'}), nil, true},
		{"truncated varint", withSum([]byte{0x0a, 0x80}), nil, true},
		{"field number zero", withSum([]byte{0x00, 0x01}), nil, true},
		{"a group that does not end", withSum([]byte{0x0b}), nil, true},
		{"a group ended by another field number", withSum([]byte{0x0a, 0x01, 'a', 0x2b, 0x34}), nil, true},
		{"an end of group outside a group", withSum([]byte{0x0a, 0x01, 'a', 0x2c}), nil, true},
		{"tag without key", withSum([]byte{0x0a, 0x01, 'a', 0x1a, 0x09, 0x08, 0x00, 0x1a, 0x01, 'x', 0x22, 0x02, 0x12, 0x00}), nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := Decode(tc.in)
			if err == nil {
				t.Fatalf("Decode = %v, nil; want an error", recs)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("Decode error = %v, want %v", err, tc.wantErr)
			}
			if _, ok := errors.AsType[*FormatError](err); ok != tc.format {
				t.Errorf("Decode error = %v (%T); *FormatError: %v, want %v", err, err, ok, tc.format)
			}
		})
	}
}

func TestIsAggregatedFollowsTheKCL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   []byte
		want bool
	}{
		{"no magic", []byte("plain data, longer than twenty bytes"), false},
		{"the magic alone", []byte(Magic), false},
		{"the magic and 16 bytes", withSum(nil), false},
		{"the magic and 17 bytes", withSum([]byte{0x20}), true},
		{"an aggregate", encode([]Record{{PartitionKey: "k", Data: []byte("v")}}), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsAggregated(tc.in); got != tc.want {
				t.Errorf("IsAggregated(% x) = %v; want %v", tc.in, got, tc.want)
			}
		})
	}
}

// An aggregate whose body is valid but holds no records has no user
// records; the KCL delivers nothing for it either.
func TestDecodeOfAnAggregateWithoutRecords(t *testing.T) {
	t.Parallel()
	got, err := Decode(withSum([]byte{0x0a, 0x01, 'a'}))
	if err != nil || len(got) != 0 {
		t.Fatalf("Decode = %v, %v; want no records and no error", got, err)
	}
}

// User data that is itself an aggregate stays user data: Decode takes apart
// one level only.
func TestDecodeTakesApartOneLevelOnly(t *testing.T) {
	t.Parallel()
	inner := encode([]Record{{PartitionKey: "in", Data: []byte("x")}})
	got, err := Decode(encode([]Record{{PartitionKey: "out", Data: inner}}))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Record{{PartitionKey: "out", Data: inner}}, got); diff != "" {
		t.Errorf("records mismatch (-want +got):\n%s", diff)
	}
}

func TestDecodeSkipsUnknownFieldsAndReadsTags(t *testing.T) {
	t.Parallel()
	pb := []byte{
		0x0a, 0x01, 'a',
		0x20, 0x05, // unknown varint field 4
		0x29, 1, 2, 3, 4, 5, 6, 7, 8, // unknown fixed64 field 5
		0x35, 1, 2, 3, 4, // unknown fixed32 field 6
		// unknown group field 7, holding a varint and a nested group 8,
		// which proto2 readers (the KCL's protobuf-java) skip too
		0x3b, 0x08, 0x01, 0x43, 0x0a, 0x00, 0x44, 0x3c,
		0x1a, 0x0d, 0x08, 0x00, 0x1a, 0x01, 'x', 0x22, 0x06, 0x0a, 0x01, 'k', 0x12, 0x01, 'v', // record with a tag
	}
	got, err := Decode(withSum(pb))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if diff := cmp.Diff([]Record{{PartitionKey: "a", Data: []byte("x")}}, got); diff != "" {
		t.Errorf("records mismatch (-want +got):\n%s", diff)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(encode([]Record{{PartitionKey: "k", Data: []byte("v")}}))
	f.Add(encode([]Record{{PartitionKey: "a", ExplicitHashKey: "1", Data: []byte("x")}, {PartitionKey: "b", Data: nil}}))
	f.Add([]byte(Magic))
	f.Add([]byte("plain"))
	f.Fuzz(func(t *testing.T, b []byte) {
		// Also try b as a protobuf body with a valid frame, so the fuzzer
		// reaches the protobuf decoder instead of stopping at the checksum.
		for _, in := range [][]byte{b, withSum(b)} {
			recs, err := Decode(in)
			if err != nil || len(recs) == 0 {
				// An aggregate of no records encodes to the magic and the
				// MD5 of nothing, which readers take for a plain record.
				continue
			}
			// What decodes must encode back to something that decodes to
			// the same records.
			again, err := Decode(encode(recs))
			if err != nil {
				t.Fatalf("re-encoded records do not decode: %v", err)
			}
			if diff := cmp.Diff(recs, again); diff != "" {
				t.Fatalf("round trip mismatch (-first +second):\n%s", diff)
			}
		}
	})
}

func FuzzRoundTrip(f *testing.F) {
	f.Add("k", "", []byte("v"), 3)
	f.Add("é", "123", []byte{}, 1)
	f.Fuzz(func(t *testing.T, pk, ehk string, data []byte, n int) {
		n = n%50 + 1
		if n < 1 {
			n = -n + 1
		}
		var want []Record
		var a Aggregator
		for i := range n {
			r := Record{PartitionKey: fmt.Sprint(pk, i%3), ExplicitHashKey: ehk, Data: data}
			if r.Data == nil {
				r.Data = []byte{}
			}
			want = append(want, r)
			size := a.SizeWith(r.PartitionKey, r.ExplicitHashKey, len(r.Data))
			a.Add(r.PartitionKey, r.ExplicitHashKey, r.Data)
			if a.Size() != size {
				t.Fatalf("Size %d != SizeWith %d", a.Size(), size)
			}
		}
		b := a.Encode()
		if len(b) != a.Size() {
			t.Fatalf("Encode is %d bytes, Size %d", len(b), a.Size())
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("mismatch (-want +got):\n%s", diff)
		}
	})
}

func benchRecords(n int) []Record {
	recs := make([]Record, n)
	data := bytes.Repeat([]byte("x"), 100)
	for i := range recs {
		recs[i] = Record{PartitionKey: fmt.Sprintf("user-%06d", i), Data: data}
	}
	return recs
}

// BenchmarkEncode measures aggregating 100-byte records into aggregates of
// up to 50 KiB (the KPL's default), per user record.
func BenchmarkEncode(b *testing.B) {
	recs := benchRecords(4096)
	var a Aggregator
	buf := make([]byte, 0, 64<<10)
	b.SetBytes(100)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		r := recs[i%len(recs)]
		i++
		if a.SizeWith(r.PartitionKey, "", len(r.Data)) > 50<<10 {
			buf = a.AppendEncode(buf[:0])
			a.Reset()
		}
		a.Add(r.PartitionKey, "", r.Data)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkDecode measures de-aggregating 100-byte records, per user record.
func BenchmarkDecode(b *testing.B) {
	agg := encode(benchRecords(400))
	var out []Record
	b.SetBytes(100)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if n%400 == 0 {
			var err error
			if out, err = AppendDecode(out[:0], agg); err != nil {
				b.Fatal(err)
			}
		}
		n++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}
