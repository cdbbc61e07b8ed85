package kinesissource_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

var _ kinesissource.FanOutAPI = (*kinesisfake.Fake)(nil)

// fanOut reads by enhanced fan-out through the consumer named name.
func fanOut(name string) func(*kinesissource.Options) {
	return func(o *kinesissource.Options) {
		o.EnhancedFanOut = &kinesissource.EnhancedFanOut{ConsumerName: name}
		o.InitialPosition = kinesissource.TrimHorizon()
	}
}

// newFanOutStream creates a stream of n shards on a new fake made with
// optFns.
func newFanOutStream(t *testing.T, name string, n int32, optFns ...func(*kinesisfake.Options)) *kinesisfake.Fake {
	t.Helper()
	f := kinesisfake.New(optFns...)
	if _, err := f.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(n)}); err != nil {
		t.Fatal(err)
	}
	return f
}

func register(t *testing.T, f *kinesisfake.Fake, stream, name string) string {
	t.Helper()
	out, err := f.RegisterStreamConsumer(t.Context(), &kinesis.RegisterStreamConsumerInput{StreamARN: aws.String(kinesisfake.StreamARN(stream)), ConsumerName: aws.String(name)})
	if err != nil {
		t.Fatal(err)
	}
	return aws.ToString(out.Consumer.ConsumerARN)
}

// consumers returns the names of the stream's consumers.
func consumers(t *testing.T, f *kinesisfake.Fake, stream string) []string {
	t.Helper()
	out, err := f.ListStreamConsumers(t.Context(), &kinesis.ListStreamConsumersInput{StreamARN: aws.String(kinesisfake.StreamARN(stream))})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range out.Consumers {
		names = append(names, aws.ToString(c.ConsumerName))
	}
	return names
}

// produce writes records "key-k:i" for i in [from, to), one every gap, from
// a goroutine of the bubble; the channel closes when it is done.
func produce(t *testing.T, f *kinesisfake.Fake, from, to, keys int, gap time.Duration) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := from; i < to; i++ {
			put(t, f, "in", i, i+1, keys)
			time.Sleep(gap)
		}
	}()
	return done
}

func TestFanOutRegistersItsConsumerAndWaitsUntilItIsActive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFanOutStream(t, "in", 2, func(o *kinesisfake.Options) { o.ConsumerStatusDelay = 10 * time.Second })
		put(t, f, "in", 0, 100, 10)
		src := newSource(t, f, "in", fanOut("app"))
		sink := &collector{}
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() { errc <- shardflow.Source(src).Sink(sink).Run(ctx) }()
		time.Sleep(5 * time.Second)
		if err := src.Ready(); err == nil || !strings.Contains(err.Error(), "not listed") {
			t.Errorf("Ready() while the consumer is CREATING = %v; want not ready: shards not listed yet", err)
		}
		if n := f.Calls("SubscribeToShard"); n != 0 {
			t.Errorf("%d SubscribeToShard calls before the consumer was ACTIVE; want none", n)
		}
		waitFor(t, func() bool { return sink.len() >= 100 })
		cancel()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		checkExactlyOnceInOrder(t, 100, sink.data())
		if n := f.Calls("RegisterStreamConsumer"); n != 1 {
			t.Errorf("%d RegisterStreamConsumer calls; want 1", n)
		}
		if n := f.Calls("SubscribeToShard"); n != 2 {
			t.Errorf("%d SubscribeToShard calls; want one per shard", n)
		}
		if n := f.Calls("GetRecords"); n != 0 {
			t.Errorf("%d GetRecords calls; want none with enhanced fan-out", n)
		}
		if got := consumers(t, f, "in"); len(got) != 1 || got[0] != "app" {
			t.Errorf("consumers %v; want [app], kept after Run", got)
		}
		synctest.Wait()
		if n := f.Subscriptions(); n != 0 {
			t.Errorf("%d subscriptions open after Run returned", n)
		}
	})
}

