package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/shardflow/shardflow"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

const tailDoc = `Prints the records of a stream, de-aggregating KPL records, until --max records were
printed or it is interrupted. The text format prints each record's data on a line; the
json format prints one object per record with its shard, sequence and sub-sequence
numbers, partition key, explicit hash key, arrival time and data (as text, or
data_base64 when it is not UTF-8).

With --efo NAME it reads by enhanced fan-out through the stream consumer NAME: records
arrive about 70ms after they were written, at 2 MiB/s per shard of its own, without
taking from the read limits other readers of the stream share. A consumer it had to
register is deregistered when it exits, as AWS charges for each consumer-shard hour;
one that existed is kept. (kinesis-local cannot serve it: it omits an event the AWS SDK
needs.)

Failed calls are retried, and logged at WARN, as are calls with no answer for 5s.
SIGINT or SIGTERM stops it, with exit status 0 when the stream was being read, and 1 when
its calls were failing or no read of the stream had succeeded yet.`

// tailRecord is a record as `tail --format json` prints it.
type tailRecord struct {
	ShardID           string    `json:"shard_id"`
	SequenceNumber    string    `json:"sequence_number"`
	SubSequenceNumber uint64    `json:"sub_sequence_number,omitempty"`
	PartitionKey      string    `json:"partition_key"`
	ExplicitHashKey   string    `json:"explicit_hash_key,omitempty"`
	Arrival           time.Time `json:"approximate_arrival"`
	Data              *string   `json:"data,omitempty"`        // when the data is UTF-8 text
	DataBase64        []byte    `json:"data_base64,omitempty"` // otherwise
}

// tailConfig is what the tail flags say.
type tailConfig struct {
	stream     string
	start      kinesissource.StartingPosition
	format     string
	maxRecords int
	efo        string // consumer name; "": poll
	timeout    time.Duration
	log        *slog.Logger
}

func parseTailFlags(args []string, a *awsFlags, stdout, stderr io.Writer) (*tailConfig, error) {
	fs := newFlagSet("tail", "tail --stream S [flags]", tailDoc)
	a.register(fs.FlagSet, true, false)
	c := &tailConfig{}
	fs.StringVar(&c.stream, "stream", "", "stream to read (name or ARN)")
	from := fs.String("from", "latest", "where to start: latest, trim-horizon, or an RFC 3339 time")
	fs.StringVar(&c.format, "format", "text", "text (the data, one record per line) or json (one JSON object per line)")
	fs.IntVar(&c.maxRecords, "max", 0, "stop after this many records (default: follow until interrupted)")
	fs.StringVar(&c.efo, "efo", "", efoUsage+"; deregistered at exit if tail registered it")
	timeout := registerShutdownTimeout(fs)
	logger := registerLogLevel(fs, stderr)
	positional, err := fs.parse(args, stdout)
	if err != nil {
		return nil, err
	}
	if err := noArgs(positional); err != nil {
		return nil, err
	}
	if c.stream == "" {
		return nil, usagef("--stream is required")
	}
	if c.maxRecords < 0 {
		return nil, usagef("--max %d: want a positive count, or 0 to follow until interrupted", c.maxRecords)
	}
	if err := checkShutdownTimeout(*timeout); err != nil {
		return nil, err
	}
	c.timeout = *timeout
	switch strings.ToLower(*from) {
	case "latest":
		c.start = kinesissource.Latest()
	case "trim-horizon", "trim_horizon":
		c.start = kinesissource.TrimHorizon()
	default:
		t, err := time.Parse(time.RFC3339, *from)
		if err != nil {
			return nil, usagef("--from %q: want latest, trim-horizon or an RFC 3339 time", *from)
		}
		c.start = kinesissource.AtTimestamp(t)
	}
	if c.format != "text" && c.format != "json" {
		return nil, usagef("--format %q: want text or json", c.format)
	}
	if err := checkEFO(c.stream, c.efo); err != nil {
		return nil, err
	}
	c.log = logger()
	return c, nil
}

func cmdTail(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var a awsFlags
	c, err := parseTailFlags(args, &a, stdout, stderr)
	if err != nil {
		return err
	}
	a.health.log = c.log
	stopWatch := a.health.watch(ctx)
	defer stopWatch()
	kc, err := a.kinesis(ctx)
	if err != nil {
		return err
	}
	err = runTail(ctx, kc, c, stdout)
	if err == nil && ctx.Err() != nil {
		return a.health.stopError(true, c.stream)
	}
	return err
}

// runTail prints the records of c.stream, read through kc, to stdout until
// c.maxRecords were printed or ctx ends, and stops within c.timeout of that.
func runTail(ctx context.Context, kc kinesissource.API, c *tailConfig, stdout io.Writer) error {
	src, err := kinesissource.New(kc, c.stream, func(o *kinesissource.Options) {
		o.InitialPosition = c.start
		o.IdleInterval = 250 * time.Millisecond
		o.Logger = c.log
		if c.efo != "" {
			// A consumer left behind goes on costing: tail is short-lived.
			o.EnhancedFanOut = &kinesissource.EnhancedFanOut{ConsumerName: c.efo, DeregisterOnClose: true}
		}
	})
	if err != nil {
		return err
	}
	// runCtx also ends when --max records were printed: that stop is no
	// interruption.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex // records of several shards arrive concurrently
	n := 0
	enc := json.NewEncoder(stdout)
	write := func(_ context.Context, r shardflow.Record) error {
		mu.Lock()
		defer mu.Unlock()
		if c.maxRecords > 0 && n >= c.maxRecords {
			return nil
		}
		n++
		if c.format == "text" {
			if _, err := fmt.Fprintf(stdout, "%s\n", r.Data); err != nil {
				return err
			}
		} else {
			tr := tailRecord{ShardID: r.ShardID, SequenceNumber: r.SequenceNumber, SubSequenceNumber: r.SubSequenceNumber,
				PartitionKey: r.PartitionKey, ExplicitHashKey: r.ExplicitHashKey, Arrival: r.ApproximateArrivalTimestamp}
			if utf8.Valid(r.Data) {
				s := string(r.Data)
				tr.Data = &s
			} else {
				tr.DataBase64 = r.Data
			}
			if err := enc.Encode(tr); err != nil {
				return err
			}
		}
		if c.maxRecords > 0 && n == c.maxRecords {
			cancel()
		}
		return nil
	}
	return runBounded(ctx, c.timeout, func() error {
		return shardflow.Source(src, func(o *shardflow.Options) {
			o.DrainTimeout = c.timeout
			o.Logger = c.log
		}).Sink(shardflow.SinkFunc[shardflow.Record](write)).Run(runCtx)
	})
}

// efoUsage is the usage of --efo, tail's and relay's.
const efoUsage = "read by enhanced fan-out through this consumer, registered if missing (default: poll)"

// checkEFO checks an --efo consumer name by the source's own rule, before
// any AWS call.
func checkEFO(stream, name string) error {
	if name == "" {
		return nil
	}
	// New checks its options and calls nothing: a nil client serves.
	_, err := kinesissource.New((*kinesis.Client)(nil), stream, func(o *kinesissource.Options) {
		o.EnhancedFanOut = &kinesissource.EnhancedFanOut{ConsumerName: name}
	})
	if ce, ok := errors.AsType[*shardflow.ConfigError](err); ok && strings.HasPrefix(ce.Field, "Options.EnhancedFanOut") {
		return usagef("--efo %q: %s", name, ce.Reason)
	}
	return nil // other faults are reported by the command's own New
}
