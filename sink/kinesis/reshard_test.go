package kinesissink

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
)

func TestKCLReaderReadsExactlyTheRecordsReportedWrittenAcrossASplit(t *testing.T) {
	t.Parallel()
	const perPhase = 2512
	tests := []struct {
		name    string
		ordered bool
	}{
		{"aggregated", false},
		{"aggregated and ordered", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 4)
				p, err := NewProducer(f, testStream, func(o *Options) {
					o.Aggregate = true
					o.Ordered = tc.ordered
					o.AggregateMaxBytes = 4 << 10
				})
				if err != nil {
					t.Fatal(err)
				}
				out := newOutcomes()
				rng := rand.New(rand.NewPCG(5, 6))
				keys := make(map[string]string) // data -> partition key
				put := func(from, to int) {
					for i := from; i < to; i++ {
						// Random keys, a few repeated so ordered mode has
						// per-key order to keep.
						key := strconv.FormatUint(rng.Uint64(), 16)
						if i%4 == 0 {
							key = fmt.Sprintf("hot-%d", rng.IntN(20))
						}
						keys[recData(i)] = key
						if err := p.PutEntry(t.Context(), Entry{Data: []byte(recData(i)), PartitionKey: key}, out.done); err != nil {
							t.Fatal(err)
						}
					}
				}
				put(0, perPhase)
				if err := p.Flush(t.Context()); err != nil {
					t.Fatal(err)
				}
				if _, err := f.SplitShard(t.Context(), &kinesis.SplitShardInput{StreamName: aws.String(testStream),
					ShardToSplit: aws.String("shardId-000000000000"), NewStartingHashKey: aws.String("42535295865117307932921825928971026432")}); err != nil { // 2^125: the middle of shard 0
					t.Fatal(err)
				}
				put(perPhase, 2*perPhase)
				if err := p.Close(t.Context()); err != nil {
					t.Fatal(err)
				}
				written, failed := out.check(t, 2*perPhase)
				if failed != 0 {
					t.Errorf("%d records reported failed, want 0", failed)
				}
				m, err := loadShardMap(t.Context(), f, testStream)
				if err != nil {
					t.Fatal(err)
				}
				kcl, _ := userRecords(t, f, m)
				read := make(map[string]int)
				for _, r := range kcl {
					read[r.data]++
				}
				missing, dups := 0, 0
				out.mu.Lock()
				for data, rs := range out.results {
					if len(rs) == 1 && rs[0].Err == nil && read[data] == 0 {
						missing++
					}
					if read[data] > 1 {
						dups++
					}
				}
				out.mu.Unlock()
				if missing != 0 || dups != 0 {
					t.Errorf("KCL-rule reader: %d records reported written are missing, %d read more than once (of %d written)", missing, dups, written)
				}
				if len(read) != written {
					t.Errorf("KCL-rule reader read %d distinct records, the producer reported %d written", len(read), written)
				}
				if tc.ordered {
					// Data is rec-<i>; rewrite it as <key>/<i> for inversions.
					var seq []userRec
					for _, r := range kcl {
						n := r.data[len("rec-"):]
						seq = append(seq, userRec{data: keys[r.data] + "/" + n})
					}
					if bad := inversions(t, seq); bad != 0 {
						t.Errorf("%d same-key inversions", bad)
					}
				}
				all, _ := userRecords(t, f, nil)
				t.Logf("a reader that does not filter by hash range reads %d user records for %d written", len(all), written)
			})
		})
	}
}

// staleShards answers ListShards with the stream's first shard list for
// ever, as a lagging control plane might just after a reshard.
type staleShards struct {
	API
	first *kinesis.ListShardsOutput
}

func (s *staleShards) ListShards(ctx context.Context, in *kinesis.ListShardsInput, optFns ...func(*kinesis.Options)) (*kinesis.ListShardsOutput, error) {
	if s.first == nil {
		out, err := s.API.ListShards(ctx, in, optFns...)
		if err != nil {
			return nil, err
		}
		s.first = out
	}
	return s.first, nil
}

// Re-sending a misrouted aggregate is a retry: when the shard map never
// catches up with the stream, the records fail at the end of their retry
// budget instead of being re-sent for ever.
func TestMisroutedAggregatesAreResentWithinTheRetryBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		client := &staleShards{API: f}
		p, err := NewProducer(client, testStream, func(o *Options) {
			o.Aggregate = true
			o.Retry.Timeout = 10 * time.Second
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Put(t.Context(), []byte("warm"), "k"); err != nil { // loads the shard map
			t.Fatal(err)
		}
		if err := p.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		if _, err := f.SplitShard(t.Context(), &kinesis.SplitShardInput{StreamName: aws.String(testStream),
			ShardToSplit: aws.String("shardId-000000000000"), NewStartingHashKey: aws.String("170141183460469231731687303715884105728")}); err != nil { // 2^127
			t.Fatal(err)
		}
		out := newOutcomes()
		for i := range 200 {
			if err := p.PutEntry(t.Context(), Entry{Data: []byte(recData(i)), PartitionKey: strconv.Itoa(i)}, out.done); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
		defer cancel()
		_ = p.Close(ctx)
		if ctx.Err() != nil {
			t.Fatal("Close still waiting after an hour: misrouted aggregates re-sent without end")
		}
		out.mu.Lock()
		defer out.mu.Unlock()
		exhausted := 0
		for _, rs := range out.results {
			for _, r := range rs {
				if _, ok := errors.AsType[*ExhaustedError](r.Err); ok {
					exhausted++
				}
			}
		}
		if exhausted == 0 {
			t.Errorf("no record failed with an *ExhaustedError; want the misrouted ones to spend their budget")
		}
	})
}
