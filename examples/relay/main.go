// Command relay copies one Kinesis stream to another through a shardflow
// pipeline, with checkpoints and shard leases in DynamoDB, so several
// instances can share the work and a restarted one resumes where it
// stopped. The records of each partition key are written in the order they
// were read, even when PutRecords fails some entries and they are retried
// (-unordered gives that up for throughput).
//
// The first SIGINT or SIGTERM stops it gracefully: in-flight records finish,
// checkpoints are saved, leases released, all within -shutdown-timeout.
// Records read but not written by then are counted, not checkpointed (the
// next run reads them again), and the exit status is 1. A second signal
// exits at once with status 128+signal.
//
//	relay -in orders -out orders-copy -table relay-state
//
// With -kinesis-endpoint and -dynamodb-endpoint it talks to local emulators
// with fake credentials; without them it uses the default AWS credential
// chain and region, like the AWS CLI.
//
// With -demo it first creates both streams and the table, writes -records
// sample records to the input stream, relays until every one of them is
// checkpointed, then reads the output stream back and prints what happened.
// `make demo` runs it that way against the emulators.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

type flags struct {
	kinesisEndpoint, dynamoEndpoint, region string
	in, out, table                          string
	demo                                    bool
	records, inShards, outShards            int
	verbose, unordered                      bool
	shutdownTimeout                         time.Duration
}

func main() {
	var f flags
	flag.StringVar(&f.kinesisEndpoint, "kinesis-endpoint", "", "Kinesis endpoint URL (an emulator); default: AWS")
	flag.StringVar(&f.dynamoEndpoint, "dynamodb-endpoint", "", "DynamoDB endpoint URL (an emulator); default: AWS")
	flag.StringVar(&f.region, "region", "", "AWS region; default: from the AWS config, or us-east-1 with endpoints")
	flag.StringVar(&f.in, "in", "relay-in", "stream to read")
	flag.StringVar(&f.out, "out", "relay-out", "stream to write")
	flag.StringVar(&f.table, "table", "relay-state", "DynamoDB table of checkpoints and leases")
	flag.BoolVar(&f.demo, "demo", false, "create the streams and table, write sample records, relay them, report and exit")
	flag.IntVar(&f.records, "records", 2000, "with -demo: how many sample records to write")
	flag.IntVar(&f.inShards, "in-shards", 4, "with -demo: shards of the input stream")
	flag.IntVar(&f.outShards, "out-shards", 2, "with -demo: shards of the output stream")
	flag.BoolVar(&f.unordered, "unordered", false, "let retried records fall behind newer ones of their partition key, for throughput")
	flag.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 20*time.Second,
		"after SIGINT or SIGTERM, how long the graceful stop may take (below Kubernetes' 30s grace period)")
	flag.BoolVar(&f.verbose, "v", false, "log lifecycle events to stderr (default: only retried failures and errors)")
	flag.Parse()
	if f.shutdownTimeout <= 0 {
		log.Fatalf("relay: -shutdown-timeout %v: want a positive duration", f.shutdownTimeout)
	}

	ctx := stopOnSignals()
	if err := run(ctx, f); err != nil {
		log.Fatalf("relay: %v", err)
	}
}

// stopOnSignals returns a context cancelled by the first SIGINT or SIGTERM,
// which starts the graceful stop; a second signal exits at once, for the
// operator who does not want to wait.
func stopOnSignals() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "relay: %v: stopping gracefully; send it again to exit at once\n", s)
		cancel()
		s = <-sigs
		fmt.Fprintf(os.Stderr, "relay: %v again: exiting at once\n", s)
		os.Exit(128 + int(s.(syscall.Signal)))
	}()
	return ctx
}