func TestFanOutThroughAConsumerGivenByARN(t *testing.T) {
	t.Run("reads through it and registers nothing", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFanOutStream(t, "in", 1)
			arn := register(t, f, "in", "infra")
			put(t, f, "in", 0, 10, 2)
			src := newSource(t, f, "in", func(o *kinesissource.Options) {
				o.EnhancedFanOut = &kinesissource.EnhancedFanOut{ConsumerARN: arn, DeregisterOnClose: true}
				o.InitialPosition = kinesissource.TrimHorizon()
			})
			sink := &collector{}
			if err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool { return sink.len() >= 10 }); err != nil {
				t.Fatal(err)
			}
			checkExactlyOnceInOrder(t, 10, sink.data())
			if n := f.Calls("RegisterStreamConsumer"); n != 1 {
				t.Errorf("%d RegisterStreamConsumer calls; want only the test's", n)
			}
			if got := consumers(t, f, "in"); len(got) != 1 {
				t.Errorf("consumers %v; a consumer Run did not register is never deregistered", got)
			}
		})
	})
	t.Run("a consumer that does not exist is a ConsumerDeletedError", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFanOutStream(t, "in", 1)
			arn := kinesisfake.StreamARN("in") + "/consumer/gone:1"
			src := newSource(t, f, "in", func(o *kinesissource.Options) {
				o.EnhancedFanOut = &kinesissource.EnhancedFanOut{ConsumerARN: arn}
			})
			err := shardflow.Source(src).Sink(&collector{}).Run(t.Context())
			if cde, ok := errors.AsType[*kinesissource.ConsumerDeletedError](err); !ok || cde.ConsumerARN != arn {
				t.Fatalf("Run = %v; want a *ConsumerDeletedError for %s", err, arn)
			}
		})
	})
}

func TestFanOutAStreamWithTwentyConsumersIsAConsumerLimitError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFanOutStream(t, "in", 1)
		for i := range kinesissource.MaxConsumersPerStream {
			register(t, f, "in", fmt.Sprint("other-", i))
		}
		err := shardflow.Source(newSource(t, f, "in", fanOut("app"))).Sink(&collector{}).Run(t.Context())
		cle, ok := errors.AsType[*kinesissource.ConsumerLimitError](err)
		if !ok || cle.Consumers != 20 || cle.ConsumerName != "app" {
			t.Fatalf("Run = %v; want a *ConsumerLimitError of app with 20 consumers", err)
		}
		if _, ok := errors.AsType[*types.LimitExceededException](err); !ok {
			t.Errorf("the error does not wrap Kinesis' LimitExceededException: %v", err)
		}
	})
}

func TestFanOutRenewsSubscriptionsWithoutGapOrRepeat(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFanOutStream(t, "in", 2, func(o *kinesisfake.Options) { o.SubscriptionDuration = 7 * time.Second })
		src := newSource(t, f, "in", fanOut("app"))
		sink := &collector{}
		done := produce(t, f, 0, 600, 12, 100*time.Millisecond) // 60s
		if err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool { return sink.len() >= 600 }); err != nil {
			t.Fatal(err)
		}
		<-done
		checkExactlyOnceInOrder(t, 600, sink.data())
		// 60s of 7s subscriptions on 2 shards, renewed at least 5s apart.
		if n := f.Calls("SubscribeToShard"); n < 2*60/12 {
			t.Errorf("%d SubscribeToShard calls in 60s of 7s subscriptions; want them renewed", n)
		}
	})
}

