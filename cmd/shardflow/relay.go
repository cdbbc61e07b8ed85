package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
	"go.opentelemetry.io/otel/metric"
)

const relayDoc = `Copies every record of --from to --to, with its partition key and explicit hash key,
until interrupted. --from takes several streams separated by commas (--from a,b,c): one
relay reads them all, and with --table relays share their shards through one table. The records of each partition key are written in the order they were
read, even when PutRecords fails some entries and they are retried; --unordered gives
that up for throughput. With --table, shard checkpoints and leases are kept in that
DynamoDB table (create it with "shardflow create-table"): a restarted relay resumes after
the last checkpoint, and several relays share the shards; give each relay a stable --owner
(the pod or host name) and a restarted one takes its shards back at once instead of after
the lease duration. Delivery is at-least-once.

With --efo NAME it reads --from by enhanced fan-out through the stream consumer NAME,
registered if missing and kept at exit (every relay of one copy uses the same NAME):
records arrive about 70ms after they were written, at 2 MiB/s per shard of its own. AWS
charges for it per consumer-shard hour and per GB read; a stream has at most 20
consumers. (kinesis-local cannot serve it: it omits an event the AWS SDK needs.)

SIGINT or SIGTERM stops it gracefully: records in flight are written and checkpointed and
leases released, within --shutdown-timeout. Records read but not written by then are
counted and the exit status is 1 (with --table they are read again by the next run). The
exit status is 1 too when AWS calls were failing at the stop (failed calls are retried and
logged at WARN, as are calls with no answer for 5s), or when, without --table, no read
of --from had succeeded. A second signal exits at once.

With --metrics-addr (say 127.0.0.1:9464) it serves, until it exits:
  /metrics  the shardflow.* metrics of its source, sink, checkpoint store and pipeline, in
            the Prometheus text format (shardflow_source_records_total, ...)
  /healthz  200 "ok" while the process runs
  /readyz   200 "ok" while the pipeline runs, no shard is stalled and the source reads
            every shard it holds; else 503 with one line per reason
There is no authentication: keep it on loopback, or on a network you trust, since it
shows stream and shard names and health.`

// relayConfig is what the relay flags say.
type relayConfig struct {
	aws             awsFlags
	from, to        string
	streams         []string // --from, split at its commas
	table           string
	owner           string // --owner; "": the store's default
	start           kinesissource.StartingPosition
	efo             string // consumer name; "": poll
	unordered       bool
	shutdownTimeout time.Duration
	metricsAddr     string
	logger          *slog.Logger
	// meterProvider is the pipeline's (its source, sink and store inherit
	// it): the --metrics-addr exporter's, or a test's. Nil: the global one.
	meterProvider metric.MeterProvider
}

func parseRelayFlags(args []string, stdout, stderr io.Writer) (*relayConfig, error) {
	c := &relayConfig{}
	fs := newFlagSet("relay", "relay --from S[,S...] --to S [flags]", relayDoc)
	c.aws.register(fs.FlagSet, true, true)
	fs.StringVar(&c.from, "from", "", "stream to read (name or ARN); several separated by commas")
	fs.StringVar(&c.to, "to", "", "stream to write (name or ARN)")
	fs.StringVar(&c.table, "table", "", "DynamoDB table of checkpoints and leases (default: none: start at --start each time)")
	fs.StringVar(&c.owner, "owner", "", "this relay's identity in --table (default: host-pid-random, new each run); "+
		"a stable name, such as the pod name, lets a restarted relay take its shards back at once")
	startAt := fs.String("start", "trim-horizon", "where shards with no checkpoint start: latest or trim-horizon")
	fs.StringVar(&c.efo, "efo", "", efoUsage+"; kept at exit")
	fs.BoolVar(&c.unordered, "unordered", false,
		"let retried records fall behind newer ones of their partition key, for throughput "+
			"(1.9x the records/s on kinesis-local with 100 keys); default: per-key order is kept")
	fs.StringVar(&c.metricsAddr, "metrics-addr", "", metricsAddrUsage)
	timeout := registerShutdownTimeout(fs)
	logger := registerLogLevel(fs, stderr)
	positional, err := fs.parse(args, stdout)
	if err != nil {
		return nil, err
	}
	if err := noArgs(positional); err != nil {
		return nil, err
	}
	if c.from == "" || c.to == "" {
		return nil, usagef("--from and --to are required")
	}
	seen := make(map[string]bool)
	for name := range strings.SplitSeq(c.from, ",") {
		name = strings.TrimSpace(name)
		switch {
		case name == "":
			return nil, usagef("--from %q: an empty stream name", c.from)
		case name == c.to:
			return nil, usagef("--from and --to are the same stream %q: the relay would copy its own output forever", name)
		case seen[name]:
			return nil, usagef("--from names stream %q twice", name)
		}
		seen[name] = true
		c.streams = append(c.streams, name)
	}
	if c.owner != "" && c.table == "" {
		return nil, usagef("--owner %q needs --table: the identity is the relay's in the lease table", c.owner)
	}
	if err := checkShutdownTimeout(*timeout); err != nil {
		return nil, err
	}
	c.shutdownTimeout = *timeout
	c.start = kinesissource.TrimHorizon()
	switch *startAt {
	case "trim-horizon":
	case "latest":
		c.start = kinesissource.Latest()
	default:
		return nil, usagef("--start %q: want latest or trim-horizon", *startAt)
	}
	for _, name := range c.streams {
		if err := checkEFO(name, c.efo); err != nil {
			return nil, err
		}
	}
	c.logger = logger()
	return c, nil
}

