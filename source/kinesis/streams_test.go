package kinesissource_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/google/go-cmp/cmp"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/internal/logtest"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// testStreams are the streams of the multi-stream tests: name, shards and
// records written to each.
var testStreams = []struct {
	name    string
	shards  int32
	records int
}{
	{"orders", 2, 300},
	{"payments", 1, 100},
	{"refunds", 3, 200},
}

// newStreams creates testStreams on a new fake, with their records.
func newStreams(t *testing.T) (*kinesisfake.Fake, []kinesissource.Stream) {
	t.Helper()
	f, streams := createStreams(t)
	for _, s := range testStreams {
		put(t, f, s.name, 0, s.records, 10)
	}
	return f, streams
}

// createStreams creates testStreams on a new fake, with no records.
func createStreams(t *testing.T) (*kinesisfake.Fake, []kinesissource.Stream) {
	t.Helper()
	f := kinesisfake.New()
	var streams []kinesissource.Stream
	for _, s := range testStreams {
		if _, err := f.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String(s.name), ShardCount: aws.Int32(s.shards)}); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, kinesissource.Stream{Name: s.name})
	}
	return f, streams
}

func newStreamsSource(t *testing.T, client kinesissource.API, streams []kinesissource.Stream, optFns ...func(*kinesissource.Options)) *kinesissource.Source {
	t.Helper()
	src, err := kinesissource.NewStreams(client, streams, optFns...)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// byStream returns the data of the records c got, by Record.Stream.
func (c *collector) byStream() map[string][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][]string{}
	for _, r := range c.recs {
		out[r.Stream] = append(out[r.Stream], string(r.Data))
	}
	return out
}

func TestNewStreamsReadsEveryStreamIntoOnePipeline(t *testing.T) {
	for _, m := range readModes[:2] {
		t.Run(m.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f, streams := newStreams(t)
				store := memory.New()
				src := newStreamsSource(t, f, streams, m.opts, func(o *kinesissource.Options) {
					o.Store = store
					o.InitialPosition = kinesissource.TrimHorizon()
					o.Limit = 40
				})
				if diff := cmp.Diff([]string{"orders", "payments", "refunds"}, src.Streams()); diff != "" {
					t.Errorf("Streams() mismatch (-want +got):\n%s", diff)
				}
				sink := &collector{}
				if err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool { return sink.len() >= 600 }); err != nil {
					t.Fatalf("Run = %v", err)
				}
				got := sink.byStream()
				for _, s := range testStreams {
					checkExactlyOnceInOrder(t, s.records, got[s.name])
					// Each shard's checkpoint is its last record's, under the
					// stream's name.
					ids, _ := f.Shards(s.name)
					cps := store.Checkpoints(s.name)
					if len(cps) != len(ids) {
						t.Errorf("stream %s: %d shards checkpointed; want %d", s.name, len(cps), len(ids))
					}
					for _, id := range ids {
						recs, _ := f.Records(s.name, id)
						if want := aws.ToString(recs[len(recs)-1].SequenceNumber); cps[id].SequenceNumber != want {
							t.Errorf("stream %s: shard %s checkpointed at %q; want %s", s.name, id, cps[id].SequenceNumber, want)
						}
					}
				}
				if len(got) != len(testStreams) {
					t.Errorf("records of streams %v; want only %d", len(got), len(testStreams))
				}
			})
		})
	}
}

// Each stream starts where its Stream says, or where Options says when
// its Stream says nothing.
func TestNewStreamsStartsEachStreamAtItsOwnPosition(t *testing.T) {
	for _, m := range readModes[:2] {
		t.Run(m.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				t0 := time.Now()
				f := kinesisfake.New()
				names := []string{"trim", "default", "stamp"}
				putAll := func(data string) {
					for _, n := range names {
						if _, err := f.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String(n), Data: []byte(data), PartitionKey: aws.String("k")}); err != nil {
							t.Fatal(err)
						}
					}
				}
				for _, n := range names {
					if _, err := f.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String(n), ShardCount: aws.Int32(1)}); err != nil {
						t.Fatal(err)
					}
				}
				putAll("old")
				time.Sleep(time.Minute)
				putAll("mid")
				src := newStreamsSource(t, f, []kinesissource.Stream{
					{Name: "trim", InitialPosition: kinesissource.TrimHorizon()},
					{Name: "default"},
					{Name: "stamp", InitialPosition: kinesissource.AtTimestamp(t0.Add(time.Minute))},
				}, m.opts, func(o *kinesissource.Options) { o.InitialPosition = kinesissource.Latest() })
				sink := &collector{}
				ctx, cancel := context.WithCancel(t.Context())
				errc := make(chan error, 1)
				go func() { errc <- shardflow.Source(src).Sink(sink).Run(ctx) }()
				time.Sleep(5 * time.Second) // every reader is at its tip
				putAll("new")
				time.Sleep(5 * time.Second)
				cancel()
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
				want := map[string][]string{
					"trim":    {"old", "mid", "new"},
					"default": {"new"},
					"stamp":   {"mid", "new"},
				}
				if diff := cmp.Diff(want, sink.byStream()); diff != "" {
					t.Errorf("records by stream mismatch (-want +got):\n%s", diff)
				}
			})
		})
	}
}