func clients(ctx context.Context, f flags) (*kinesis.Client, *dynamodb.Client, error) {
	var opts []func(*config.LoadOptions) error
	if f.kinesisEndpoint != "" || f.dynamoEndpoint != "" {
		// Emulators: fake static credentials, so nothing needs real ones.
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("fake", "fake", "")))
		if f.region == "" {
			f.region = "us-east-1"
		}
	}
	if f.region != "" {
		opts = append(opts, config.WithRegion(f.region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("load AWS config: %w", err)
	}
	kc := kinesis.NewFromConfig(cfg, func(o *kinesis.Options) {
		o.Retryer = aws.NopRetryer{} // the source and sink retry per shard and per entry
		if f.kinesisEndpoint != "" {
			o.BaseEndpoint = aws.String(f.kinesisEndpoint)
		}
	})
	dc := dynamodb.NewFromConfig(cfg, func(o *dynamodb.Options) {
		if f.dynamoEndpoint != "" {
			o.BaseEndpoint = aws.String(f.dynamoEndpoint)
		}
	})
	return kc, dc, nil
}

func run(ctx context.Context, f flags) error {
	kc, dc, err := clients(ctx, f)
	if err != nil {
		return err
	}
	level := slog.LevelWarn // retried failures
	if f.verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	store, err := dynamostore.New(dc, f.table, func(o *dynamostore.Options) { o.Logger = logger })
	if err != nil {
		return err
	}
	var last map[string]string // demo: the last sequence number written to each input shard
	if f.demo {
		if last, err = prepareDemo(ctx, kc, store, f); err != nil {
			return err
		}
	}

	var read, bytes, written atomic.Int64
	src, err := kinesissource.New(kc, f.in, func(o *kinesissource.Options) {
		o.Store = store
		o.InitialPosition = kinesissource.TrimHorizon()
		o.IdleInterval = 200 * time.Millisecond
		o.Logger = logger
		o.OnGetRecords = func(ev kinesissource.GetRecordsEvent) {
			read.Add(int64(ev.UserRecords))
			bytes.Add(int64(ev.Bytes))
		}
	})
	if err != nil {
		return err
	}
	sink, err := kinesissink.New(countingPuts{kc, &written}, f.out, func(o *kinesissink.Options) {
		o.Ordered = !f.unordered // per-partition-key order holds through retries
		o.Linger = 100 * time.Millisecond
		o.Logger = logger
	})
	if err != nil {
		return err
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if f.demo {
		go func() {
			waitCheckpointed(runCtx, store, f.in, last)
			cancel() // every sample record is written and checkpointed: drain and stop
		}()
	}
	start := time.Now()
	var stopping atomic.Int64 // when the graceful stop began, in Unix nanoseconds
	stopWatch := context.AfterFunc(runCtx, func() { stopping.Store(time.Now().UnixNano()) })
	err = shardflow.Source(src, func(o *shardflow.Options) {
		o.CheckpointInterval = time.Second
		o.DrainTimeout = f.shutdownTimeout
		o.Logger = logger
	}).Map(kinesissink.FromRecord, shardflow.WithName("relay")).Sink(sink).Run(runCtx)
	stopWatch()
	elapsed := time.Since(start)
	// After a clean drain the sink holds nothing. After a drain that timed
	// out, Close gives up on what is left by the shutdown deadline, instead
	// of waiting for a Kinesis that does not answer.
	deadline := time.Now().Add(f.shutdownTimeout)
	if ns := stopping.Load(); ns != 0 {
		deadline = time.Unix(0, ns).Add(f.shutdownTimeout)
	}
	closeCtx, cancelClose := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	defer cancelClose()
	err = errors.Join(err, sink.Close(closeCtx))
	if unsent := read.Load() - written.Load(); unsent > 0 {
		err = errors.Join(fmt.Errorf("%d record(s) read but not written; they were not checkpointed, so the next run reads them again", unsent), err)
	}
	if err != nil {
		return err
	}
	fmt.Printf("relayed %s -> %s: %d records (%d bytes) read in %v, %.0f records/s\n",
		f.in, f.out, read.Load(), bytes.Load(), elapsed.Round(time.Millisecond), float64(read.Load())/elapsed.Seconds())
	if f.demo {
		return reportDemo(ctx, kc, store, f, last)
	}
	return nil
}

// countingPuts counts the entries PutRecords reports written.
type countingPuts struct {
	kinesissink.API
	written *atomic.Int64
}

func (c countingPuts) PutRecords(ctx context.Context, in *kinesis.PutRecordsInput, optFns ...func(*kinesis.Options)) (*kinesis.PutRecordsOutput, error) {
	out, err := c.API.PutRecords(ctx, in, optFns...)
	if err == nil {
		c.written.Add(int64(len(in.Records) - int(aws.ToInt32(out.FailedRecordCount))))
	}
	return out, err
}

// prepareDemo creates the streams and the table and writes the sample
// records; it returns the last sequence number written to each input shard.
func prepareDemo(ctx context.Context, kc *kinesis.Client, store *dynamostore.Store, f flags) (map[string]string, error) {
	for _, s := range []struct {
		name   string
		shards int
	}{{f.in, f.inShards}, {f.out, f.outShards}} {
		if _, err := kc.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String(s.name), ShardCount: aws.Int32(int32(s.shards))}); err != nil {
			return nil, fmt.Errorf("create stream %s: %w", s.name, err)
		}
		if err := kinesis.NewStreamExistsWaiter(kc).Wait(ctx, &kinesis.DescribeStreamInput{StreamName: aws.String(s.name)}, time.Minute,
			func(o *kinesis.StreamExistsWaiterOptions) {
				o.MinDelay, o.MaxDelay = 50*time.Millisecond, 500*time.Millisecond
			}); err != nil {
			return nil, fmt.Errorf("wait for stream %s: %w", s.name, err)
		}
	}
	if err := store.CreateTable(ctx); err != nil {
		return nil, fmt.Errorf("create table %s: %w", f.table, err)
	}
	fmt.Printf("created streams %s (%d shards), %s (%d shards) and table %s\n", f.in, f.inShards, f.out, f.outShards, f.table)

	// Sample data: orders of 100 customers, each with a per-customer
	// sequence, so order per key can be checked in the output.
	p, err := kinesissink.NewProducer(kc, f.in, func(o *kinesissink.Options) { o.Ordered = true })
	if err != nil {
		return nil, err
	}
	last := map[string]string{}
	results := make(chan kinesissink.Result, f.records)
	start := time.Now()
	for i := range f.records {
		customer := fmt.Sprintf("customer-%03d", i%100)
		data := fmt.Sprintf(`{"order":%d,"customer":%q,"seq_for_customer":%d}`, i, customer, i/100)
		if err := p.PutEntry(ctx, kinesissink.Entry{Data: []byte(data), PartitionKey: customer},
			func(r kinesissink.Result) { results <- r }); err != nil {
			return nil, err
		}
	}
	if err := p.Close(ctx); err != nil {
		return nil, fmt.Errorf("produce sample records: %w", err)
	}
	for range f.records {
		r := <-results
		if r.Err != nil {
			return nil, fmt.Errorf("produce sample records: %w", r.Err)
		}
		if prev, ok := last[r.ShardID]; !ok || seqLess(prev, r.SequenceNumber) {
			last[r.ShardID] = r.SequenceNumber
		}
	}
	fmt.Printf("produced %d records to %s in %v\n", f.records, f.in, time.Since(start).Round(time.Millisecond))
	return last, nil
}

