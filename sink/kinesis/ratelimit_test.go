package kinesissink

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"math/big"
	"slices"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/metrictest"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
)

// newLimitedFake returns a fake enforcing Kinesis' write limits per shard
// (1,000 records/s and 1 MiB/s, one second of burst) with stream "out" of n
// shards.
func newLimitedFake(t testing.TB, n int32) *kinesisfake.Fake {
	t.Helper()
	f := kinesisfake.New(func(o *kinesisfake.Options) {
		o.Limits = &kinesisfake.Limits{ShardWriteRecordsPerSecond: ShardRecordsPerSecond, ShardWriteBytesPerSecond: ShardBytesPerSecond}
	})
	if _, err := f.CreateStream(context.Background(), &kinesis.CreateStreamInput{StreamName: aws.String(testStream), ShardCount: aws.Int32(n)}); err != nil {
		t.Fatal(err)
	}
	return f
}

// shardHashKey returns an explicit hash key in the middle of shard i of a
// stream of n equal shards.
func shardHashKey(i, n int) string {
	step := new(big.Int).Div(new(big.Int).Lsh(big.NewInt(1), 128), big.NewInt(int64(n)))
	k := new(big.Int).Mul(step, big.NewInt(int64(i)))
	return k.Add(k, new(big.Int).Rsh(step, 1)).String()
}

func TestRateLimitFillsEveryShardToItsLimitWithoutThrottling(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		size   int // data bytes per record
		opts   func(*Options)
		binds  string
		record int // bytes per record as Kinesis counts a plain one
	}{
		// Aggregates of 1 KiB records: 1 MiB/s binds (20 aggregates/s).
		{name: "aggregated", size: 1000, opts: func(o *Options) { o.Aggregate = true }, binds: "bytes"},
		// Plain 100-byte records, one per key per request: 1,000/s binds.
		{name: "ordered", size: 100, opts: func(o *Options) { o.Ordered = true }, binds: "records"},
		{name: "ordered aggregated", size: 1000, opts: func(o *Options) { o.Ordered = true; o.Aggregate = true }, binds: "bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const shards = 4
				f := newLimitedFake(t, shards)
				p, err := NewProducer(f, testStream, tc.opts, quietOpts)
				if err != nil {
					t.Fatal(err)
				}
				data := make([]byte, tc.size)
				start := time.Now()
				// As fast as it can for 5 seconds: Put blocks only when the
				// buffer is full, which is when virtual time moves on.
				for i := 0; time.Since(start) < 5*time.Second; i++ {
					if err := p.Put(t.Context(), data, "key-"+strconv.Itoa(i)); err != nil {
						t.Fatal(err)
					}
				}
				if err := p.Close(t.Context()); err != nil {
					t.Fatalf("Close = %v", err)
				}
				elapsed := time.Since(start).Seconds()
				stats, err := f.ShardStats(testStream)
				if err != nil {
					t.Fatal(err)
				}
				// A shard takes one second's worth at once, then its rate:
				// that is the most it could have written in elapsed.
				recBudget, byteBudget := (1+elapsed)*ShardRecordsPerSecond, (1+elapsed)*ShardBytesPerSecond
				written, throttled := 0, 0
				for _, s := range stats {
					share := float64(s.WrittenBytes) / byteBudget
					if tc.binds == "records" {
						share = float64(s.WrittenRecords) / recBudget
					}
					t.Logf("%s: %d entries, %d bytes written in %.1fs (%.1f%% of the %s limit), %d throttled",
						s.ShardID, s.WrittenRecords, s.WrittenBytes, elapsed, 100*share, tc.binds, s.ThrottledRecords)
					if share < 0.95 {
						t.Errorf("%s wrote %.1f%% of its %s limit, want at least 95%%", s.ShardID, 100*share, tc.binds)
					}
					if share > 1 {
						t.Errorf("%s wrote %.1f%% of its %s limit: more than Kinesis allows", s.ShardID, 100*share, tc.binds)
					}
					written += s.WrittenRecords
					throttled += s.ThrottledRecords
				}
				if rate := float64(throttled) / float64(written+throttled); rate >= 0.01 {
					t.Errorf("%d of %d entries throttled (%.2f%%), want less than 1%%", throttled, written+throttled, 100*rate)
				}
			})
		})
	}
}

