package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
	"golang.org/x/sync/errgroup"
)

// relayAPI is what a relay calls: the source's and the sink's APIs. Both a
// *kinesis.Client and a *kinesisfake.Fake satisfy it.
type relayAPI interface {
	kinesissource.API
	kinesissink.API
}

// countingClient counts the entries PutRecords wrote and closes done when
// they reach target: that is when a relay has written everything, whether
// the library or the raw loop called PutRecords.
type countingClient struct {
	relayAPI
	target  int64
	written atomic.Int64
	done    chan struct{}
	once    sync.Once
}

func newCountingClient(c relayAPI, target int) *countingClient {
	return &countingClient{relayAPI: c, target: int64(target), done: make(chan struct{})}
}

func (c *countingClient) PutRecords(ctx context.Context, in *kinesis.PutRecordsInput, optFns ...func(*kinesis.Options)) (*kinesis.PutRecordsOutput, error) {
	out, err := c.relayAPI.PutRecords(ctx, in, optFns...)
	if err == nil {
		if c.written.Add(int64(len(in.Records)-int(aws.ToInt32(out.FailedRecordCount)))) >= c.target {
			c.once.Do(func() { close(c.done) })
		}
	}
	return out, err
}

// relayResult is what a relay run measured and where it left each input
// shard (shard id → the last sequence number relayed).
type relayResult struct {
	sample  sample
	last    map[string]string
	written int64
}

// libRelay relays n records from in to out with shardflow: kinesissource →
// Map(kinesissink.FromRecord) → kinesissink, memory checkpoints. The sample
// ends when the last record is written; then the pipeline drains, and the
// final checkpoints are returned.
func libRelay(ctx context.Context, client relayAPI, in, out string, n int) (relayResult, error) {
	cc := newCountingClient(client, n)
	store := memory.New()
	src, err := kinesissource.New(cc, in, func(o *kinesissource.Options) {
		o.Store = store
		o.InitialPosition = kinesissource.TrimHorizon()
		o.IdleInterval = 200 * time.Millisecond
	})
	if err != nil {
		return relayResult{}, err
	}
	sink, err := kinesissink.New(cc, out, func(o *kinesissink.Options) { o.Linger = 10 * time.Millisecond })
	if err != nil {
		return relayResult{}, err
	}
	defer sink.Close(context.WithoutCancel(ctx))
	// Logging is not what is measured: lifecycle lines of the pipeline, the
	// source and the sink go nowhere.
	quiet := func(o *shardflow.Options) { o.Logger = slog.New(slog.DiscardHandler) }
	pl := shardflow.Source(src, quiet).Map(kinesissink.FromRecord).Sink(sink)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	var m meter
	m.begin(n)
	go func() { errc <- pl.Run(runCtx) }()
	select {
	case <-cc.done:
		m.finish()
		cancel() // a Kinesis source never ends: drain and stop
		err = <-errc
	case err = <-errc:
		if err == nil {
			err = errors.New("the pipeline stopped before writing every record")
		}
	}
	if err != nil {
		return relayResult{}, fmt.Errorf("shardflow relay %s -> %s: %w", in, out, err)
	}
	last := map[string]string{}
	for shard, cp := range store.Checkpoints(in) {
		last[shard] = cp.SequenceNumber
	}
	return relayResult{sample: m.sample(), last: last, written: cc.written.Load()}, nil
}

