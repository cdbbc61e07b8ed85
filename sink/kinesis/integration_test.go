package kinesissink_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/internal/awstest"
	"github.com/shardflow/shardflow/internal/kpl"
	"github.com/shardflow/shardflow/shardflowtest"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
)

// putCounter is an HTTP client for the SDK that records the entries and
// bytes of every PutRecords request on its way to the emulator, which
// itself accepts oversized requests: the test must see the sink never sends
// them.
type putCounter struct {
	base interface {
		Do(*http.Request) (*http.Response, error)
	}

	mu       sync.Mutex
	requests []putRequest
}

type putRequest struct {
	entries, bytes int
}

func (c *putCounter) Do(req *http.Request) (*http.Response, error) {
	if strings.HasSuffix(req.Header.Get("X-Amz-Target"), ".PutRecords") {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		var in struct {
			Records []struct {
				Data         []byte
				PartitionKey string
			}
		}
		if err := json.Unmarshal(body, &in); err != nil {
			return nil, fmt.Errorf("putCounter: PutRecords body is not the JSON expected (%s): %w", req.Header.Get("Content-Type"), err)
		}
		r := putRequest{entries: len(in.Records)}
		for _, e := range in.Records {
			r.bytes += len(e.Data) + len(e.PartitionKey)
		}
		c.mu.Lock()
		c.requests = append(c.requests, r)
		c.mu.Unlock()
	}
	return c.base.Do(req)
}

func (c *putCounter) snapshot() []putRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]putRequest(nil), c.requests...)
}

// emulatorClient returns a client of the Kinesis emulator whose PutRecords
// requests are counted, with no SDK retries: the sink retries itself.
func emulatorClient(t testing.TB) (*kinesis.Client, *putCounter) {
	t.Helper()
	counter := &putCounter{}
	client := awstest.KinesisClient(t, awstest.KinesisNoRetries, func(o *kinesis.Options) {
		counter.base = o.HTTPClient
		o.HTTPClient = counter
	})
	return client, counter
}

// readStream reads every record of every shard from the start.
func readStream(t testing.TB, client *kinesis.Client, stream string) []types.Record {
	t.Helper()
	ctx := t.Context()
	shards, err := client.ListShards(ctx, &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatal(err)
	}
	var out []types.Record
	for _, s := range shards.Shards {
		it, err := client.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: aws.String(stream),
			ShardId: s.ShardId, ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
		if err != nil {
			t.Fatal(err)
		}
		iter := it.ShardIterator
		for iter != nil {
			res, err := client.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: iter})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, res.Records...)
			if len(res.Records) == 0 && aws.ToInt64(res.MillisBehindLatest) == 0 {
				break
			}
			iter = res.NextShardIterator
		}
	}
	return out
}

// userRecords de-aggregates KPL records; it returns data -> partition keys.
func userRecords(t testing.TB, recs []types.Record) map[string][]string {
	t.Helper()
	out := make(map[string][]string)
	for _, r := range recs {
		users, err := kpl.Decode(r.Data)
		if errors.Is(err, kpl.ErrNotAggregated) {
			out[string(r.Data)] = append(out[string(r.Data)], aws.ToString(r.PartitionKey))
			continue
		}
		if err != nil {
			t.Fatalf("record %s: %v", aws.ToString(r.SequenceNumber), err)
		}
		for _, u := range users {
			out[string(u.Data)] = append(out[string(u.Data)], u.PartitionKey)
		}
	}
	return out
}

// onceOnly turns off the per-call timeout of PutRecords for the tests that
// check each record is written exactly once: on a loaded machine a large
// request to the emulator can outlast the 30 s default, and the retry of a
// request the emulator did serve is a duplicate, within at-least-once but
// not what these tests look for. The tests' contexts still bound a hang.
func onceOnly(o *kinesissink.Options) { o.RequestTimeout = -1 }

