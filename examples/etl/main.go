// Command etl is the shape of an ETL pipeline in code: JSON click events are
// decoded into a struct, enriched, filtered, and written as typed output to
// another stream; events that cannot be decoded go to a dead-letter stream
// with their error, and the pipeline goes on.
//
//	etl -in clicks -out purchases -dead-letter clicks-dlq -table etl-state
//
// It is wired as examples/relay is: AWS settings the SDK's standard way
// (config.LoadDefaultConfig: the default credential chain and region, and the
// endpoints in AWS_ENDPOINT_URL_KINESIS and AWS_ENDPOINT_URL_DYNAMODB when
// set; `. .emulators/env` sets them, with fake credentials, for the local
// emulators), the NewFromConfig constructors, and one logger on the pipeline,
// which the source, sink and store use too. With -demo it creates the streams
// and table, writes sample events (a few of them broken) and prints what came
// out.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// Click is an input event.
type Click struct {
	User    string  `json:"user"`
	Page    string  `json:"page"`
	Action  string  `json:"action"`
	Amount  float64 `json:"amount,omitempty"`
	Country string  `json:"country"`
}

// Purchase is the typed output.
type Purchase struct {
	User     string  `json:"user"`
	Product  string  `json:"product"`
	Amount   float64 `json:"amount"`
	Region   string  `json:"region"`
	ReadFrom string  `json:"read_from"` // shard/sequence number, for idempotent consumers
}

// DeadLetter is what the dead-letter stream gets for a record that failed.
type DeadLetter struct {
	Shard    string `json:"shard"`
	Sequence string `json:"sequence_number"`
	Data     string `json:"data"`
	Error    string `json:"error"`
}

var regions = map[string]string{"DE": "eu", "FR": "eu", "US": "na", "CA": "na", "JP": "apac"}

type enriched struct {
	Click
	Region string
	From   string
}

func decode(_ context.Context, r shardflow.Record) (enriched, error) {
	var c Click
	if err := json.Unmarshal(r.Data, &c); err != nil {
		return enriched{}, shardflow.Permanent(fmt.Errorf("decode click: %w", err))
	}
	if c.User == "" {
		return enriched{}, shardflow.Permanent(errors.New("click without a user"))
	}
	return enriched{Click: c, From: r.ShardID + "/" + r.SequenceNumber}, nil
}

func enrich(_ context.Context, e enriched) (enriched, error) {
	e.Region = regions[e.Country]
	if e.Region == "" {
		e.Region = "other"
	}
	return e, nil
}

func isPurchase(_ context.Context, e enriched) (bool, error) { return e.Action == "buy", nil }

func toPurchase(_ context.Context, e enriched) (kinesissink.Entry, error) {
	data, err := json.Marshal(Purchase{User: e.User, Product: strings.TrimPrefix(e.Page, "/p/"), Amount: e.Amount,
		Region: e.Region, ReadFrom: e.From})
	return kinesissink.Entry{Data: data, PartitionKey: e.User}, err
}

func main() {
	in := flag.String("in", "clicks", "stream of click events")
	out := flag.String("out", "purchases", "stream of purchases")
	dlq := flag.String("dead-letter", "clicks-dlq", "stream of records that failed")
	table := flag.String("table", "etl-state", "DynamoDB table of checkpoints and leases")
	demo := flag.Bool("demo", false, "create the streams and table, write sample events, run until they are done, report")
	verbose := flag.Bool("v", false, "log lifecycle events to stderr (default: only retried failures and errors)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, _, err := run(ctx, logger(*verbose), *in, *out, *dlq, *table, *demo); err != nil {
		log.Fatalf("etl: %v", err)
	}
}

