package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
)

// efoFake returns a fake with streams of the given shard counts, and n
// records "r-000"... in the stream "in".
func efoFake(t *testing.T, n int, streams map[string]int32) *kinesisfake.Fake {
	t.Helper()
	f := kinesisfake.New()
	for name, shards := range streams {
		if _, err := f.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(shards)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		key := fmt.Sprintf("k%d", i%8)
		if _, err := f.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String("in"), PartitionKey: aws.String(key), Data: fmt.Appendf(nil, "r-%03d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func consumerNames(t *testing.T, f *kinesisfake.Fake, stream string) []string {
	t.Helper()
	out, err := f.ListStreamConsumers(t.Context(), &kinesis.ListStreamConsumersInput{StreamARN: aws.String(kinesisfake.StreamARN(stream))})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range out.Consumers {
		names = append(names, aws.ToString(c.ConsumerName))
	}
	return names
}

func TestTailEFOReadsByEnhancedFanOut(t *testing.T) {
	tests := []struct {
		name    string
		existed bool     // the consumer was registered before tail
		want    []string // consumers after tail
	}{
		{"a consumer tail registered is deregistered at exit", false, nil},
		{"a consumer that existed is kept", true, []string{"viewer"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := efoFake(t, 40, map[string]int32{"in": 2})
				if tc.existed {
					if _, err := f.RegisterStreamConsumer(t.Context(), &kinesis.RegisterStreamConsumerInput{
						StreamARN: aws.String(kinesisfake.StreamARN("in")), ConsumerName: aws.String("viewer")}); err != nil {
						t.Fatal(err)
					}
				}
				var a awsFlags
				c, err := parseTailFlags([]string{"--stream", "in", "--from", "trim-horizon", "--max", "40", "--efo", "viewer", "--log-level", "error"}, &a, io.Discard, io.Discard)
				if err != nil {
					t.Fatal(err)
				}
				var out bytes.Buffer
				if err := runTail(t.Context(), f, c, &out); err != nil {
					t.Fatalf("tail: %v", err)
				}
				got := strings.Fields(out.String())
				slices.Sort(got)
				want := lines(40, "r")
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("tail printed (-want +got):\n%s", diff)
				}
				if f.Calls("SubscribeToShard") == 0 || f.Calls("GetRecords") != 0 {
					t.Errorf("%d SubscribeToShard and %d GetRecords calls; want enhanced fan-out only", f.Calls("SubscribeToShard"), f.Calls("GetRecords"))
				}
				if got := consumerNames(t, f, "in"); fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Errorf("consumers after tail: %v; want %v", got, tc.want)
				}
			})
		})
	}
}

func TestRelayEFOReadsByEnhancedFanOutAndKeepsItsConsumer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := efoFake(t, 200, map[string]int32{"in": 2, "out": 1})
		c, err := parseRelayFlags([]string{"--from", "in", "--to", "out", "--efo", "copier", "--log-level", "error"}, io.Discard, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- runRelay(ctx, f, nil, c, &relayStats{}) }()
		var got []string
		for deadline := time.Now().Add(time.Hour); len(got) < 200 && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond) // virtual time
			recs, err := f.Records("out", "shardId-000000000000")
			if err != nil {
				t.Fatal(err)
			}
			got = got[:0]
			for _, r := range recs {
				got = append(got, string(r.Data))
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("relay: %v", err)
		}
		slices.Sort(got)
		if diff := cmp.Diff(lines(200, "r"), got); diff != "" {
			t.Errorf("relayed (-want +got):\n%s", diff)
		}
		if f.Calls("SubscribeToShard") == 0 || f.Calls("GetRecords") != 0 {
			t.Errorf("%d SubscribeToShard and %d GetRecords calls; want enhanced fan-out only", f.Calls("SubscribeToShard"), f.Calls("GetRecords"))
		}
		if got := consumerNames(t, f, "in"); fmt.Sprint(got) != "[copier]" {
			t.Errorf("consumers after relay: %v; want [copier], kept for the next relay", got)
		}
	})
}
