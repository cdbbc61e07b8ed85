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

func cmdRelay(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var a awsFlags
	a.register(fs)
	from := fs.String("from", "", "stream to read (name or ARN)")
	to := fs.String("to", "", "stream to write (name or ARN)")
	table := fs.String("table", "", "DynamoDB table of checkpoints and leases (default: none: start at --start each time)")
	startAt := fs.String("start", "trim-horizon", "where shards with no checkpoint start: latest or trim-horizon")
	ordered := fs.Bool("ordered", false, "keep per-partition-key order in the output through retries")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *from == "" || *to == "" {
		return usagef("--from and --to are required")
	}
	start := kinesissource.TrimHorizon()
	switch *startAt {
	case "trim-horizon":
	case "latest":
		start = kinesissource.Latest()
	default:
		return usagef("--start %q: want latest or trim-horizon", *startAt)
	}
	kc, err := a.kinesis(ctx)
	if err != nil {
		return err
	}
	var store shardflow.CheckpointStore
	if *table != "" {
		dc, err := a.dynamodb(ctx)
		if err != nil {
			return err
		}
		s, err := dynamostore.New(dc, *table)
		if err != nil {
			return err
		}
		if err := s.Check(ctx); err != nil {
			return err
		}
		store = s
	}
	var read atomic.Int64
	src, err := kinesissource.New(kc, *from, func(o *kinesissource.Options) {
		o.Checkpoint = store
		o.InitialPosition = start
		o.OnGetRecords = func(ev kinesissource.GetRecordsEvent) { read.Add(int64(ev.UserRecords)) }
	})
	if err != nil {
		return err
	}
	sink, err := kinesissink.New(kc, *to, func(o *kinesissink.Options) {
		o.Ordered = *ordered
		o.Linger = 100 * time.Millisecond
	})
	if err != nil {
		return err
	}
	defer sink.Close(context.WithoutCancel(ctx))
	stop := startProgress(ctx, stderr, "relay", &read)
	defer stop()
	begin := time.Now()
	err = shardflow.Source(src).Map(kinesissink.FromRecord).Sink(sink).Run(ctx)
	stop()
	fmt.Fprintf(stderr, "relay %s -> %s: %d records read in %v\n", *from, *to, read.Load(), time.Since(begin).Round(time.Millisecond))
	return err
}
