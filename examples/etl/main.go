// Command etl is the shape of an ETL pipeline in code: JSON click events are
// decoded into a struct, enriched, filtered, and written as typed output to
// another stream; events that cannot be decoded go to a dead-letter stream
// with their error, and the pipeline goes on.
//
//	etl -in clicks -out purchases -dead-letter clicks-dlq -table etl-state
//
// Endpoints and credentials work as in examples/relay. With -demo it creates
// the streams and table, writes sample events (a few of them broken) and
// prints what came out.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
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
	kinesisEndpoint := flag.String("kinesis-endpoint", "", "Kinesis endpoint URL (an emulator); default: AWS")
	dynamoEndpoint := flag.String("dynamodb-endpoint", "", "DynamoDB endpoint URL (an emulator); default: AWS")
	in := flag.String("in", "clicks", "stream of click events")
	out := flag.String("out", "purchases", "stream of purchases")
	dlq := flag.String("dead-letter", "clicks-dlq", "stream of records that failed")
	table := flag.String("table", "etl-state", "DynamoDB table of checkpoints and leases")
	demo := flag.Bool("demo", false, "create the streams and table, write sample events, run until they are done, report")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, _, err := run(ctx, *kinesisEndpoint, *dynamoEndpoint, *in, *out, *dlq, *table, *demo); err != nil {
		log.Fatalf("etl: %v", err)
	}
}

// run runs the pipeline and returns how many purchases and dead letters it
// wrote.
func run(ctx context.Context, kEndpoint, dEndpoint, in, out, dlqStream, table string, demo bool) (purchasesOut, deadOut int64, err error) {
	var opts []func(*config.LoadOptions) error
	if kEndpoint != "" || dEndpoint != "" {
		opts = append(opts, config.WithRegion("us-east-1"),
			config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("fake", "fake", "")))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return 0, 0, err
	}
	kc := kinesis.NewFromConfig(cfg, func(o *kinesis.Options) {
		o.Retryer = aws.NopRetryer{}
		if kEndpoint != "" {
			o.BaseEndpoint = aws.String(kEndpoint)
		}
	})
	dc := dynamodb.NewFromConfig(cfg, func(o *dynamodb.Options) {
		if dEndpoint != "" {
			o.BaseEndpoint = aws.String(dEndpoint)
		}
	})
	store, err := dynamostore.New(dc, table)
	if err != nil {
		return 0, 0, err
	}
	var want int
	if demo {
		if want, err = prepare(ctx, kc, store, in, out, dlqStream); err != nil {
			return 0, 0, err
		}
	}

	src, err := kinesissource.New(kc, in, func(o *kinesissource.Options) {
		o.Store = store
		o.InitialPosition = kinesissource.TrimHorizon()
		o.IdleInterval = 200 * time.Millisecond
	})
	if err != nil {
		return 0, 0, err
	}
	sink, err := kinesissink.New(kc, out, func(o *kinesissink.Options) { o.Linger = 100 * time.Millisecond })
	if err != nil {
		return 0, 0, err
	}
	defer sink.Close(context.WithoutCancel(ctx))
	// The dead-letter stream gets a producer of its own; a record counts as
	// done once its dead letter is durably written.
	deadLetters, err := kinesissink.NewProducer(kc, dlqStream)
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
	err = shardflow.Source(src).
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

// prepare creates the streams and table and writes sample clicks; it
// returns how many.
func prepare(ctx context.Context, kc *kinesis.Client, store *dynamostore.Store, streams ...string) (int, error) {
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
	p, err := kinesissink.NewProducer(kc, streams[0])
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