func checkOnce(t testing.TB, got map[string][]string, want map[string]string) {
	t.Helper()
	for data, key := range want {
		if keys := got[data]; len(keys) != 1 || keys[0] != key {
			t.Errorf("record %q read with keys %v, want exactly once with %q", data, keys, key)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d distinct records read, want %d", len(got), len(want))
	}
}

func checkLimits(t testing.TB, reqs []putRequest) {
	t.Helper()
	for i, r := range reqs {
		if r.entries > 500 || r.bytes > 5<<20 {
			t.Errorf("request %d: %d entries, %d bytes; Kinesis allows 500 and 5 MiB", i, r.entries, r.bytes)
		}
	}
}

func TestEmulatorPipelineWritesEachRecordOnce(t *testing.T) {
	t.Parallel()
	client, counter := emulatorClient(t)
	out := awstest.CreateStream(t, client, 2)
	const perShard = 600
	store := memory.New()
	src := shardflowtest.NewSource[shardflow.Record]("in", func(o *shardflowtest.SourceOptions) { o.Store = store })
	want := make(map[string]string)
	for _, sh := range []string{"shard-0", "shard-1"} {
		var data []string
		for i := 1; i <= perShard; i++ {
			d := fmt.Sprintf("%s/%d", sh, i)
			data = append(data, d)
			want[d] = fmt.Sprintf("key-%d", i) // shardflowtest.Records' keys
		}
		src.AddShard(sh, shardflowtest.Records("in", sh, data...)...)
	}
	sink, err := kinesissink.New(client, out, onceOnly)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute) // a bound on a hang
	defer cancel()
	if err := shardflow.Source(src).Map(kinesissink.FromRecord).Sink(sink).Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for sh, cp := range store.Checkpoints("in") {
		if cp.SequenceNumber != fmt.Sprint(perShard) {
			t.Errorf("%s checkpointed at %s, want %d", sh, cp.SequenceNumber, perShard)
		}
	}
	checkOnce(t, userRecords(t, readStream(t, client, out)), want)
	checkLimits(t, counter.snapshot())
}

func TestEmulatorProducerWritesEachRecordOnce(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		n    int
		fn   func(*kinesissink.Options)
	}{
		{"plain", 1500, func(*kinesissink.Options) {}},
		{"ordered and aggregated", 3000, func(o *kinesissink.Options) { o.Ordered = true; o.Aggregate = true }},
		// Small aggregates in many requests: a request goroutine encodes
		// aggregates into the buffers of its earlier ones (the client is
		// a *kinesis.Client), which must hold nothing of theirs.
		{"aggregated, buffers reused", 6000, func(o *kinesissink.Options) {
			o.Aggregate = true
			o.AggregateMaxBytes = 2048
			o.MaxBufferedRecords = 800
			o.MaxInFlight = 2
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			client, counter := emulatorClient(t)
			out := awstest.CreateStream(t, client, 3)
			p, err := kinesissink.NewProducer(client, out, onceOnly, tc.fn)
			if err != nil {
				t.Fatal(err)
			}
			want := make(map[string]string)
			var mu sync.Mutex
			var results []kinesissink.Result
			for i := range tc.n {
				data, key := fmt.Sprintf("event-%05d", i), fmt.Sprintf("device-%d", i%37)
				want[data] = key
				var err error
				if i%10 == 0 {
					err = p.PutEntry(t.Context(), kinesissink.Entry{Data: []byte(data), PartitionKey: key}, func(r kinesissink.Result) {
						mu.Lock()
						results = append(results, r)
						mu.Unlock()
					})
				} else {
					err = p.Put(t.Context(), []byte(data), key)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute) // a bound on a hang
			defer cancel()
			if err := p.Close(ctx); err != nil {
				t.Fatalf("Close: %v", err)
			}
			mu.Lock()
			for _, r := range results {
				if r.Err != nil || r.ShardID == "" || r.SequenceNumber == "" {
					t.Errorf("result %+v; want a shard and sequence number", r)
				}
			}
			mu.Unlock()
			checkOnce(t, userRecords(t, readStream(t, client, out)), want)
			checkLimits(t, counter.snapshot())
		})
	}
}