func TestNewStreamsRejectsBadStreams(t *testing.T) {
	f := kinesisfake.New()
	many := make([]kinesissource.Stream, kinesissource.MaxStreams+1)
	for i := range many {
		many[i].Name = fmt.Sprintf("s%d", i)
	}
	efo := func(e kinesissource.EnhancedFanOut) *kinesissource.EnhancedFanOut { return &e }
	consumerOf := func(stream string) string { return kinesisfake.StreamARN(stream) + "/consumer/app:1" }
	tests := []struct {
		name    string
		streams []kinesissource.Stream
		opt     func(*kinesissource.Options)
		field   string
	}{
		{"no streams", nil, nil, "streams"},
		{"an empty list of streams", []kinesissource.Stream{}, nil, "streams"},
		{"more than MaxStreams", many, nil, "streams"},
		{"an empty name", []kinesissource.Stream{{Name: "a"}, {Name: ""}}, nil, "streams[1].Name"},
		{"a name given twice", []kinesissource.Stream{{Name: "a"}, {Name: "b"}, {Name: "a"}}, nil, "streams[2].Name"},
		{"a name given once by name and once by ARN", []kinesissource.Stream{{Name: "a"}, {Name: kinesisfake.StreamARN("a")}}, nil, "streams[1].Name"},
		{"an ARN that is not a stream's", []kinesissource.Stream{{Name: "a"}, {Name: "arn:aws:kinesis:us-east-1:1:table/x"}}, nil, "streams[1].Name"},
		{"AT_TIMESTAMP without a time", []kinesissource.Stream{{Name: "a"}, {Name: "b", InitialPosition: kinesissource.AtTimestamp(time.Time{})}}, nil, "streams[1].InitialPosition"},
		{"one consumer ARN for several streams", []kinesissource.Stream{{Name: "a"}, {Name: "b"}}, func(o *kinesissource.Options) {
			o.EnhancedFanOut = efo(kinesissource.EnhancedFanOut{ConsumerARN: consumerOf("a")})
		}, "Options.EnhancedFanOut.ConsumerARN"},
		{"a stream's consumer ARN of another stream", []kinesissource.Stream{{Name: "a"}, {Name: "b", EnhancedFanOut: efo(kinesissource.EnhancedFanOut{ConsumerARN: consumerOf("a")})}}, nil, "streams[1].EnhancedFanOut.ConsumerARN"},
		{"a stream's consumer name Kinesis refuses", []kinesissource.Stream{{Name: "a"}, {Name: "b", EnhancedFanOut: efo(kinesissource.EnhancedFanOut{ConsumerName: "my app"})}}, nil, "streams[1].EnhancedFanOut.ConsumerName"},
		{"a bad option", []kinesissource.Stream{{Name: "a"}}, func(o *kinesissource.Options) { o.Limit = -1 }, "Options.Limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var fns []func(*kinesissource.Options)
			if tc.opt != nil {
				fns = append(fns, tc.opt)
			}
			_, err := kinesissource.NewStreams(f, tc.streams, fns...)
			ce, ok := errors.AsType[*shardflow.ConfigError](err)
			if !ok || ce.Field != tc.field {
				t.Fatalf("NewStreams = %v; want a *shardflow.ConfigError on %s", err, tc.field)
			}
		})
	}
	t.Run("MaxStreams streams, each with a consumer ARN of its own, are valid", func(t *testing.T) {
		streams := make([]kinesissource.Stream, kinesissource.MaxStreams)
		for i := range streams {
			name := fmt.Sprintf("s%d", i)
			streams[i] = kinesissource.Stream{Name: name, EnhancedFanOut: efo(kinesissource.EnhancedFanOut{ConsumerARN: consumerOf(name)})}
		}
		if _, err := kinesissource.NewStreams(f, streams); err != nil {
			t.Fatalf("NewStreams = %v; want no error", err)
		}
	})
	t.Run("New refuses a consumer ARN of another stream", func(t *testing.T) {
		_, err := kinesissource.New(f, "b", func(o *kinesissource.Options) {
			o.EnhancedFanOut = efo(kinesissource.EnhancedFanOut{ConsumerARN: consumerOf("a")})
		})
		if ce, ok := errors.AsType[*shardflow.ConfigError](err); !ok || ce.Field != "Options.EnhancedFanOut.ConsumerARN" {
			t.Fatalf("New = %v; want a *shardflow.ConfigError on Options.EnhancedFanOut.ConsumerARN", err)
		}
	})
}

