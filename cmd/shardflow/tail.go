package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/shardflow/shardflow"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

const tailDoc = `Prints the records of a stream, de-aggregating KPL records, until --max records were
printed or it is interrupted. The text format prints each record's data on a line; the
json format prints one object per record with its shard, sequence and sub-sequence
numbers, partition key, explicit hash key, arrival time and data (as text, or
data_base64 when it is not UTF-8).

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

func cmdTail(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("tail", "tail --stream S [flags]", tailDoc)
	var a awsFlags
	a.register(fs.FlagSet, true, false)
	stream := fs.String("stream", "", "stream to read (name or ARN)")
	from := fs.String("from", "latest", "where to start: latest, trim-horizon, or an RFC 3339 time")
	format := fs.String("format", "text", "text (the data, one record per line) or json (one JSON object per line)")
	maxRecords := fs.Int("max", 0, "stop after this many records (default: follow until interrupted)")
	timeout := registerShutdownTimeout(fs)
	logger := registerLogLevel(fs, stderr)
	positional, err := fs.parse(args, stdout)
	if err != nil {
		return err
	}
	if err := noArgs(positional); err != nil {
		return err
	}
	if *stream == "" {
		return usagef("--stream is required")
	}
	if *maxRecords < 0 {
		return usagef("--max %d: want a positive count, or 0 to follow until interrupted", *maxRecords)
	}
	if err := checkShutdownTimeout(*timeout); err != nil {
		return err
	}
	var start kinesissource.StartingPosition
	switch strings.ToLower(*from) {
	case "latest":
		start = kinesissource.Latest()
	case "trim-horizon", "trim_horizon":
		start = kinesissource.TrimHorizon()
	default:
		t, err := time.Parse(time.RFC3339, *from)
		if err != nil {
			return usagef("--from %q: want latest, trim-horizon or an RFC 3339 time", *from)
		}
		start = kinesissource.AtTimestamp(t)
	}
	if *format != "text" && *format != "json" {
		return usagef("--format %q: want text or json", *format)
	}
	log := logger()
	a.health.log = log
	stopWatch := a.health.watch(ctx)
	defer stopWatch()
	kc, err := a.kinesis(ctx)
	if err != nil {
		return err
	}
	src, err := kinesissource.New(kc, *stream, func(o *kinesissource.Options) {
		o.InitialPosition = start
		o.IdleInterval = 250 * time.Millisecond
		o.Logger = log
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
		if *maxRecords > 0 && n >= *maxRecords {
			return nil
		}
		n++
		if *format == "text" {
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
		if *maxRecords > 0 && n == *maxRecords {
			cancel()
		}
		return nil
	}
	err = runBounded(ctx, *timeout, func() error {
		return shardflow.Source(src, func(o *shardflow.Options) {
			o.DrainTimeout = *timeout
			o.Logger = log
		}).Sink(shardflow.SinkFunc[shardflow.Record](write)).Run(runCtx)
	})
	if err == nil && ctx.Err() != nil {
		return a.health.stopError(true, *stream)
	}
	return err
}