func cmdRelay(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) (err error) {
	c, err := parseRelayFlags(args, stdout, stderr)
	if err != nil {
		return err
	}
	c.aws.health.log = c.logger
	stopWatch := c.aws.health.watch(ctx)
	defer stopWatch()
	var ops *opsServer
	if c.metricsAddr != "" {
		mp, reg, err := promMeterProvider()
		if err != nil {
			return err
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opsShutdownTimeout)
			defer cancel()
			err = errors.Join(err, mp.Shutdown(sctx))
		}()
		c.meterProvider = mp
		if ops, err = startOps(c.metricsAddr, reg, c.logger); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, ops.shutdown(ctx)) }()
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
		s, err := dynamostore.New(dc, c.table, func(o *dynamostore.Options) {
			o.Logger = c.logger
			o.Owner = c.owner
		})
		if err != nil {
			return err
		}
		if err := s.Check(ctx); err != nil {
			if ctx.Err() != nil {
				return cmp.Or(c.aws.health.stopError(true, c.from), err)
			}
			return err
		}
		store = s
	}
	var stats relayStats
	r, err := newRelay(kc, store, c, &stats)
	if err != nil {
		return err
	}
	if ops != nil {
		ops.setReady(r.notReady)
	}
	stop := startProgress(ctx, stderr, "relay", &stats.read)
	defer stop()
	begin := time.Now()
	err = runBounded(ctx, c.shutdownTimeout, func() error { return r.run(ctx, c) })
	stop()
	read, written := stats.read.Load(), stats.written.Load()
	fmt.Fprintf(stderr, "relay %s -> %s: %d records read, %d written in %v\n", c.from, c.to, read, written, time.Since(begin).Round(time.Millisecond))
	if ctx.Err() == nil {
		return err
	}
	if unsent := read - written; unsent > 0 {
		next := "they were not checkpointed: the next run reads them again"
		if store == nil {
			next = "without --table, the next run starts at --start"
		}
		return errors.Join(fmt.Errorf("stopped with %d record(s) read but not written (%s)", unsent, next), err)
	}
	if err == nil {
		// Without --table the relay reads every shard: not having read
		// one is a failure. With it, other relays may hold every lease.
		return c.aws.health.stopError(store == nil, c.from)
	}
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
	read    atomic.Int64 // handed to the pipeline by the source
	written atomic.Int64 // reported written by PutRecords
}

// relay is a relay's pipeline, built and not yet run.
type relay struct {
	src      *kinesissource.Source
	sink     *kinesissink.Sink
	pipeline *shardflow.Pipeline
}

// newRelay builds the pipeline that copies c.from to c.to, counting in
// stats, and recording metrics through c.meterProvider.
func newRelay(kc relayAPI, store shardflow.CheckpointStore, c *relayConfig, stats *relayStats) (*relay, error) {
	streams := make([]kinesissource.Stream, len(c.streams))
	for i, name := range c.streams {
		streams[i] = kinesissource.Stream{Name: name}
	}
	src, err := kinesissource.NewStreams(kc, streams, func(o *kinesissource.Options) {
		o.Store = store
		o.InitialPosition = c.start
		o.Logger = c.logger
		o.OnGetRecords = func(ev kinesissource.GetRecordsEvent) { stats.read.Add(int64(ev.UserRecords)) }
		if c.efo != "" {
			o.EnhancedFanOut = &kinesissource.EnhancedFanOut{ConsumerName: c.efo}
		}
	})
	if err != nil {
		return nil, err
	}
	sink, err := kinesissink.New(countingPuts{kc, &stats.written}, c.to, func(o *kinesissink.Options) {
		o.Ordered = !c.unordered
		o.Linger = 100 * time.Millisecond
		o.Logger = c.logger
	})
	if err != nil {
		return nil, err
	}
	pl := shardflow.Source(src, func(o *shardflow.Options) {
		o.DrainTimeout = c.shutdownTimeout
		o.Logger = c.logger
		o.MeterProvider = c.meterProvider // the source, sink and store inherit it
	}).Map(kinesissink.FromRecord).Sink(sink)
	return &relay{src: src, sink: sink, pipeline: pl}, nil
}

// run copies until ctx ends, and stops within c.shutdownTimeout of that.
func (r *relay) run(ctx context.Context, c *relayConfig) error {
	err := r.pipeline.Run(ctx)
	// After a clean run the sink holds nothing; after a drain that timed
	// out, Close gives up on what is left by the shutdown deadline.
	closeCtx, cancel := shutdownContext(ctx, c.shutdownTimeout)
	defer cancel()
	return errors.Join(err, r.sink.Close(closeCtx))
}

// notReady returns why the relay is not ready to serve (for /readyz), one
// reason per line of the pipeline's Ready: the pipeline is not running or
// drains, a shard is stalled, or the source does not read every shard it
// should. None when it is ready.
func (r *relay) notReady() []string {
	if err := r.pipeline.Ready(); err != nil {
		return strings.Split(err.Error(), "\n")
	}
	return nil
}

// runRelay copies c.from to c.to until ctx ends, and stops within
// c.shutdownTimeout of that.
func runRelay(ctx context.Context, kc relayAPI, store shardflow.CheckpointStore, c *relayConfig, stats *relayStats) error {
	r, err := newRelay(kc, store, c, stats)
	if err != nil {
		return err
	}
	return r.run(ctx, c)
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
