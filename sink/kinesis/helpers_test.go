package kinesissink

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
)

var _ API = (*kinesisfake.Fake)(nil)

const testStream = "out"

// newFake returns a fake with stream "out" of n shards.
func newFake(t testing.TB, n int32) *kinesisfake.Fake {
	t.Helper()
	f := kinesisfake.New()
	if _, err := f.CreateStream(context.Background(), &kinesis.CreateStreamInput{StreamName: aws.String(testStream), ShardCount: aws.Int32(n)}); err != nil {
		t.Fatal(err)
	}
	return f
}

// stored is a record as the fake stored it.
type stored struct {
	shard string
	types.Record
}

// storedRecords returns every record of the stream, shard by shard, in order.
func storedRecords(t testing.TB, f *kinesisfake.Fake) []stored {
	t.Helper()
	ids, err := f.Shards(testStream)
	if err != nil {
		t.Fatal(err)
	}
	var out []stored
	for _, id := range ids {
		recs, err := f.Records(testStream, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			out = append(out, stored{shard: id, Record: r})
		}
	}
	return out
}

// outcomes counts the results of records put with PutEntry, by data.
type outcomes struct {
	mu      sync.Mutex
	results map[string][]Result
}

func newOutcomes() *outcomes { return &outcomes{results: make(map[string][]Result)} }

func (o *outcomes) done(r Result) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.results[string(r.Entry.Data)] = append(o.results[string(r.Entry.Data)], r)
}

// check fails the test unless every one of n records ("rec-<i>") has
// exactly one outcome; it returns how many were written and how many failed.
func (o *outcomes) check(t testing.TB, n int) (written, failed int) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	for i := range n {
		rs := o.results[recData(i)]
		if len(rs) != 1 {
			t.Errorf("record %s has %d outcomes, want exactly 1", recData(i), len(rs))
			continue
		}
		if rs[0].Err == nil {
			written++
		} else {
			failed++
		}
	}
	if len(o.results) != n {
		t.Errorf("outcomes for %d distinct records, want %d", len(o.results), n)
	}
	return written, failed
}

func recData(i int) string { return fmt.Sprintf("rec-%06d", i) }

// callLog records what each PutRecords call carried.
type callLog struct {
	mu    sync.Mutex
	calls [][]string // data of each entry, per call
	sizes []int      // bytes (data + key) per call
}

func (c *callLog) hook(op string, in any) {
	if op != "PutRecords" {
		return
	}
	pr := in.(*kinesis.PutRecordsInput)
	var data []string
	size := 0
	for _, e := range pr.Records {
		data = append(data, string(e.Data))
		size += len(e.Data) + len(aws.ToString(e.PartitionKey))
	}
	c.mu.Lock()
	c.calls = append(c.calls, data)
	c.sizes = append(c.sizes, size)
	c.mu.Unlock()
}

func (c *callLog) snapshot() ([][]string, []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]string(nil), c.calls...), append([]int(nil), c.sizes...)
}