func TestAHotKeyIsHeldToItsShardsBudgetAndOtherShardsAreNot(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const shards = 4
		f := newLimitedFake(t, shards)
		reader, mp := metrictest.NewReader()
		p, err := NewProducer(f, testStream, func(o *Options) { o.Aggregate = true; o.MeterProvider = mp }, quietOpts)
		if err != nil {
			t.Fatal(err)
		}
		// 3 MiB for shard 0 (three seconds of its limit, one of them the
		// burst), and 300 KiB for each other shard, put hot records first.
		data := make([]byte, 10<<10)
		var mu sync.Mutex
		var hotLast, coldLast time.Duration
		start := time.Now()
		done := func(hot bool) func(Result) {
			return func(r Result) {
				if r.Err != nil {
					t.Errorf("record failed: %v", r.Err)
				}
				mu.Lock()
				defer mu.Unlock()
				if hot {
					hotLast = max(hotLast, time.Since(start))
				} else {
					coldLast = max(coldLast, time.Since(start))
				}
			}
		}
		for i := range 300 {
			if err := p.PutEntry(t.Context(), Entry{Data: data, PartitionKey: "hot", ExplicitHashKey: shardHashKey(0, shards)}, done(true)); err != nil {
				t.Fatal(err)
			}
			if i%10 == 0 {
				for s := 1; s < shards; s++ {
					if err := p.PutEntry(t.Context(), Entry{Data: data, PartitionKey: "cold", ExplicitHashKey: shardHashKey(s, shards)}, done(false)); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		if err := p.Close(t.Context()); err != nil {
			t.Fatalf("Close = %v", err)
		}
		// The other shards are within their burst: nothing holds them back
		// past the linger.
		if coldLast > time.Second {
			t.Errorf("the other shards' last record was written after %v, want within the 500ms linger: the hot shard held them back", coldLast)
		}
		// 3 MiB at 1 MiB/s after a 1 MiB burst: two seconds at least.
		if hotLast < 1900*time.Millisecond {
			t.Errorf("the hot shard's last record was written after %v, want at least 1.9s (3 MiB at 1 MiB/s after a 1 MiB burst)", hotLast)
		}
		stats, err := f.ShardStats(testStream)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range stats {
			if s.ThrottledRecords > 0 {
				t.Errorf("%s: %d entries throttled, want none", s.ShardID, s.ThrottledRecords)
			}
		}
		points := metrictest.Collect(t, reader)
		limited := metrictest.Total(points, metricRateLimited)
		if limited < 150 || limited > 300 {
			t.Errorf("%s = %v, want the hot records beyond the first second's budget (about 200 of 300), and no other", metricRateLimited, limited)
		}
	})
}

func TestLimiterBuckets(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(0.5) // 500 records/s, 512 KiB/s, 0.9 s of burst
		now := time.Now()
		a := l.allowance("s1", now)
		if a.records != 450 || a.bytes != 471859 || !a.whole {
			t.Fatalf("a new shard's allowance = %+v, want a full bucket of 450 records and 0.9*512 KiB", a)
		}
		// A 2 MiB record may go when the bucket is full, into debt.
		if !a.admits(0, 0, 2<<20) {
			t.Error("a full bucket does not admit one record larger than itself")
		}
		l.charge("s1", 1, 2<<20, now)
		if a := l.allowance("s1", now); a.admits(0, 0, 1) {
			t.Errorf("after a 2 MiB record the allowance is %+v, want nothing", a)
		}
		// The debt is 2 MiB - 0.9*512 KiB below zero: one byte needs 3.1 s
		// at 512 KiB/s.
		if w := l.wait("s1", 1, 1, now); w < 3100*time.Millisecond || w > 3102*time.Millisecond {
			t.Errorf("wait for one byte after the debt = %v, want 3.1s", w)
		}
		// Reserved entries count against the allowance until charged.
		l.reserve("s2", 0, 0) // no bucket yet: nothing to reserve in
		_ = l.allowance("s2", now)
		l.reserve("s2", 100, 100<<10)
		if a := l.allowance("s2", now); a.records != 350 || a.bytes != 471859-100<<10 || a.whole {
			t.Errorf("allowance with 100 entries reserved = %+v, want 350 records, 100 KiB less, not whole", a)
		}
		l.chargeReserved("s2", 100, 100<<10, now)
		if a := l.allowance("s2", now); a.records != 350 || a.bytes != 471859-100<<10 {
			t.Errorf("allowance once the reserved entries are charged = %+v, want 350 records, 100 KiB less", a)
		}
		time.Sleep(time.Second)
		if a := l.allowance("s2", time.Now()); a.records != 450 || a.bytes != 471859 {
			t.Errorf("allowance a second later = %+v, want full again", a)
		}
		// A reshard drops the buckets of closed shards.
		l.remap(&shardMap{all: map[string]shardRange{"s1": {id: "s1"}, "s2": {id: "s2", open: true}}})
		if _, ok := l.buckets["s1"]; ok {
			t.Error("the bucket of a closed shard is kept after a new shard map")
		}
		if _, ok := l.buckets["s2"]; !ok {
			t.Error("the bucket of an open shard is dropped after a new shard map")
		}
		if newLimiter(0) != nil || newLimiter(-1) != nil {
			t.Error("newLimiter of a share <= 0 is not nil (no limit)")
		}
		if a := (*limiter)(nil).allowance("s1", now); a != unlimited {
			t.Errorf("allowance without a limiter = %+v, want unlimited", a)
		}
	})
}

