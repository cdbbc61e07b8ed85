package kinesissink_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
)

const stream = "out"

func newFake(t testing.TB, shards int32) *kinesisfake.Fake {
	t.Helper()
	f := kinesisfake.New()
	if _, err := f.CreateStream(context.Background(), &kinesis.CreateStreamInput{StreamName: aws.String(stream), ShardCount: aws.Int32(shards)}); err != nil {
		t.Fatal(err)
	}
	return f
}

// written returns the data of every record in the fake stream, counted.
func written(t testing.TB, f *kinesisfake.Fake) map[string]int {
	t.Helper()
	ids, _ := f.Shards(stream)
	out := make(map[string]int)
	for _, id := range ids {
		recs, err := f.Records(stream, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			out[string(r.Data)]++
		}
	}
	return out
}

// TestPipelineCheckpointsOnlyWrittenRecords runs Source -> Map -> Kinesis
// sink and checks that each shard's checkpoint covers written records only.
func TestPipelineCheckpointsOnlyWrittenRecords(t *testing.T) {
	t.Parallel()
	const perShard = 300
	shards := []string{"shard-a", "shard-b", "shard-c"}
	tests := []struct {
		name      string
		failEntry func(data string) string
		wantErr   bool
		ordered   bool
	}{
		{name: "every record written", failEntry: func(string) string { return "" }},
		{name: "every 3rd entry throttled, then written", failEntry: func() func(string) string {
			var n atomic.Int64
			return func(string) string {
				if n.Add(1)%3 == 0 {
					return "ProvisionedThroughputExceededException"
				}
				return ""
			}
		}()},
		{name: "ordered mode with throttling", ordered: true, failEntry: func() func(string) string {
			var n atomic.Int64
			return func(string) string {
				if n.Add(1)%3 == 0 {
					return "InternalFailure"
				}
				return ""
			}
		}()},
		{name: "a record Kinesis refuses stops its shard's checkpoint before it", wantErr: true,
			failEntry: func(data string) string {
				if data == "shard-b/120" {
					return "InvalidArgumentException"
				}
				return ""
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 4)
				f.FailEntries(func(_ string, e types.PutRecordsRequestEntry) string { return tc.failEntry(string(e.Data)) })
				store := memory.New()
				src := shardflowtest.NewSource[shardflow.Record]("in", func(o *shardflowtest.SourceOptions) { o.Store = store })
				for _, sh := range shards {
					var data []string
					for i := 1; i <= perShard; i++ {
						data = append(data, fmt.Sprintf("%s/%d", sh, i))
					}
					src.AddShard(sh, shardflowtest.Records("in", sh, data...)...)
				}
				sink, err := kinesissink.New(f, stream, func(o *kinesissink.Options) { o.Ordered = tc.ordered })
				if err != nil {
					t.Fatal(err)
				}
				toEntry := kinesissink.ToEntry(func(_ context.Context, r shardflow.Record) ([]byte, error) { return r.Data, nil },
					kinesissink.KeyFromField(func(r shardflow.Record) string { return r.PartitionKey }))
				err = shardflow.Source(src).Map(toEntry).Sink(sink).Run(t.Context())
				if tc.wantErr {
					se, ok := errors.AsType[*shardflow.StageError](err)
					if pe, ok2 := errors.AsType[*kinesissink.PutError](err); !ok || !ok2 || se.ShardID != "shard-b" || pe.ErrorCode != "InvalidArgumentException" {
						t.Fatalf("Run = %v; want a *StageError of shard-b wrapping a *PutError", err)
					}
				} else if err != nil {
					t.Fatalf("Run: %v", err)
				}
				got := written(t, f)
				cps := store.Checkpoints("in")
				for _, sh := range shards {
					cp := cps[sh]
					n := 0
					if cp.SequenceNumber != "" {
						n, _ = strconv.Atoi(cp.SequenceNumber)
					}
					for i := 1; i <= n; i++ {
						if d := fmt.Sprintf("%s/%d", sh, i); got[d] != 1 {
							t.Errorf("%s checkpointed at %d, but record %s was written %d times", sh, n, d, got[d])
						}
					}
					switch {
					case !tc.wantErr && n != perShard:
						t.Errorf("%s checkpointed at %d, want %d", sh, n, perShard)
					case tc.wantErr && sh == "shard-b" && n >= 120:
						t.Errorf("shard-b checkpointed at %d, past the failed record 120", n)
					}
				}
				// The pipeline ended: the sink left no goroutine behind
				// (synctest.Test would fail on one that is blocked).
				synctest.Wait()
			})
		})
	}
}

func TestPipelineEndLeavesNoSinkGoroutine(t *testing.T) {
	f := newFake(t, 2)
	before := runtime.NumGoroutine()
	src := shardflowtest.NewSource[kinesissink.Entry]("in").
		AddShard("s", kinesissink.Entry{Data: []byte("a"), PartitionKey: "k"}, kinesissink.Entry{Data: []byte("b"), PartitionKey: "j"})
	sink, _ := kinesissink.New(f, stream, func(o *kinesissink.Options) { o.Aggregate = true; o.Ordered = true })
	if err := shardflow.Source(src).Sink(sink).Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after Run, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
	if got := written(t, f); len(got) != 2 {
		t.Errorf("written %v", got)
	}
}

func TestKeyHelpers(t *testing.T) {
	t.Parallel()
	type order struct{ Customer string }
	if k := kinesissink.KeyFromField(func(o order) string { return o.Customer })(order{"c-1"}); k != "c-1" {
		t.Errorf("KeyFromField = %q", k)
	}
	if k := kinesissink.FixedKey[order]("all")(order{}); k != "all" {
		t.Errorf("FixedKey = %q", k)
	}
	random := kinesissink.RandomKey[order]()
	a, b := random(order{}), random(order{})
	if a == b || len(a) != 32 || strings.Trim(a, "0123456789abcdef") != "" {
		t.Errorf("RandomKey gave %q and %q; want two different 32-digit hex keys", a, b)
	}
	e, err := kinesissink.FromRecord(t.Context(), shardflow.Record{Data: []byte("d"), PartitionKey: "p", ExplicitHashKey: "5"})
	if err != nil || string(e.Data) != "d" || e.PartitionKey != "p" || e.ExplicitHashKey != "5" {
		t.Errorf("FromRecord = %+v, %v", e, err)
	}
}
