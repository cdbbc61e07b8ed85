package kinesissource_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// On a stream of two shards, shard 0 holds hash keys [0, 2^127) and shard 1
// the rest.
const (
	shard0   = "shardId-000000000000"
	lowEHK   = "5"                                       // in shard 0
	highEHK  = "340282366920938463463374607431768211455" // 2^128-1, in shard 1
	upperKey = "k"                                       // see keyInUpperHalf
)

// keyInUpperHalf returns a partition key whose MD5 routes it to shard 1.
func keyInUpperHalf(t *testing.T) string {
	t.Helper()
	for i := range 100 {
		k := fmt.Sprint(upperKey, i)
		if sum := md5.Sum([]byte(k)); sum[0] >= 0x80 {
			return k
		}
	}
	t.Fatal("no key in the upper half of the hash key space")
	return ""
}

// putToShard0 writes data to shard 0 whatever its content, as a producer
// that aggregates records of several shards does.
func putToShard0(t *testing.T, f *kinesisfake.Fake, data []byte) string {
	t.Helper()
	out, err := f.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String("in"), Data: data,
		PartitionKey: aws.String("agg"), ExplicitHashKey: aws.String(lowEHK)})
	if err != nil {
		t.Fatal(err)
	}
	if id := aws.ToString(out.ShardId); id != shard0 {
		t.Fatalf("record went to %s; want %s", id, shard0)
	}
	return aws.ToString(out.SequenceNumber)
}

// logLines is a JSON slog handler's output, one object per line.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logLines) logger() *slog.Logger { return slog.New(slog.NewJSONHandler(l, nil)) }

// warnings returns the Warn entries whose message contains substr.
func (l *logLines) warnings(t *testing.T, substr string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for line := range strings.Lines(l.buf.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["level"] == "WARN" && strings.Contains(m["msg"].(string), substr) {
			out = append(out, m)
		}
	}
	return out
}

// misroutedStream writes to shard 0 of a 2-shard stream: a plain record,
// an aggregate of shard 0's keys only, an aggregate with one user record
// of shard 1 (by explicit hash key), a plain record and an aggregate with a
// user record of shard 1 (by partition key). It returns the sequence
// numbers of the two misrouted aggregates.
func misroutedStream(t *testing.T) (f *kinesisfake.Fake, misrouted []string) {
	t.Helper()
	f = newStream(t, "in", 2)
	high := keyInUpperHalf(t)
	putToShard0(t, f, []byte("p1"))
	putToShard0(t, f, aggregate([]testUserRecord{{key: "a", ehk: lowEHK, data: "a1"}, {key: "a", ehk: "0", data: "a2"}}))
	misrouted = append(misrouted, putToShard0(t, f, aggregate([]testUserRecord{
		{key: "b", ehk: lowEHK, data: "b1"}, {key: "b", ehk: highEHK, data: "b2"}, {key: "b", ehk: lowEHK, data: "b3"},
	})))
	putToShard0(t, f, []byte("p2"))
	misrouted = append(misrouted, putToShard0(t, f, aggregate([]testUserRecord{
		{key: high, data: "c1"}, {key: "c", ehk: lowEHK, data: "c2"},
	})))
	return f, misrouted
}

func TestMisroutedAggregatesAreDeliveredCountedAndLogged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, misrouted := misroutedStream(t)
		var logs logLines
		var count, dropped atomic.Int64
		src := newSource(t, f, "in", func(o *kinesissource.Options) {
			o.InitialPosition = kinesissource.TrimHorizon()
			o.Logger = logs.logger()
			o.OnGetRecords = func(ev kinesissource.GetRecordsEvent) {
				count.Add(int64(ev.MisroutedAggregates))
				dropped.Add(int64(ev.DroppedUserRecords))
			}
		})
		sink := &collector{}
		done := make(chan error, 1)
		ctx, stop := context.WithCancel(t.Context())
		go func() { done <- shardflow.Source(src).Sink(sink).Run(ctx) }()
		waitFor(t, func() bool { return sink.len() >= 9 })
		if diff := cmp.Diff([]string{"p1", "a1", "a2", "b1", "b2", "b3", "p2", "c1", "c2"}, sink.data()); diff != "" {
			t.Errorf("records mismatch (-want +got):\n%s", diff)
		}
		if count.Load() != 2 || dropped.Load() != 0 {
			t.Errorf("OnGetRecords counted %d misrouted aggregates, %d dropped user records; want 2, 0", count.Load(), dropped.Load())
		}
		// Both were read within a minute: one warning, for the first.
		warns := logs.warnings(t, "outside the shard's hash range")
		if len(warns) != 1 {
			t.Fatalf("%d warnings about misrouted aggregates; want 1 (rate-limited): %v", len(warns), warns)
		}
		want := map[string]any{"stream": "in", "shard_id": shard0, "sequence_number": misrouted[0],
			"user_records": 3.0, "out_of_range": 1.0, "suppressed": 0.0}
		for k, v := range want {
			if warns[0][k] != v {
				t.Errorf("warning's %s = %v; want %v (%v)", k, warns[0][k], v, warns[0])
			}
		}
		// A minute later, the next one is logged with the count of those
		// that were not.
		time.Sleep(time.Minute)
		seq := putToShard0(t, f, aggregate([]testUserRecord{{key: "d", ehk: highEHK, data: "d1"}}))
		waitFor(t, func() bool { return sink.len() >= 10 })
		warns = logs.warnings(t, "outside the shard's hash range")
		if len(warns) != 2 || warns[1]["sequence_number"] != seq || warns[1]["suppressed"] != 1.0 {
			t.Errorf("warnings %v; want a second one for %s with suppressed 1", warns, seq)
		}
		stop()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

func TestDropMisroutedAggregatesDropsThemWholeAndCheckpointsPastThem(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, misrouted := misroutedStream(t)
		store := memory.New()
		var logs logLines
		var count, dropped atomic.Int64
		src := newSource(t, f, "in", func(o *kinesissource.Options) {
			o.InitialPosition = kinesissource.TrimHorizon()
			o.Store = store
			o.DropMisroutedAggregates = true
			o.Logger = logs.logger()
			o.OnGetRecords = func(ev kinesissource.GetRecordsEvent) {
				count.Add(int64(ev.MisroutedAggregates))
				dropped.Add(int64(ev.DroppedUserRecords))
			}
		})
		sink := &collector{}
		// The last record of shard 0 is a dropped aggregate: the
		// checkpoint must still reach it.
		last := misrouted[len(misrouted)-1]
		err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool {
			cp, _ := store.Checkpoint("in", shard0)
			return cp.SequenceNumber == last
		})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"p1", "a1", "a2", "p2"}, sink.data()); diff != "" {
			t.Errorf("records mismatch (-want +got):\n%s", diff)
		}
		if cp, _ := store.Checkpoint("in", shard0); cp.Partial {
			t.Errorf("checkpoint %+v is inside the dropped aggregate; want past it", cp)
		}
		if count.Load() != 2 || dropped.Load() != 5 {
			t.Errorf("OnGetRecords counted %d misrouted aggregates, %d dropped user records; want 2, 5", count.Load(), dropped.Load())
		}
		if warns := logs.warnings(t, "dropping the whole aggregate"); len(warns) != 1 {
			t.Errorf("%d warnings about dropped aggregates; want 1 (rate-limited)", len(warns))
		}
	})
}

// waitFor waits, as virtual time passes, until cond holds. Call inside
// synctest.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Hour)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within an hour of virtual time")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