// run runs the pipeline and returns how many purchases and dead letters it
// wrote.
func run(ctx context.Context, lg *slog.Logger, in, out, dlqStream, table string, demo bool) (purchasesOut, deadOut int64, err error) {
	// The SDK's standard settings: credentials, region, and endpoints from
	// AWS_ENDPOINT_URL_KINESIS / AWS_ENDPOINT_URL_DYNAMODB, which
	// `. .emulators/env` sets for the local emulators.
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("load AWS config: %w", err)
	}
	store, err := dynamostore.NewFromConfig(cfg, table)
	if err != nil {
		return 0, 0, err
	}
	var want int
	if demo {
		if want, err = prepare(ctx, cfg, store, in, out, dlqStream); err != nil {
			return 0, 0, err
		}
	}

	src, err := kinesissource.NewFromConfig(cfg, in, func(o *kinesissource.Options) {
		o.Store = store
		o.InitialPosition = kinesissource.TrimHorizon()
		o.IdleInterval = 200 * time.Millisecond
	})
	if err != nil {
		return 0, 0, err
	}
	sink, err := kinesissink.NewFromConfig(cfg, out, func(o *kinesissink.Options) { o.Linger = 100 * time.Millisecond })
	if err != nil {
		return 0, 0, err
	}
	defer sink.Close(context.WithoutCancel(ctx))
	// The dead-letter stream gets a producer of its own; a record counts as
	// done once its dead letter is durably written. It is not part of the
	// pipeline, so it is given the pipeline's logger itself.
	deadLetters, err := kinesissink.NewProducerFromConfig(cfg, dlqStream, func(o *kinesissink.Options) { o.Logger = lg })
	if err != nil {
		return 0, 0, err
	}
	defer deadLetters.Close(context.WithoutCancel(ctx))

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var done, views, purchases, dead atomic.Int64
	count := func(n *atomic.Int64) {
		n.Add(1)
		if demo && int(done.Add(1)) == want {
			// Every sample event is finished. The pipeline checkpoints it
			// while it drains.
			cancel()
		}
	}
	err = shardflow.Source(src, func(o *shardflow.Options) {
		o.Logger = lg // the source, sink and store log through it too
	}).
		DeadLetter(func(ctx context.Context, r shardflow.Record, cause error) error {
			data, _ := json.Marshal(DeadLetter{Shard: r.ShardID, Sequence: r.SequenceNumber, Data: string(r.Data), Error: cause.Error()})
			if err := deadLetters.Put(ctx, data, r.PartitionKey); err != nil {
				return err
			}
			if err := deadLetters.Flush(ctx); err != nil {
				return err
			}
			count(&dead)
			return nil
		}).
		Map(decode, shardflow.WithName("decode")).
		Map(enrich).
		Tap(func(_ context.Context, e enriched) error {
			if e.Action != "buy" {
				count(&views) // filtered out next: finished
			}
			return nil
		}).
		Filter(isPurchase).
		Map(toPurchase).
		Tap(func(context.Context, kinesissink.Entry) error { count(&purchases); return nil }).
		Sink(sink).
		Run(runCtx)
	if err != nil {
		return 0, 0, err
	}
	fmt.Printf("purchases written to %s: %d; dead letters written to %s: %d\n", out, purchases.Load(), dlqStream, dead.Load())
	return purchases.Load(), dead.Load(), nil
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

// prepare creates the streams and table and writes sample clicks; it
// returns how many.
func prepare(ctx context.Context, cfg aws.Config, store *dynamostore.Store, streams ...string) (int, error) {
	kc := kinesis.NewFromConfig(cfg)
	for _, s := range streams {
		if _, err := kc.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String(s), ShardCount: aws.Int32(2)}); err != nil {
			return 0, err
		}
		if err := kinesis.NewStreamExistsWaiter(kc).Wait(ctx, &kinesis.DescribeStreamInput{StreamName: aws.String(s)}, time.Minute,
			func(o *kinesis.StreamExistsWaiterOptions) {
				o.MinDelay, o.MaxDelay = 50*time.Millisecond, 500*time.Millisecond
			}); err != nil {
			return 0, err
		}
	}
	if err := store.CreateTable(ctx); err != nil {
		return 0, err
	}
	p, err := kinesissink.NewProducerFromConfig(cfg, streams[0])
	if err != nil {
		return 0, err
	}
	countries := []string{"DE", "US", "JP", "BR", "FR"}
	n := 0
	for i := range 300 {
		user := fmt.Sprintf("user-%02d", i%40)
		var data string
		switch {
		case i%50 == 7:
			data = `{"user": broken json`
		case i%3 == 0:
			data = fmt.Sprintf(`{"user":%q,"page":"/p/sku-%d","action":"buy","amount":%d.99,"country":%q}`, user, i%17, 5+i%40, countries[i%5])
		default:
			data = fmt.Sprintf(`{"user":%q,"page":"/home","action":"view","country":%q}`, user, countries[i%5])
		}
		if err := p.Put(ctx, []byte(data), user); err != nil {
			return 0, err
		}
		n++
	}
	if err := p.Close(ctx); err != nil {
		return 0, err
	}
	fmt.Printf("wrote %d sample clicks to %s\n", n, streams[0])
	return n, nil
}