// A share so small that 0.9 s of it is less than one record still sends:
// one record per 1/(share*1,000) seconds.
func TestATinyRateLimitStillSends(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newLimitedFake(t, 1)
		p, err := NewProducer(f, testStream, func(o *Options) {
			o.Ordered = true
			o.RateLimit = 0.0005 // half a record a second
			o.Logger = slog.New(slog.DiscardHandler)
		})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			if err := p.Put(t.Context(), []byte("x"), "k"+strconv.Itoa(i)); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if err := p.Flush(ctx); err != nil {
			t.Fatalf("Flush: %v; want the 3 records written at half a record a second", err)
		}
		if took := time.Since(start); took < 4*time.Second {
			t.Errorf("3 records written in %v (virtual) at half a record a second; want about 4s", took)
		}
		if err := p.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
	})
}

func TestRateLimitOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		opts    func(*Options)
		want    float64 // settings.rateLimit
		wantErr bool
	}{
		{"aggregating: default 100%", func(o *Options) { o.Aggregate = true }, 1, false},
		{"ordered: default 100%", func(o *Options) { o.Ordered = true }, 1, false},
		{"plain: no limit by default", func(o *Options) {}, 0, false},
		{"negative: no limit", func(o *Options) { o.Aggregate = true; o.RateLimit = -1 }, 0, false},
		{"plain, negative: no limit", func(o *Options) { o.RateLimit = -1 }, 0, false},
		{"a share", func(o *Options) { o.Aggregate = true; o.RateLimit = 0.8 }, 0.8, false},
		{"the KPL's default as a share", func(o *Options) { o.Ordered = true; o.RateLimit = 1.5 }, 1.5, false},
		{"a percentage", func(o *Options) { o.Aggregate = true; o.RateLimit = 150 }, 0, true},
		{"NaN", func(o *Options) { o.Aggregate = true; o.RateLimit = math.NaN() }, 0, true},
		{"infinite", func(o *Options) { o.Aggregate = true; o.RateLimit = math.Inf(1) }, 0, true},
		{"plain mode cannot predict shards", func(o *Options) { o.RateLimit = 1 }, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var o Options
			tc.opts(&o)
			s, err := o.resolve()
			if tc.wantErr {
				if ce, ok := errors.AsType[*shardflow.ConfigError](err); !ok || ce.Field != "Options.RateLimit" {
					t.Errorf("resolve = %v, want a *shardflow.ConfigError for Options.RateLimit", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("resolve = %v", err)
			}
			if s.rateLimit != tc.want {
				t.Errorf("rate limit = %v, want %v", s.rateLimit, tc.want)
			}
		})
	}
}

// quietOpts keeps the logs of a test out of its output.
func quietOpts(o *Options) { o.Logger = slog.New(slog.DiscardHandler) }

func TestASplitDropsTheParentsBudgetAndEachChildGetsItsOwn(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newLimitedFake(t, 1)
		p, err := NewProducer(f, testStream, func(o *Options) { o.Aggregate = true }, quietOpts)
		if err != nil {
			t.Fatal(err)
		}
		data := make([]byte, 1000)
		put := func(n int) {
			for i := range n {
				if err := p.Put(t.Context(), data, "key-"+strconv.Itoa(i)); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.Flush(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		put(2000) // 2 MB: the parent's budget holds some back
		if _, err := f.SplitShard(t.Context(), &kinesis.SplitShardInput{StreamName: aws.String(testStream),
			ShardToSplit: aws.String("shardId-000000000000"), NewStartingHashKey: aws.String(shardHashKey(1, 2))}); err != nil {
			t.Fatal(err)
		}
		put(4000) // 4 MB over the two children
		if err := p.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		p.e.mu.Lock()
		var ids []string
		for id := range p.e.lim.buckets {
			ids = append(ids, id)
		}
		p.e.mu.Unlock()
		slices.Sort(ids)
		if want := []string{"shardId-000000000001", "shardId-000000000002"}; !slices.Equal(ids, want) {
			t.Errorf("budgets kept for %v, want the children's only, %v", ids, want)
		}
		stats, err := f.ShardStats(testStream)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range stats {
			if s.ThrottledRecords > 0 {
				t.Errorf("%s: %d entries throttled, want none", s.ShardID, s.ThrottledRecords)
			}
		}
	})
}