// A stream that does not exist stops Run with Kinesis' error, naming the
// stream, and the other streams' shards are handed back.
func TestNewStreamsStopsAtAMissingStreamNamingIt(t *testing.T) {
	for _, m := range readModes[:2] {
		t.Run(m.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newStream(t, "in", 2)
				src := newStreamsSource(t, f, []kinesissource.Stream{{Name: "in"}, {Name: "gone"}}, m.opts)
				err := shardflow.Source(src).Sink(&collector{}).Run(t.Context())
				if _, ok := errors.AsType[*types.ResourceNotFoundException](err); !ok || !strings.Contains(err.Error(), `"gone"`) {
					t.Fatalf("Run = %v; want a ResourceNotFoundException naming stream \"gone\"", err)
				}
			})
		})
	}
}

// loadStore is a memory store that records the load the source reports.
type loadStore struct {
	*memory.Store
	mu    sync.Mutex
	loads map[string]*shardLoad // by stream/shard
}

type shardLoad struct{ reads, records, bytes int }

func (s *loadStore) RecordLoad(stream, shardID string, records, bytes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.loads[stream+"/"+shardID]
	if l == nil {
		l = &shardLoad{}
		s.loads[stream+"/"+shardID] = l
	}
	l.reads++
	l.records += records
	l.bytes += bytes
}

var _ shardflow.LoadRecorder = (*loadStore)(nil)

// Every successful read of a shard is reported to a LoadRecorder store,
// with the Kinesis records it returned (a KPL aggregate counts once) and
// their bytes.
func TestTheLoadOfEveryReadIsRecorded(t *testing.T) {
	for _, m := range readModes[:2] {
		t.Run(m.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f, streams := newStreams(t)
				var users []testUserRecord
				for i := range 20 {
					users = append(users, testUserRecord{key: "agg", data: fmt.Sprintf("u%d", i)})
				}
				if _, err := f.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String("payments"), Data: aggregate(users), PartitionKey: aws.String("agg")}); err != nil {
					t.Fatal(err)
				}
				store := &loadStore{Store: memory.New(), loads: map[string]*shardLoad{}}
				var mu sync.Mutex
				events := map[string]*shardLoad{}
				src := newStreamsSource(t, f, streams, m.opts, func(o *kinesissource.Options) {
					o.Store = store
					o.InitialPosition = kinesissource.TrimHorizon()
					o.Limit = 30
					o.OnGetRecords = func(ev kinesissource.GetRecordsEvent) {
						if ev.Err != nil {
							return
						}
						mu.Lock()
						defer mu.Unlock()
						k := ev.Stream + "/" + ev.ShardID
						if events[k] == nil {
							events[k] = &shardLoad{}
						}
						events[k].reads++
						events[k].records += ev.Records
						events[k].bytes += ev.Bytes
					}
				})
				sink := &collector{}
				if err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool { return sink.len() >= 620 }); err != nil {
					t.Fatalf("Run = %v", err)
				}
				want := map[string]shardLoad{}
				for _, s := range testStreams {
					ids, _ := f.Shards(s.name)
					for _, id := range ids {
						recs, _ := f.Records(s.name, id)
						l := shardLoad{records: len(recs)}
						for _, r := range recs {
							l.bytes += len(r.Data)
						}
						want[s.name+"/"+id] = l
					}
				}
				store.mu.Lock()
				mu.Lock()
				defer store.mu.Unlock()
				defer mu.Unlock()
				got := map[string]shardLoad{}
				for k, l := range store.loads {
					if e := events[k]; e == nil || e.reads != l.reads {
						t.Errorf("%s: %d loads recorded; want one per successful read (%v)", k, l.reads, e)
					}
					got[k] = shardLoad{records: l.records, bytes: l.bytes}
				}
				if diff := cmp.Diff(want, got, cmp.AllowUnexported(shardLoad{})); diff != "" {
					t.Errorf("recorded load mismatch (-want +got):\n%s", diff)
				}
			})
		})
	}
}

