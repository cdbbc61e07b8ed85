// Command shardflow-bench measures shardflow next to the hand-written code it
// replaces, in one run, and prints the figures side by side with the machine
// they were taken on:
//
//  1. the pipeline core (Source → Map → Filter → Sink over the in-memory test
//     source, memory checkpoints) vs a goroutine-and-channel loop doing the
//     same work and carrying the same positions;
//  2. a Kinesis relay (kinesissource → Map(kinesissink.FromRecord) →
//     kinesissink) over the in-memory kinesisfake vs a raw GetRecords →
//     PutRecords loop over the same fake;
//  3. the relay and the producer over kinesis-local vs raw aws-sdk-go-v2
//     loops over the same emulator;
//  4. KPL aggregation and de-aggregation of 100-byte records.
//
// `make bench-all` starts the emulators if they are not running and runs
//
//	go run ./cmd/shardflow-bench -kinesis-endpoint $SHARDFLOW_KINESIS_ENDPOINT
//
// Without an endpoint (-kinesis-endpoint, or SHARDFLOW_KINESIS_ENDPOINT) part 3
// is skipped with a message. The endpoint must be an http(s) URL on a loopback
// host: the program refuses any other, uses the static credentials
// "fake"/"fake", never reads the AWS configuration and ignores HTTP(S)_PROXY.
// With the defaults a run takes one to two minutes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"time"
)

type config struct {
	endpoint    string
	reps        int // runs of each in-memory measurement
	wireReps    int // runs of each emulator measurement
	coreRecords int
	fakeRecords int
	wireRecords int
	kplRecords  int
	timeout     time.Duration
}

func main() {
	var c config
	flag.StringVar(&c.endpoint, "kinesis-endpoint", os.Getenv("SHARDFLOW_KINESIS_ENDPOINT"),
		"kinesis-local endpoint, a loopback URL (default $SHARDFLOW_KINESIS_ENDPOINT); empty skips part 3")
	flag.IntVar(&c.reps, "reps", 5, "runs of each in-memory measurement (parts 1, 2, 4); the median is reported")
	flag.IntVar(&c.wireReps, "wire-reps", 3, "runs of each emulator measurement (part 3)")
	flag.IntVar(&c.coreRecords, "core-records", 1_000_000, "records per run of the pipeline core (part 1)")
	flag.IntVar(&c.fakeRecords, "fake-records", 200_000, "records per relay run over the in-memory fake (part 2)")
	flag.IntVar(&c.wireRecords, "wire-records", 3000, "records per run over kinesis-local (part 3)")
	flag.IntVar(&c.kplRecords, "kpl-records", 2_000_000, "records per KPL encode or decode run (part 4)")
	flag.DurationVar(&c.timeout, "timeout", 5*time.Minute, "give up after this long")
	flag.Parse()
	if flag.NArg() > 0 {
		log.Fatalf("shardflow-bench: unexpected arguments %q", flag.Args())
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := run(ctx, c); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (-timeout %v)", err, c.timeout)
		}
		log.Fatalf("shardflow-bench: %v", err)
	}
}

func run(ctx context.Context, c config) error {
	if c.reps < 1 || c.wireReps < 1 || c.coreRecords < 4 || c.fakeRecords < 4 || c.wireRecords < 4 || c.kplRecords < 400 {
		return errors.New("-reps and -wire-reps must be at least 1, record counts at least 4 (-kpl-records 400)")
	}
	// Check the endpoint before spending a minute on the in-memory parts.
	var wire *wireBench
	if c.endpoint != "" {
		var err error
		if wire, err = newWireBench(c.endpoint); err != nil {
			return err
		}
	}

	start := time.Now()
	printHeader(os.Stdout)

	t := newTable(fmt.Sprintf("1. Pipeline core: Source → Map → Filter → Sink over the in-memory test source with "+
		"memory checkpoints; floor: a goroutine per shard sending values with their positions on a channel to a worker "+
		"doing the same map, filter and count. %s records per run, median (min–max) of %d runs.",
		grouped(c.coreRecords), c.reps))
	if err := benchCore(ctx, t, c); err != nil {
		return err
	}
	t.print(os.Stdout)

	t = newTable(fmt.Sprintf("2. Relay over the in-memory kinesisfake, 4 shards → 4 shards, 100-byte records: "+
		"kinesissource → Map(kinesissink.FromRecord) → kinesissink (Linger 10ms), memory checkpoints; floor: per shard "+
		"GetRecords → PutRecords (500 entries) by hand, remembering the last sequence number. %s records per run, "+
		"median (min–max) of %d runs. CPU and allocations are the whole process's, the fake's share included.",
		grouped(c.fakeRecords), c.reps))
	if err := benchFakeRelay(ctx, t, c); err != nil {
		return err
	}
	t.print(os.Stdout)

	if wire == nil {
		fmt.Printf("3. kinesis-local: SKIPPED, no endpoint (-kinesis-endpoint or SHARDFLOW_KINESIS_ENDPOINT); " +
			"`make bench-all` starts the emulators and passes it.\n\n")
	} else {
		t = newTable(fmt.Sprintf("3. kinesis-local at %s, 4 shards, 100-byte records. Producer: Put each record, "+
			"then Close (default options: 500-entry requests, up to 8 in flight); floor: one 500-entry PutRecords call "+
			"after another. Relay: as in 2, reading what the raw producer wrote; floor: the raw relay of 2. "+
			"%s records per run, median (min–max) of %d runs, the two sides alternating. CPU is this process's only: "+
			"the emulator's is not counted.", c.endpoint, grouped(c.wireRecords), c.wireReps))
		if err := wire.run(ctx, t, c); err != nil {
			return err
		}
		t.print(os.Stdout)
	}

	t = newTable(fmt.Sprintf("4. KPL (internal/kpl), 100-byte records with 11-byte partition keys: aggregation into "+
		"aggregates of up to 50 KiB, de-aggregation of 400-record aggregates. %s records per run, median (min–max) of %d runs.",
		grouped(c.kplRecords), c.reps))
	if err := benchKPL(t, c); err != nil {
		return err
	}
	t.print(os.Stdout)

	fmt.Printf("total time %v\n", time.Since(start).Round(100*time.Millisecond))
	return nil
}
