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
// It loads its AWS settings the SDK's standard way, like the AWS CLI: the
// default credential chain and region, and the endpoints in
// AWS_ENDPOINT_URL_KINESIS and AWS_ENDPOINT_URL_DYNAMODB when set (`.
// .emulators/env` sets them, with fake credentials, for the local emulators).
//
// With -metrics-addr 127.0.0.1:9464 it serves Prometheus /metrics, /healthz
// and /readyz on that address (see serveOps; no authentication, so keep it
// on loopback or a trusted network).
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
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

type flags struct {
	in, out, table, metricsAddr  string
	demo                         bool
	records, inShards, outShards int
	verbose, unordered           bool
	shutdownTimeout              time.Duration
}

func main() {
	var f flags
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
	flag.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus /metrics, /healthz and /readyz on this address, like 127.0.0.1:9464 "+
		"(default: off). No authentication: a non-loopback address shows stream and shard names and health to that network")
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

// run is the relay. Its first half is all the wiring a program of your own
// needs; the demo hooks around it are marked.
func run(ctx context.Context, f flags) error {
	// The SDK's standard settings: credentials, region, and endpoints from
	// AWS_ENDPOINT_URL_KINESIS / AWS_ENDPOINT_URL_DYNAMODB, which
	// `. .emulators/env` sets for the local emulators.
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return fmt.Errorf("load AWS config: %w", err)
	}
	store, err := dynamostore.NewFromConfig(cfg, f.table)
	if err != nil {
		return err
	}
	src, err := kinesissource.NewFromConfig(cfg, f.in, func(o *kinesissource.Options) {
		o.Store = store
		o.InitialPosition = kinesissource.TrimHorizon()
	})
	if err != nil {
		return err
	}
	sink, err := kinesissink.NewFromConfig(cfg, f.out, func(o *kinesissink.Options) { o.Ordered = !f.unordered })
	if err != nil {
		return err
	}
	var mp metric.MeterProvider // nil: the global provider, a no-op unless installed
	var reg *prometheus.Registry
	if f.metricsAddr != "" {
		sdk, r, err := prometheusMeterProvider()
		if err != nil {
			return err
		}
		defer sdk.Shutdown(context.WithoutCancel(ctx))
		mp, reg = sdk, r
	}
	log := logger(f.verbose)
	pipeline := shardflow.Source(src, func(o *shardflow.Options) {
		o.DrainTimeout = f.shutdownTimeout // drain, flush and final checkpoints, all in one budget
		o.Logger = log                     // the source, sink and store log through it too
		o.MeterProvider = mp               // and record their metrics through it
	}).Map(kinesissink.FromRecord).Sink(sink)
	if f.metricsAddr != "" {
		stopOps, err := serveOps(f.metricsAddr, reg, pipeline, log)
		if err != nil {
			return err
		}
		defer stopOps()
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var stopped atomic.Int64 // when the graceful stop began, in Unix nanoseconds
	context.AfterFunc(runCtx, func() { stopped.Store(time.Now().UnixNano()) })
	var last map[string]string // demo: the last sequence number written to each input shard
	if f.demo {
		if last, err = prepareDemo(ctx, kinesis.NewFromConfig(cfg), store, f); err != nil {
			return err
		}
		go func() {
			waitCheckpointed(runCtx, store, f.in, last)
			stop() // every sample record is written and checkpointed: drain and stop
		}()
	}
	start := time.Now()
	err = pipeline.Run(runCtx)
	elapsed := time.Since(start)
	// After a clean drain the sink holds nothing. After a drain that ran out
	// of time, Close gives up on what is left at the end of the shutdown
	// budget, counting it in its error, instead of waiting for a Kinesis that
	// does not answer.
	deadline := time.Now()
	if ns := stopped.Load(); ns != 0 {
		deadline = time.Unix(0, ns)
	}
	closeCtx, cancelClose := context.WithDeadline(context.WithoutCancel(ctx), deadline.Add(f.shutdownTimeout))
	defer cancelClose()
	if err = errors.Join(err, sink.Close(closeCtx)); err != nil {
		return fmt.Errorf("%w (records not written were not checkpointed: the next run reads them again)", err)
	}
	fmt.Printf("relayed %s -> %s in %v\n", f.in, f.out, elapsed.Round(time.Millisecond))
	if f.demo {
		return reportDemo(ctx, kinesis.NewFromConfig(cfg), store, f, last)
	}
	return nil
}

// prometheusMeterProvider returns an OpenTelemetry SDK meter provider
// whose metrics a Prometheus exporter gathers into a registry of our own
// (not the global one), named the Prometheus way:
// shardflow.source.records becomes shardflow_source_records_total.
func prometheusMeterProvider() (*sdkmetric.MeterProvider, *prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, nil, err
	}
	return sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp)), reg, nil
}

// serveOps serves on addr, until stop is called: /metrics (reg, in the
// Prometheus text format), /healthz (200 while the process runs) and
// /readyz (200 while pipeline.Ready: it runs, no shard is stalled, and the
// source holds its leases and reads every shard it holds; else 503 with
// the reasons). It
// logs the address at Info ("metrics listening"). It has no
// authentication.
func serveOps(addr string, reg *prometheus.Registry, pipeline *shardflow.Pipeline, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("-metrics-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := pipeline.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable) // one line per reason
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", "err", err)
		}
	}()
	log.Info("metrics listening", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx) // the process exits next: a scrape cut short is no failure
	}, nil
}

// logger logs retried failures and errors to stderr, and lifecycle events
// too when verbose.
func logger(verbose bool) *slog.Logger {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
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
	p, err := kinesissink.NewProducer(kc, f.in, func(o *kinesissink.Options) { o.Ordered = true; o.Logger = logger(f.verbose) })
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