func TestFanOutSurvivesFailingSubscriptions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFanOutStream(t, "in", 2)
		var events, calls atomic.Int64
		f.InjectSubscriptionError(func(string, string) error {
			switch n := events.Add(1); {
			case n%7 == 0:
				return &types.InternalFailureException{Message: aws.String("internal")}
			case n%11 == 0:
				return &types.ResourceInUseException{Message: aws.String("taken over")}
			case n%13 == 0:
				return errors.New("read: connection reset by peer")
			}
			return nil
		})
		f.InjectError(func(op string, _ any) error {
			if op != "SubscribeToShard" {
				return nil
			}
			switch n := calls.Add(1); {
			case n%3 == 0:
				return &types.LimitExceededException{Message: aws.String("Rate exceeded")}
			case n%5 == 0:
				return &types.InternalFailureException{Message: aws.String("internal")}
			}
			return nil
		})
		var throttles, failures atomic.Int64
		src := newSource(t, f, "in", fanOut("app"), func(o *kinesissource.Options) {
			o.OnGetRecords = func(ev kinesissource.GetRecordsEvent) {
				switch {
				case ev.Throttled:
					throttles.Add(1)
				case ev.Err != nil:
					failures.Add(1)
				}
			}
		})
		sink := &collector{}
		done := produce(t, f, 0, 400, 10, 250*time.Millisecond)
		if err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool { return sink.len() >= 400 }); err != nil {
			t.Fatalf("Run = %v", err)
		}
		<-done
		checkExactlyOnceInOrder(t, 400, sink.data())
		if throttles.Load() == 0 || failures.Load() == 0 {
			t.Errorf("%d throttles and %d other failures reported to OnGetRecords; want some of each", throttles.Load(), failures.Load())
		}
	})
}

func TestFanOutStopsWhenItsConsumerIsDeregistered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFanOutStream(t, "in", 2)
		put(t, f, "in", 0, 20, 4)
		src := newSource(t, f, "in", fanOut("app"))
		sink := &collector{}
		errc := make(chan error, 1)
		go func() { errc <- shardflow.Source(src).Sink(sink).Run(t.Context()) }()
		waitFor(t, func() bool { return sink.len() >= 20 })
		if _, err := f.DeregisterStreamConsumer(t.Context(), &kinesis.DeregisterStreamConsumerInput{
			StreamARN: aws.String(kinesisfake.StreamARN("in")), ConsumerName: aws.String("app")}); err != nil {
			t.Fatal(err)
		}
		err := <-errc
		if _, ok := errors.AsType[*kinesissource.ConsumerDeletedError](err); !ok {
			t.Fatalf("Run = %v; want a *ConsumerDeletedError", err)
		}
	})
}

func TestFanOutDeregisterOnClose(t *testing.T) {
	tests := []struct {
		name       string
		existed    bool // the consumer was registered before Run
		deregister bool
		want       []string // consumers after Run
	}{
		{"a consumer Run registered is deregistered", false, true, nil},
		{"a consumer that existed before Run is kept", true, true, []string{"app"}},
		{"without DeregisterOnClose the consumer is kept", false, false, []string{"app"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFanOutStream(t, "in", 1)
				if tc.existed {
					register(t, f, "in", "app")
				}
				put(t, f, "in", 0, 5, 1)
				src := newSource(t, f, "in", func(o *kinesissource.Options) {
					o.EnhancedFanOut = &kinesissource.EnhancedFanOut{ConsumerName: "app", DeregisterOnClose: tc.deregister}
					o.InitialPosition = kinesissource.TrimHorizon()
				})
				sink := &collector{}
				if err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool { return sink.len() >= 5 }); err != nil {
					t.Fatal(err)
				}
				if got := consumers(t, f, "in"); fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Errorf("consumers after Run: %v; want %v", got, tc.want)
				}
			})
		})
	}
}