func TestEmulatorInvalidRecordsFailBeforeAnyCall(t *testing.T) {
	t.Parallel()
	client, counter := emulatorClient(t)
	out := awstest.CreateStream(t, client, 1)
	p, err := kinesissink.NewProducer(client, out)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := kinesissink.New(client, out)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []kinesissink.Entry{
		{Data: make([]byte, 1<<20), PartitionKey: "k"},
		{Data: []byte("x")},
		{PartitionKey: "k"},
		{Data: []byte{}, PartitionKey: "k"},
		{Data: []byte("x"), PartitionKey: strings.Repeat("k", 257)},
		{Data: []byte("x"), PartitionKey: "k", ExplicitHashKey: "340282366920938463463374607431768211456"},
	} {
		if _, ok := errors.AsType[*kinesissink.ValidationError](p.PutEntry(t.Context(), e, nil)); !ok {
			t.Errorf("Producer.PutEntry(%.30q, %q): no *ValidationError", e.Data, e.PartitionKey)
		}
		if _, ok := errors.AsType[*kinesissink.ValidationError](sink.Write(t.Context(), e, shardflow.Ack{})); !ok {
			t.Errorf("Sink.Write(%.30q, %q): no *ValidationError", e.Data, e.PartitionKey)
		}
	}
	if err := p.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if reqs := counter.snapshot(); len(reqs) != 0 {
		t.Errorf("%d PutRecords requests for invalid records, want 0", len(reqs))
	}
}

