package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
)

// TestRelayKeepsPerKeyOrderByDefaultUnderPartialFailures relays a stream
// of 40 keys through the in-memory fake while 30% of the output's
// PutRecords entries fail and are retried: with the relay's default flags,
// the records of every key arrive in the order they were read; with
// --unordered they do not (which shows the test can see a reordering).
func TestRelayKeepsPerKeyOrderByDefaultUnderPartialFailures(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flags   []string
		ordered bool
	}{
		{"default flags keep per-key order", nil, true},
		{"--unordered reorders keys", []string{"--unordered"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) { testRelayOrder(t, tc.flags, tc.ordered) })
	}
}

func testRelayOrder(t *testing.T, flags []string, ordered bool) {
	synctest.Test(t, func(t *testing.T) {
		const keys, perKey = 40, 50
		f := kinesisfake.New()
		for name, shards := range map[string]int32{"in": 2, "out": 2} {
			if _, err := f.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(shards)}); err != nil {
				t.Fatal(err)
			}
		}
		for n := range perKey {
			for k := range keys {
				key := fmt.Sprintf("key-%02d", k)
				if _, err := f.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String("in"), PartitionKey: aws.String(key),
					Data: fmt.Appendf(nil, "%s/%d", key, n)}); err != nil {
					t.Fatal(err)
				}
			}
		}
		rng := rand.New(rand.NewPCG(1, 2))
		failed := 0
		f.FailEntries(func(stream string, _ types.PutRecordsRequestEntry) string {
			if stream != "out" || rng.Float64() >= 0.3 {
				return ""
			}
			failed++
			return []string{"ProvisionedThroughputExceededException", "InternalFailure"}[failed%2]
		})

		c, err := parseRelayFlags(append([]string{"--from", "in", "--to", "out", "--log-level", "error"}, flags...), io.Discard, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- runRelay(ctx, f, nil, c, &relayStats{}) }()
		var got map[string][]int
		for {
			got = outputByKey(t, f)
			n := 0
			for _, seqs := range got {
				n += len(seqs)
			}
			if n >= keys*perKey {
				break
			}
			time.Sleep(100 * time.Millisecond) // virtual time: the source polls, the sink retries
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("relay: %v", err)
		}
		if failed < keys*perKey/10 {
			t.Fatalf("only %d entries failed: the test would not show reordering", failed)
		}
		inversions := 0
		for _, seqs := range got {
			for i := 1; i < len(seqs); i++ {
				if seqs[i] < seqs[i-1] {
					inversions++
				}
			}
		}
		if !ordered {
			if inversions == 0 {
				t.Errorf("no per-key inversion after %d injected entry failures: the test would not see one", failed)
			}
			return
		}
		if inversions != 0 {
			t.Errorf("%d per-key inversions in the output after %d injected entry failures; want 0", inversions, failed)
		}
	})
}

// outputByKey reads the fake's "out" stream: the per-key numbers of the
// records ("key-07/12"), in the order a reader of each shard sees them.
func outputByKey(t *testing.T, f *kinesisfake.Fake) map[string][]int {
	t.Helper()
	shards, err := f.Shards("out")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]int{}
	for _, sh := range shards {
		recs, err := f.Records("out", sh)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			key, n, ok := strings.Cut(string(r.Data), "/")
			var i int
			if _, err := fmt.Sscan(n, &i); !ok || err != nil {
				t.Fatalf("unexpected record %q", r.Data)
			}
			got[key] = append(got[key], i)
		}
	}
	return got
}

// TestRelayCopiesSeveralStreams relays two input streams, named in one
// --from, into one output stream.
func TestRelayCopiesSeveralStreams(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := kinesisfake.New()
		for name, shards := range map[string]int32{"in-a": 2, "in-b": 1, "out": 2} {
			if _, err := f.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(shards)}); err != nil {
				t.Fatal(err)
			}
		}
		const perStream = 30
		for _, in := range []string{"in-a", "in-b"} {
			for n := range perStream {
				key := fmt.Sprintf("%s-%02d", in, n%7)
				if _, err := f.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String(in), PartitionKey: aws.String(key),
					Data: fmt.Appendf(nil, "%s/%d", key, n)}); err != nil {
					t.Fatal(err)
				}
			}
		}
		c, err := parseRelayFlags([]string{"--from", "in-a, in-b", "--to", "out", "--log-level", "error"}, io.Discard, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- runRelay(ctx, f, nil, c, &relayStats{}) }()
		var got map[string][]int
		for {
			got = outputByKey(t, f)
			n := 0
			for _, seqs := range got {
				n += len(seqs)
			}
			if n >= 2*perStream {
				break
			}
			time.Sleep(100 * time.Millisecond) // virtual time: the source polls
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("relay: %v", err)
		}
		for _, in := range []string{"in-a", "in-b"} {
			n := 0
			for key, seqs := range got {
				if strings.HasPrefix(key, in+"-") {
					n += len(seqs)
				}
			}
			if n != perStream {
				t.Errorf("%d records of %s in the output; want %d", n, in, perStream)
			}
		}
	})
}