// A slow pipeline holds the events back at Kinesis: the source reads the
// next event only once it handed the last one's records over, so what it
// has read stays within a few events of what the pipeline took.
func TestFanOutASlowPipelineHoldsEventsBackAtKinesis(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFanOutStream(t, "in", 1)
		// 300 KiB records: three per event (kinesisfake.MaxEventBytes).
		for i := range 60 {
			data := append(fmt.Appendf(nil, "key-0:%d:", i), make([]byte, 300<<10)...)
			if _, err := f.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String("in"), Data: data, PartitionKey: aws.String("key-0")}); err != nil {
				t.Fatal(err)
			}
		}
		var sent atomic.Int64
		f.InjectSubscriptionError(func(string, string) error { sent.Add(1); return nil })
		src := newSource(t, f, "in", fanOut("app"))
		sink := &collector{}
		var worst int64
		pl := shardflow.Source(src, func(o *shardflow.Options) { o.MaxInFlight = 1 }).
			Tap(func(context.Context, shardflow.Record) error {
				time.Sleep(time.Second) // a slow handler: one record a second
				// Events sent beyond those whose records reached the
				// pipeline: the read-ahead.
				if ahead := sent.Load() - int64(sink.len())/3; ahead > worst {
					worst = ahead
				}
				return nil
			}).Sink(sink)
		if err := runUntil(t, pl, func() bool { return sink.len() >= 60 }); err != nil {
			t.Fatal(err)
		}
		// Ahead of the records the sink got: the event being handed over,
		// one in each of the SDK's two decoding goroutines, the one the
		// fake is writing (counted before its write blocks), and the one
		// whose records are in the pipeline. Unbounded buffering would
		// read all 20 at once.
		if worst > 6 {
			t.Errorf("the source read up to %d of 20 events ahead of the pipeline; want at most 6 (no unbounded buffering)", worst)
		}
		if worst < 1 {
			t.Errorf("read-ahead %d: the test measured nothing", worst)
		}
	})
}

func TestFanOutOutageBudget(t *testing.T) {
	tests := []struct {
		name   string
		inject func(f *kinesisfake.Fake)
	}{
		{"SubscribeToShard fails every call", func(f *kinesisfake.Fake) {
			f.InjectError(func(op string, _ any) error {
				if op == "SubscribeToShard" {
					return &types.InternalFailureException{Message: aws.String("internal")}
				}
				return nil
			})
		}},
		{"every subscription breaks before its first event", func(f *kinesisfake.Fake) {
			f.InjectSubscriptionError(func(string, string) error { return errors.New("connection reset by peer") })
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFanOutStream(t, "in", 1)
				tc.inject(f)
				src := newSource(t, f, "in", fanOut("app"), func(o *kinesissource.Options) { o.Retry.Timeout = time.Minute })
				start := time.Now()
				err := shardflow.Source(src).Sink(&collector{}).Run(t.Context())
				if err == nil || !strings.Contains(err.Error(), "budget") {
					t.Fatalf("Run = %v; want the outage budget spent", err)
				}
				if d := time.Since(start); d < time.Minute || d > 2*time.Minute {
					t.Errorf("Run gave up after %v; want after the 1m budget", d)
				}
			})
		})
	}
}

func TestFanOutMetricsCountEventsAndSubscriptions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFanOutStream(t, "in", 2)
		put(t, f, "in", 0, 300, 20)
		r, mp := meterProvider()
		src := newSource(t, f, "in", fanOut("app"), func(o *kinesissource.Options) { o.MeterProvider = mp })
		sink := &collector{}
		got := runCollecting(t, shardflow.Source(src).Sink(sink), r, func() bool { return sink.len() >= 300 })
		if n := total(got, "shardflow.source.records"); n != 300 {
			t.Errorf("%d records counted; want 300", n)
		}
		if n := total(got, "shardflow.source.subscribe.subscriptions"); n != int64(f.Calls("SubscribeToShard")) || n != 2 {
			t.Errorf("%d subscriptions counted; the fake served %d, want 2", n, f.Calls("SubscribeToShard"))
		}
		if n := total(got, "shardflow.source.subscribe.events"); n < 2 {
			t.Errorf("%d events counted; want at least one per shard", n)
		}
		if n := total(got, "shardflow.source.getrecords.calls"); n != 0 {
			t.Errorf("%d GetRecords calls counted; want none", n)
		}
		ids, _ := f.Shards("in")
		for _, id := range ids {
			if v, ok := got[point{"shardflow.source.behind_latest", shardAttrs("in", id)}]; !ok || v != 0 {
				t.Errorf("shard %s: behind_latest %d (%v); want 0 at the tip", id, v, ok)
			}
		}
	})
}
