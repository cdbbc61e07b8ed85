package kinesissource_test

import (
	"context"
	"crypto/md5"
	"encoding/binary"
	"errors"
	"testing"
	"testing/synctest"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// The KPL aggregated record format, written here from its description
// (magic F3 89 9A C2, a protobuf AggregatedRecord, the MD5 of the protobuf
// bytes), independently of the library's own code:
//
//	AggregatedRecord { repeated string partition_key_table = 1;
//	                   repeated string explicit_hash_key_table = 2;
//	                   repeated Record records = 3; }
//	Record { required uint64 partition_key_index = 1;
//	         optional uint64 explicit_hash_key_index = 2;
//	         required bytes data = 3; repeated Tag tags = 4; }

type testUserRecord struct {
	key, ehk string
	data     string
}

func pbVarint(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }

func pbBytes(b []byte, field int, v []byte) []byte {
	b = pbVarint(b, uint64(field<<3|2))
	b = pbVarint(b, uint64(len(v)))
	return append(b, v...)
}

func pbUint(b []byte, field int, v uint64) []byte {
	b = pbVarint(b, uint64(field<<3))
	return pbVarint(b, v)
}

// aggregate encodes user records as one KPL aggregated record.
func aggregate(recs []testUserRecord) []byte {
	var keys, ehks []string
	keyIdx, ehkIdx := map[string]int{}, map[string]int{}
	var msg []byte
	var body [][]byte
	for _, r := range recs {
		if _, ok := keyIdx[r.key]; !ok {
			keyIdx[r.key] = len(keys)
			keys = append(keys, r.key)
		}
		var rec []byte
		rec = pbUint(rec, 1, uint64(keyIdx[r.key]))
		if r.ehk != "" {
			if _, ok := ehkIdx[r.ehk]; !ok {
				ehkIdx[r.ehk] = len(ehks)
				ehks = append(ehks, r.ehk)
			}
			rec = pbUint(rec, 2, uint64(ehkIdx[r.ehk]))
		}
		rec = pbBytes(rec, 3, []byte(r.data))
		rec = pbBytes(rec, 4, pbBytes(nil, 1, []byte("tag"))) // a tag, which readers ignore
		body = append(body, rec)
	}
	for _, k := range keys {
		msg = pbBytes(msg, 1, []byte(k))
	}
	for _, e := range ehks {
		msg = pbBytes(msg, 2, []byte(e))
	}
	for _, r := range body {
		msg = pbBytes(msg, 3, r)
	}
	sum := md5.Sum(msg)
	out := append([]byte{0xF3, 0x89, 0x9A, 0xC2}, msg...)
	return append(out, sum[:]...)
}

func putRaw(t *testing.T, f *kinesisfake.Fake, key string, data []byte) {
	t.Helper()
	if _, err := f.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String("in"), Data: data, PartitionKey: aws.String(key)}); err != nil {
		t.Fatal(err)
	}
}

type gotRecord struct {
	Data, Key, EHK string
	Sub            uint64
}

func records(c *collector) []gotRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []gotRecord
	for _, r := range c.recs {
		out = append(out, gotRecord{string(r.Data), r.PartitionKey, r.ExplicitHashKey, r.SubSequenceNumber})
	}
	return out
}

func testKPLAggregatesAreDeaggregated(t *testing.T, m readMode) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 1)
		putRaw(t, f, "agg", aggregate([]testUserRecord{
			{key: "a", data: "one"}, {key: "b", ehk: "12345", data: "two"}, {key: "a", data: "three"},
		}))
		putRaw(t, f, "plain", []byte("four"))
		bad := aggregate([]testUserRecord{{key: "x", data: "corrupt"}})
		bad[len(bad)-1] ^= 0xFF // wrong MD5: delivered as it is, never dropped
		putRaw(t, f, "bad", bad)
		putRaw(t, f, "short", []byte{0xF3, 0x89, 0x9A, 0xC2, 1})

		sink := &collector{}
		src := m.newSource(t, f, "in", func(o *kinesissource.Options) { o.InitialPosition = kinesissource.TrimHorizon() })
		if err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool { return sink.len() >= 6 }); err != nil {
			t.Fatal(err)
		}
		want := []gotRecord{
			{"one", "a", "", 0}, {"two", "b", "12345", 1}, {"three", "a", "", 2},
			{"four", "plain", "", 0}, {string(bad), "bad", "", 0}, {"\xf3\x89\x9a\xc2\x01", "short", "", 0},
		}
		if diff := cmp.Diff(want, records(sink)); diff != "" {
			t.Errorf("records mismatch (-want +got):\n%s", diff)
		}
	})
}

