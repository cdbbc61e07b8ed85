package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// relayConfig is what the relay flags say.
type relayConfig struct {
	aws       awsFlags
	from, to  string
	table     string
	start     kinesissource.StartingPosition
	unordered bool
}

func parseRelayFlags(args []string, stderr io.Writer) (relayConfig, error) {
	var c relayConfig
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.aws.register(fs)
	fs.StringVar(&c.from, "from", "", "stream to read (name or ARN)")
	fs.StringVar(&c.to, "to", "", "stream to write (name or ARN)")
	fs.StringVar(&c.table, "table", "", "DynamoDB table of checkpoints and leases (default: none: start at --start each time)")
	startAt := fs.String("start", "trim-horizon", "where shards with no checkpoint start: latest or trim-horizon")
	fs.BoolVar(&c.unordered, "unordered", false, "let retried records overtake newer ones of the same partition key, for more throughput (default: per-key order is kept)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.from == "" || c.to == "" {
		return c, usagef("--from and --to are required")
	}
	c.start = kinesissource.TrimHorizon()
	switch *startAt {
	case "trim-horizon":
	case "latest":
		c.start = kinesissource.Latest()
	default:
		return c, usagef("--start %q: want latest or trim-horizon", *startAt)
	}
	return c, nil
}

func cmdRelay(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	c, err := parseRelayFlags(args, stderr)
	if err != nil {
		return err
	}
	kc, err := c.aws.kinesis(ctx)
	if err != nil {
		return err
	}
	var store shardflow.CheckpointStore
	if c.table != "" {
		dc, err := c.aws.dynamodb(ctx)
		if err != nil {
			return err
		}
		s, err := dynamostore.New(dc, c.table)
		if err != nil {
			return err
		}
		if err := s.Check(ctx); err != nil {
			return err
		}
		store = s
	}
	var stats relayStats
	stop := startProgress(ctx, stderr, "relay", &stats.read)
	defer stop()
	begin := time.Now()
	err = runRelay(ctx, kc, store, c, &stats)
	stop()
	fmt.Fprintf(stderr, "relay %s -> %s: %d records read in %v\n", c.from, c.to, stats.read.Load(), time.Since(begin).Round(time.Millisecond))
	return err
}

// relayAPI is the part of the Kinesis API a relay calls: what its source
// and its sink need.
type relayAPI interface {
	kinesissource.API
	kinesissink.API
}

// relayStats counts a relay's records.
type relayStats struct {
	read atomic.Int64 // handed to the pipeline by the source
}

// runRelay copies c.from to c.to until ctx ends.
func runRelay(ctx context.Context, kc relayAPI, store shardflow.CheckpointStore, c relayConfig, stats *relayStats) error {
	src, err := kinesissource.New(kc, c.from, func(o *kinesissource.Options) {
		o.Checkpoint = store
		o.InitialPosition = c.start
		o.OnGetRecords = func(ev kinesissource.GetRecordsEvent) { stats.read.Add(int64(ev.UserRecords)) }
	})
	if err != nil {
		return err
	}
	sink, err := kinesissink.New(kc, c.to, func(o *kinesissink.Options) {
		o.Ordered = !c.unordered
		o.Linger = 100 * time.Millisecond
	})
	if err != nil {
		return err
	}
	defer sink.Close(context.WithoutCancel(ctx))
	return shardflow.Source(src).Map(kinesissink.FromRecord).Sink(sink).Run(ctx)
}