func TestEmulatorRequestsNeverExceedKinesisLimits(t *testing.T) {
	t.Parallel()
	client, counter := emulatorClient(t)
	out := awstest.CreateStream(t, client, 2)
	p, err := kinesissink.NewProducer(client, out, onceOnly, func(o *kinesissink.Options) { o.Linger = time.Second })
	if err != nil {
		t.Fatal(err)
	}
	want := make(map[string]string)
	for i := range 1100 {
		d := fmt.Sprintf("small-%d", i)
		want[d] = d
		if err := p.Put(t.Context(), []byte(d), d); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 14 {
		d := fmt.Sprintf("big-%02d-%s", i, strings.Repeat("x", 800<<10))
		want[d] = "big"
		if err := p.Put(t.Context(), []byte(d), "big"); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute) // a bound on a hang
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	reqs := counter.snapshot()
	checkLimits(t, reqs)
	entries := 0
	for _, r := range reqs {
		entries += r.entries
	}
	if entries != 1114 || len(reqs) < 4 {
		t.Errorf("%d requests carried %d entries; want at least 4 requests carrying 1114", len(reqs), entries)
	}
	checkOnce(t, userRecords(t, readStream(t, client, out)), want)
}

// hashOf is Kinesis' routing hash of a partition key.
func hashOf(key string) *big.Int {
	sum := md5.Sum([]byte(key))
	return new(big.Int).SetBytes(sum[:])
}

func TestEmulatorKCLReaderReadsExactlyTheRecordsReportedWrittenAcrossASplit(t *testing.T) {
	t.Parallel()
	const perPhase = 2512
	client, _ := emulatorClient(t)
	out := awstest.CreateStream(t, client, 4)
	p, err := kinesissink.NewProducer(client, out, onceOnly, func(o *kinesissink.Options) { o.Aggregate = true })
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	results := make(map[string][]kinesissink.Result)
	done := func(r kinesissink.Result) {
		mu.Lock()
		results[string(r.Entry.Data)] = append(results[string(r.Entry.Data)], r)
		mu.Unlock()
	}
	rng := rand.New(rand.NewPCG(7, 8))
	put := func(from, to int) {
		for i := from; i < to; i++ {
			e := kinesissink.Entry{Data: fmt.Appendf(nil, "rec-%06d", i), PartitionKey: strconv.FormatUint(rng.Uint64(), 16)}
			if err := p.PutEntry(t.Context(), e, done); err != nil {
				t.Fatal(err)
			}
		}
	}
	put(0, perPhase)
	if err := p.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	shards, err := client.ListShards(t.Context(), &kinesis.ListShardsInput{StreamName: aws.String(out)})
	if err != nil {
		t.Fatal(err)
	}
	first := shards.Shards[0]
	start, _ := new(big.Int).SetString(aws.ToString(first.HashKeyRange.StartingHashKey), 10)
	end, _ := new(big.Int).SetString(aws.ToString(first.HashKeyRange.EndingHashKey), 10)
	mid := new(big.Int).Rsh(new(big.Int).Add(start, end), 1)
	if _, err := client.SplitShard(t.Context(), &kinesis.SplitShardInput{StreamName: aws.String(out),
		ShardToSplit: first.ShardId, NewStartingHashKey: aws.String(mid.String())}); err != nil {
		t.Fatal(err)
	}
	if err := kinesis.NewStreamExistsWaiter(client).Wait(t.Context(), &kinesis.DescribeStreamInput{StreamName: aws.String(out)}, time.Minute,
		func(o *kinesis.StreamExistsWaiterOptions) { o.MinDelay, o.MaxDelay = 50*time.Millisecond, time.Second }); err != nil {
		t.Fatal(err)
	}
	put(perPhase, 2*perPhase)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// Read every shard as a KCL reader does: an aggregate with a member
	// outside its shard's range is dropped whole.
	shards, err = client.ListShards(t.Context(), &kinesis.ListShardsInput{StreamName: aws.String(out)})
	if err != nil {
		t.Fatal(err)
	}
	read := make(map[string]int)
	dropped := 0
	for _, s := range shards.Shards {
		lo, _ := new(big.Int).SetString(aws.ToString(s.HashKeyRange.StartingHashKey), 10)
		hi, _ := new(big.Int).SetString(aws.ToString(s.HashKeyRange.EndingHashKey), 10)
		it, err := client.GetShardIterator(t.Context(), &kinesis.GetShardIteratorInput{StreamName: aws.String(out),
			ShardId: s.ShardId, ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
		if err != nil {
			t.Fatal(err)
		}
		for iter := it.ShardIterator; iter != nil; {
			res, err := client.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: iter})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res.Records {
				users, err := kpl.Decode(r.Data)
				if errors.Is(err, kpl.ErrNotAggregated) {
					read[string(r.Data)]++
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				inRange := true
				for _, u := range users {
					if h := hashOf(u.PartitionKey); h.Cmp(lo) < 0 || h.Cmp(hi) > 0 {
						inRange = false
					}
				}
				if !inRange {
					dropped++
					continue
				}
				for _, u := range users {
					read[string(u.Data)]++
				}
			}
			if len(res.Records) == 0 && aws.ToInt64(res.MillisBehindLatest) == 0 {
				break
			}
			iter = res.NextShardIterator
		}
	}
	mu.Lock()
	defer mu.Unlock()
	missing, dups, written := 0, 0, 0
	for i := range 2 * perPhase {
		data := fmt.Sprintf("rec-%06d", i)
		rs := results[data]
		if len(rs) != 1 {
			t.Errorf("record %s has %d outcomes, want 1", data, len(rs))
			continue
		}
		if rs[0].Err != nil {
			t.Errorf("record %s failed: %v", data, rs[0].Err)
			continue
		}
		written++
		switch n := read[data]; {
		case n == 0:
			missing++
		case n > 1:
			dups++
		}
	}
	t.Logf("%d written; KCL-rule reader: %d missing, %d duplicated; %d aggregates dropped as misrouted", written, missing, dups, dropped)
	if missing != 0 || dups != 0 {
		t.Errorf("KCL-rule reader: %d records reported written are missing, %d read more than once", missing, dups)
	}
}
