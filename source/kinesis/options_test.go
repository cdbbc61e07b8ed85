package kinesissource_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow/internal/logtest"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/internal/awstest"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// Zero-valued Options validate and run with the documented defaults:
// shards without a checkpoint start at the tip (Latest), GetRecords asks
// for 10,000 records, a shard at the tip is polled every second,
// ListShards pages hold 1000 shards and run every 10s, and with a Leaser
// store the HandoffTimeout default (half its LeaseDuration) is valid.
func TestZeroOptionsValidateAndRunWithTheDocumentedDefaults(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 1)
		put(t, f, "in", 0, 5, 1) // before the start: Latest skips them
		var (
			mu         sync.Mutex
			limits     []int32
			pageSizes  []int32
			listCalls  []time.Time
			emptyPolls []time.Time // GetRecords calls once the reader is at the tip
			atTip      bool
		)
		f.InjectError(func(op string, in any) error {
			mu.Lock()
			defer mu.Unlock()
			switch op {
			case "GetRecords":
				limits = append(limits, aws.ToInt32(in.(*kinesis.GetRecordsInput).Limit))
				if atTip {
					emptyPolls = append(emptyPolls, time.Now())
				}
			case "ListShards":
				pageSizes = append(pageSizes, aws.ToInt32(in.(*kinesis.ListShardsInput).MaxResults))
				listCalls = append(listCalls, time.Now())
			}
			return nil
		})
		src, err := kinesissource.New(f, "in")
		if err != nil {
			t.Fatalf("New with zero Options = %v", err)
		}
		sink := &collector{}
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() { errc <- shardflow.Source(src).Sink(sink).Run(ctx) }()
		synctest.Wait() // the reader is at the tip, waiting IdleInterval
		put(t, f, "in", 5, 10, 1)
		mu.Lock()
		atTip = true
		mu.Unlock()
		time.Sleep(30 * time.Second)
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("Run = %v", err)
		}
		got := sink.data()
		checkExactlyOnceInOrder(t, 5, got)
		if len(got) > 0 && got[0] != "key-0:5" {
			t.Errorf("first record read %q; want key-0:5, the first written after the start (Latest)", got[0])
		}

		mu.Lock()
		defer mu.Unlock()
		for _, l := range limits {
			if l != 10000 {
				t.Fatalf("GetRecords Limit %d; want the default 10000", l)
			}
		}
		for _, p := range pageSizes {
			if p != 1000 {
				t.Fatalf("ListShards MaxResults %d; want the default 1000", p)
			}
		}
		for i := 2; i < len(emptyPolls); i++ { // [0] may be the poll that found the records
			if d := emptyPolls[i].Sub(emptyPolls[i-1]); d != time.Second {
				t.Fatalf("GetRecords calls at the tip %v apart; want the default IdleInterval 1s", d)
			}
		}
		if len(emptyPolls) < 20 {
			t.Errorf("%d GetRecords calls in 30s at the tip; want about 30", len(emptyPolls))
		}
		for i := 1; i < len(listCalls); i++ {
			if d := listCalls[i].Sub(listCalls[i-1]); d != 10*time.Second {
				t.Fatalf("ListShards calls %v apart; want the default DiscoveryInterval 10s", d)
			}
		}
		if len(listCalls) < 3 {
			t.Errorf("%d ListShards calls in 30s; want 3 or 4", len(listCalls))
		}
	})

	t.Run("with a Leaser store", func(t *testing.T) {
		in, err := memory.New().Instance("a") // LeaseDuration 10s
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kinesissource.New(newStream(t, "in", 1), "in", func(o *kinesissource.Options) { o.Store = in }); err != nil {
			t.Errorf("New with a Leaser store and zero HandoffTimeout = %v; want its default to fit the lease", err)
		}
	})
}

// logStore is a checkpoint store that notes the logger the source hands it.
type logStore struct {
	*memory.Store
	mu  sync.Mutex
	got *slog.Logger
}

func (s *logStore) UsePipelineLogger(l *slog.Logger) {
	s.mu.Lock()
	s.got = l
	s.mu.Unlock()
}

func TestTheLoggerIsSetOnce(t *testing.T) {
	t.Run("a source given no logger logs through the pipeline's, and hands it to its store", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newStream(t, "in", 1)
			put(t, f, "in", 0, 3, 1)
			var buf logtest.Buffer
			logger := slog.New(slog.NewTextHandler(&buf, nil))
			store := &logStore{Store: memory.New()}
			src := newSource(t, f, "in", func(o *kinesissource.Options) {
				o.Store = store
				o.InitialPosition = kinesissource.TrimHorizon()
			})
			sink := &collector{}
			pl := shardflow.Source(src, func(o *shardflow.Options) { o.Logger = logger }).Sink(sink)
			if err := runUntil(t, pl, func() bool { return sink.len() >= 3 }); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(buf.String(), `msg="reading shard" component=kinesis.source stream=in shard_id=shardId-000000000000`) {
				t.Errorf("the pipeline's logger got no scoped \"reading shard\" line from the source; it got:\n%s", buf.String())
			}
			store.mu.Lock()
			defer store.mu.Unlock()
			if store.got != logger {
				t.Errorf("the store was handed logger %p; want the pipeline's %p", store.got, logger)
			}
		})
	})
	t.Run("a source given a logger keeps it", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newStream(t, "in", 1)
			put(t, f, "in", 0, 3, 1)
			var own, pipeline logtest.Buffer
			src := newSource(t, f, "in", func(o *kinesissource.Options) {
				o.InitialPosition = kinesissource.TrimHorizon()
				o.Logger = slog.New(slog.NewTextHandler(&own, nil))
			})
			sink := &collector{}
			pl := shardflow.Source(src, func(o *shardflow.Options) { o.Logger = slog.New(slog.NewTextHandler(&pipeline, nil)) }).Sink(sink)
			if err := runUntil(t, pl, func() bool { return sink.len() >= 3 }); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(own.String(), `msg="reading shard" component=kinesis.source`) {
				t.Errorf("the source's own logger got no \"reading shard\" line; it got:\n%s", own.String())
			}
			if strings.Contains(pipeline.String(), "component=kinesis.source") {
				t.Errorf("the pipeline's logger got the source's lines though the source has its own:\n%s", pipeline.String())
			}
		})
	})
}

// NewFromConfig, the easy way, builds a working client from an aws.Config
// alone: here one pointing at the emulator.
func TestEmulatorNewFromConfig(t *testing.T) {
	endpoint := awstest.KinesisEndpoint(t)
	c := awstest.KinesisClient(t, awstest.KinesisNoRetries)
	stream := awstest.CreateStream(t, c, 2)
	put(t, c, stream, 0, 100, 10)
	cfg := aws.Config{
		Region:       awstest.Region,
		Credentials:  credentials.NewStaticCredentialsProvider("x", "x", ""),
		BaseEndpoint: aws.String(endpoint),
	}
	src, err := kinesissource.NewFromConfig(cfg, stream, emulatorOptions(memory.New()))
	if err != nil {
		t.Fatal(err)
	}
	sink := &collector{}
	runReal(t, shardflow.Source(src).Sink(sink), func() bool { return sink.len() >= 100 })
	checkExactlyOnceInOrder(t, 100, sink.data())

	if _, err := kinesissource.NewFromConfig(cfg, ""); err == nil {
		t.Errorf("NewFromConfig with an empty stream = nil; want a *shardflow.ConfigError")
	}
}