// rawRelay is the floor: what one writes by hand with aws-sdk-go-v2. Per
// shard, GetRecords from TRIM_HORIZON until the shard is at its tip, each
// batch sent on with 500-entry PutRecords calls (failed entries re-sent),
// remembering the last sequence number relayed.
func rawRelay(ctx context.Context, client relayAPI, in, out string, n int) (relayResult, error) {
	cc := newCountingClient(client, n)
	var mu sync.Mutex
	last := map[string]string{}
	var m meter
	m.begin(n)
	shards, err := listShards(ctx, cc, in)
	if err != nil {
		return relayResult{}, err
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, shard := range shards {
		g.Go(func() error {
			it, err := cc.GetShardIterator(gctx, &kinesis.GetShardIteratorInput{StreamName: aws.String(in),
				ShardId: aws.String(shard), ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
			if err != nil {
				return fmt.Errorf("get shard iterator of %s: %w", shard, err)
			}
			var seq string
			entries := make([]types.PutRecordsRequestEntry, 0, 500)
			for iter := it.ShardIterator; iter != nil; {
				got, err := cc.GetRecords(gctx, &kinesis.GetRecordsInput{ShardIterator: iter, Limit: aws.Int32(10000)})
				if err != nil {
					return fmt.Errorf("get records of %s: %w", shard, err)
				}
				for i, r := range got.Records {
					entries = append(entries, types.PutRecordsRequestEntry{Data: r.Data, PartitionKey: r.PartitionKey})
					if len(entries) == cap(entries) || i == len(got.Records)-1 {
						if err := putAll(gctx, cc, out, entries, nil); err != nil {
							return err
						}
						entries = entries[:0]
					}
				}
				if len(got.Records) > 0 {
					seq = aws.ToString(got.Records[len(got.Records)-1].SequenceNumber)
				} else if aws.ToInt64(got.MillisBehindLatest) == 0 {
					break // at the tip: everything is relayed
				}
				iter = got.NextShardIterator
			}
			mu.Lock()
			last[shard] = seq
			mu.Unlock()
			return nil
		})
	}
	err = g.Wait()
	m.finish()
	if err != nil {
		return relayResult{}, fmt.Errorf("raw relay %s -> %s: %w", in, out, err)
	}
	return relayResult{sample: m.sample(), last: last, written: cc.written.Load()}, nil
}

type putter interface {
	PutRecords(ctx context.Context, in *kinesis.PutRecordsInput, optFns ...func(*kinesis.Options)) (*kinesis.PutRecordsOutput, error)
}

// putAll writes entries with PutRecords, re-sending the failed ones (10
// attempts at most). written, if not nil, is called with the result of each
// entry written.
func putAll(ctx context.Context, c putter, stream string, entries []types.PutRecordsRequestEntry, written func(types.PutRecordsResultEntry)) error {
	for attempt := 1; len(entries) > 0; attempt++ {
		out, err := c.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String(stream), Records: entries})
		if err != nil {
			return fmt.Errorf("put records to %s: %w", stream, err)
		}
		if written != nil {
			for _, r := range out.Records {
				if r.ErrorCode == nil {
					written(r)
				}
			}
		}
		if aws.ToInt32(out.FailedRecordCount) == 0 {
			return nil
		}
		if attempt == 10 {
			return fmt.Errorf("put records to %s: %d entries still failing after %d attempts", stream, aws.ToInt32(out.FailedRecordCount), attempt)
		}
		var failed []types.PutRecordsRequestEntry
		for i, r := range out.Records {
			if r.ErrorCode != nil {
				failed = append(failed, entries[i])
			}
		}
		entries = failed
	}
	return nil
}

// listShards returns the ids of the stream's shards.
func listShards(ctx context.Context, c kinesissource.API, stream string) ([]string, error) {
	var ids []string
	in := &kinesis.ListShardsInput{StreamName: aws.String(stream)}
	for {
		out, err := c.ListShards(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("list shards of %s: %w", stream, err)
		}
		for _, s := range out.Shards {
			ids = append(ids, aws.ToString(s.ShardId))
		}
		if out.NextToken == nil {
			return ids, nil
		}
		in = &kinesis.ListShardsInput{NextToken: out.NextToken}
	}
}

// checkRelay compares where a relay left each input shard with the last
// sequence number written to it, and the count of records written.
func checkRelay(who string, r relayResult, want map[string]string, n int) error {
	if r.written != int64(n) {
		return fmt.Errorf("%s: wrote %d records; want %d", who, r.written, n)
	}
	for shard, seq := range want {
		if r.last[shard] != seq {
			return fmt.Errorf("%s: shard %s left at sequence number %q; want %q", who, shard, r.last[shard], seq)
		}
	}
	return nil
}