// leavingInstance is a memory Instance that is a LeaseLeaver: it records
// its calls of Leave, and which leases it still held at each.
type leavingInstance struct {
	*memory.Instance
	store   *memory.Store
	streams []string
	err     error // returned by Leave

	mu        sync.Mutex
	leaves    int
	heldAtEnd []string
}

func (in *leavingInstance) Leave(context.Context) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.leaves++
	for _, s := range in.streams {
		for shard, owner := range in.store.LeaseOwners(s) {
			if owner == in.Owner() {
				in.heldAtEnd = append(in.heldAtEnd, s+"/"+shard)
			}
		}
	}
	return in.err
}

var _ shardflow.LeaseLeaver = (*leavingInstance)(nil)

// A LeaseLeaver store is told once, when the source stops, after every
// lease was released; a failure to leave is logged, and Run still returns
// nil.
func TestTheSourceLeavesOnceAfterReleasingEveryLease(t *testing.T) {
	for _, leaveErr := range []error{nil, errors.New("injected: lease table unreachable")} {
		t.Run(fmt.Sprintf("Leave returns %v", leaveErr), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f, streams := newStreams(t)
				store := memory.New()
				in, err := store.Instance("a")
				if err != nil {
					t.Fatal(err)
				}
				li := &leavingInstance{Instance: in, store: store, streams: []string{"orders", "payments", "refunds"}, err: leaveErr}
				logs := logtest.NewCapture()
				src := newStreamsSource(t, f, streams, func(o *kinesissource.Options) {
					o.Store = li
					o.InitialPosition = kinesissource.TrimHorizon()
					o.Logger = slog.New(logs)
				})
				sink := &collector{}
				if err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool { return sink.len() >= 600 }); err != nil {
					t.Fatalf("Run = %v", err)
				}
				li.mu.Lock()
				defer li.mu.Unlock()
				if li.leaves != 1 {
					t.Errorf("Leave called %d times; want once", li.leaves)
				}
				if len(li.heldAtEnd) != 0 {
					t.Errorf("leases %v still held when the source left; want all released first", li.heldAtEnd)
				}
				const failed = "kinesis.source: leaving the lease group failed; the other instances count this one gone once its leases expire"
				if logs.Has(failed) != (leaveErr != nil) {
					t.Errorf("failure to leave logged: %v; want %v (logged: %q)", logs.Has(failed), leaveErr != nil, logs.Messages())
				}
			})
		})
	}
}

// Ready names the stream that is not ready.
func TestReadyOfSeveralStreamsNamesTheStreamNotReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, streams := createStreams(t)
		var listDown atomic.Bool
		listDown.Store(true)
		f.InjectError(func(op string, in any) error {
			if op == "ListShards" && listDown.Load() && aws.ToString(in.(*kinesis.ListShardsInput).StreamName) == "payments" {
				return &types.InternalFailureException{Message: aws.String("injected")}
			}
			return nil
		})
		src := newStreamsSource(t, f, streams)
		wantNotReady(t, src, `kinesis source of streams ["orders" "payments" "refunds"] is not ready: it is not running`)
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() { errc <- shardflow.Source(src).Sink(&collector{}).Run(ctx) }()
		time.Sleep(2 * time.Second) // ListShards of payments fails and is retried meanwhile
		wantNotReady(t, src, `kinesis source of stream "payments" is not ready: it has not listed the stream's shards yet`)
		listDown.Store(false)
		waitReady(t, src)
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("Run = %v", err)
		}
	})
}