// seqLess compares sequence numbers as the big decimals they are.
func seqLess(a, b string) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

// waitCheckpointed returns once every input shard's checkpoint reached the
// last record written to it, or ctx ends.
func waitCheckpointed(ctx context.Context, store *dynamostore.Store, stream string, last map[string]string) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		done := true
		for shard, seq := range last {
			cp, ok, err := store.Load(ctx, stream, shard)
			if err != nil || !ok || seqLess(cp.SequenceNumber, seq) {
				done = false
				break
			}
		}
		if done {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// reportDemo reads the output stream back and prints what arrived, and the
// input shards' checkpoints.
func reportDemo(ctx context.Context, kc *kinesis.Client, store *dynamostore.Store, f flags, last map[string]string) error {
	shards, err := kc.ListShards(ctx, &kinesis.ListShardsInput{StreamName: aws.String(f.out)})
	if err != nil {
		return err
	}
	seen := map[string]int{}
	lastSeq := map[string]int{} // per customer
	total, outOfOrder := 0, 0
	for _, sh := range shards.Shards {
		it, err := kc.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: aws.String(f.out), ShardId: sh.ShardId,
			ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
		if err != nil {
			return err
		}
		for iter := it.ShardIterator; iter != nil; {
			out, err := kc.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: iter})
			if err != nil {
				return err
			}
			for _, r := range out.Records {
				total++
				seen[string(r.Data)]++
				var order, seq int
				var customer string
				fmt.Sscanf(string(r.Data), `{"order":%d,"customer":%q,"seq_for_customer":%d}`, &order, &customer, &seq)
				if prev, ok := lastSeq[customer]; ok && seq <= prev {
					outOfOrder++
				}
				lastSeq[customer] = seq
			}
			if len(out.Records) == 0 && aws.ToInt64(out.MillisBehindLatest) == 0 {
				break
			}
			iter = out.NextShardIterator
		}
	}
	dups := total - len(seen)
	fmt.Printf("output stream %s: %d records, %d distinct, %d duplicates, %d out of per-customer order\n",
		f.out, total, len(seen), dups, outOfOrder)
	fmt.Println("checkpoints of", f.in+":")
	for _, shard := range slices.Sorted(func(yield func(string) bool) {
		for s := range last {
			if !yield(s) {
				return
			}
		}
	}) {
		cp, _, err := store.Load(ctx, f.in, shard)
		if err != nil {
			return err
		}
		fmt.Printf("  %s at %s (last record written %s)\n", shard, cp.SequenceNumber, last[shard])
	}
	if len(seen) != f.records || outOfOrder != 0 {
		return fmt.Errorf("demo check failed: %d of %d records arrived, %d out of order", len(seen), f.records, outOfOrder)
	}
	fmt.Println("every record arrived, in order per customer")
	return nil
}