func testResumingInsideAnAggregateSkipsTheUserRecordsDone(t *testing.T, m readMode) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 1)
		putRaw(t, f, "k", aggregate([]testUserRecord{{key: "k", data: "1"}, {key: "k", data: "2"}, {key: "k", data: "3"}, {key: "k", data: "4"}}))
		putRaw(t, f, "k", []byte("5"))
		store := memory.New()
		opts := func(o *kinesissource.Options) {
			o.Store = store
			o.InitialPosition = kinesissource.TrimHorizon()
		}
		// The first run fails on user record 3: user records 1 and 2 are
		// checkpointed, inside the aggregate.
		first := &collector{}
		err := shardflow.Source(m.newSource(t, f, "in", opts), func(o *shardflow.Options) { o.Retry = shardflow.NoRetry }).
			Tap(func(_ context.Context, r shardflow.Record) error {
				if string(r.Data) == "3" {
					return errors.New("outage")
				}
				return nil
			}).Sink(first).Run(t.Context())
		if err == nil {
			t.Fatal("first run succeeded; want the injected failure")
		}
		cp, _ := store.Checkpoint("in", "shardId-000000000000")
		if !cp.Partial || cp.SubSequenceNumber != 1 {
			t.Fatalf("checkpoint %+v; want partial at user record 1 (the second)", cp)
		}
		second := &collector{}
		if err := runUntil(t, shardflow.Source(m.newSource(t, f, "in", opts)).Sink(second), func() bool { return second.len() >= 3 }); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"1", "2"}, first.data()); diff != "" {
			t.Errorf("first run (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"3", "4", "5"}, second.data()); diff != "" {
			t.Errorf("second run resumed wrong (-want +got):\n%s", diff)
		}
	})
}

// The KCL's rules: a record is one plain record when at most 16 bytes
// follow the magic (magic + the MD5 of an empty message is 20 bytes of user
// data), and the data of a user record is never de-aggregated again.
func TestRecordsTheKCLReadsAsPlainAreDeliveredAsTheyAre(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 1)
		emptySum := md5.Sum(nil)
		magicAndSum := append([]byte{0xF3, 0x89, 0x9A, 0xC2}, emptySum[:]...)
		putRaw(t, f, "sum", magicAndSum)
		magicAnd16 := append([]byte{0xF3, 0x89, 0x9A, 0xC2}, "sixteen bytes..."...)
		putRaw(t, f, "sixteen", magicAnd16)
		inner := aggregate([]testUserRecord{{key: "inner", data: "x"}})
		putRaw(t, f, "outer", aggregate([]testUserRecord{{key: "outer", data: string(inner)}}))

		sink := &collector{}
		src := newSource(t, f, "in", func(o *kinesissource.Options) { o.InitialPosition = kinesissource.TrimHorizon() })
		if err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool { return sink.len() >= 3 }); err != nil {
			t.Fatal(err)
		}
		want := []gotRecord{
			{string(magicAndSum), "sum", "", 0},
			{string(magicAnd16), "sixteen", "", 0},
			{string(inner), "outer", "", 0},
		}
		if diff := cmp.Diff(want, records(sink)); diff != "" {
			t.Errorf("records mismatch (-want +got):\n%s", diff)
		}
	})
}