// The metrics of each shard, and the gauge of the shards held, carry
// their stream.
func TestSourceMetricsOfSeveralStreams(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, streams := newStreams(t)
		r, mp := meterProvider()
		src := newStreamsSource(t, f, streams, func(o *kinesissource.Options) {
			o.InitialPosition = kinesissource.TrimHorizon()
			o.MeterProvider = mp
		})
		sink := &collector{}
		got := runCollecting(t, shardflow.Source(src).Sink(sink), r, func() bool { return sink.len() >= 600 })
		for _, s := range testStreams {
			if n := got[point{"shardflow.source.shards.held", "stream=" + s.name}]; n != int64(s.shards) {
				t.Errorf("stream %s: %d shards held; want %d", s.name, n, s.shards)
			}
			ids, _ := f.Shards(s.name)
			var records int64
			for _, id := range ids {
				records += got[point{"shardflow.source.records", shardAttrs(s.name, id)}]
			}
			if records != int64(s.records) {
				t.Errorf("stream %s: %d records counted; want %d", s.name, records, s.records)
			}
		}
	})
}

// MaxStreams streams read by one source under every limit Kinesis has:
// the source keeps them, those of the account (DescribeStreamSummary and
// RegisterStreamConsumer, which every stream's fan-out consumer calls when
// Run starts, and DeregisterStreamConsumer when it ends) included, and
// every record of every stream is read.
func TestMaxStreamsUnderKinesisLimits(t *testing.T) {
	modes := []readMode{readModes[0], {name: "enhanced fan-out, deregistered on close", opts: func(o *kinesissource.Options) {
		o.EnhancedFanOut = &kinesissource.EnhancedFanOut{ConsumerName: "app", DeregisterOnClose: true}
	}}}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := kinesisfake.New(func(o *kinesisfake.Options) { o.Limits = kinesisfake.AWSLimits() })
				// The fake does not limit DeregisterStreamConsumer (5 a
				// second per account): the test counts the calls.
				var mu sync.Mutex
				var deregistered []time.Time
				f.InjectError(func(op string, _ any) error {
					if op == "DeregisterStreamConsumer" {
						mu.Lock()
						deregistered = append(deregistered, time.Now())
						mu.Unlock()
					}
					return nil
				})
				streams := make([]kinesissource.Stream, kinesissource.MaxStreams)
				for i := range streams {
					streams[i].Name = fmt.Sprintf("s%02d", i)
					if _, err := f.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String(streams[i].Name), ShardCount: aws.Int32(1)}); err != nil {
						t.Fatal(err)
					}
					put(t, f, streams[i].Name, 0, 20, 5)
				}
				src := newStreamsSource(t, f, streams, m.opts, func(o *kinesissource.Options) {
					o.InitialPosition = kinesissource.TrimHorizon()
					o.Logger = slog.New(slog.DiscardHandler) // a retried throttle is a warning each
				})
				sink := &collector{}
				if err := runUntil(t, shardflow.Source(src).Sink(sink), func() bool { return sink.len() >= 20*kinesissource.MaxStreams }); err != nil {
					t.Fatalf("Run = %v", err)
				}
				got := sink.byStream()
				for _, s := range streams {
					checkExactlyOnceInOrder(t, 20, got[s.Name])
				}
				t.Logf("throttled: %d ListShards, %d DescribeStreamSummary, %d RegisterStreamConsumer, %d SubscribeToShard, %d GetRecords",
					f.Throttled("ListShards"), f.Throttled("DescribeStreamSummary"), f.Throttled("RegisterStreamConsumer"),
					f.Throttled("SubscribeToShard"), f.Throttled("GetRecords"))
				for _, op := range []string{"ListShards", "DescribeStreamSummary", "RegisterStreamConsumer", "SubscribeToShard", "GetRecords"} {
					if n := f.Throttled(op); n != 0 {
						t.Errorf("%d %s calls throttled; want none: the source keeps the limits", n, op)
					}
				}
				mu.Lock()
				defer mu.Unlock()
				if want := 0; m.name != readModes[0].name {
					want = kinesissource.MaxStreams
					if len(deregistered) != want {
						t.Errorf("%d consumers deregistered; want %d", len(deregistered), want)
					}
				}
				for i := range deregistered {
					if j := i + 5; j < len(deregistered) && deregistered[j].Sub(deregistered[i]) < time.Second {
						t.Errorf("deregistrations %d to %d within %v; Kinesis allows 5 a second", i, j, deregistered[j].Sub(deregistered[i]))
						break
					}
				}
			})
		})
	}
}
