package kinesissink

import (
	"bytes"
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow/internal/kpl"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
)

// userRec is a user record as a reader sees it after de-aggregation.
type userRec struct {
	shard, pk, ehk string
	data           string
}

// minimalDecode de-aggregates a KPL record independently of package kpl,
// straight from the format description: magic F3 89 9A C2, a protobuf
// AggregatedRecord (1: partition key table, 2: explicit hash key table,
// 3: records, each 1: key index, 2: hash key index, 3: data), then the MD5
// of the protobuf bytes. ok is false for anything that is not a valid
// aggregate.
func minimalDecode(b []byte) (recs []userRec, ok bool) {
	if len(b) < 20 || !bytes.Equal(b[:4], []byte{0xF3, 0x89, 0x9A, 0xC2}) {
		return nil, false
	}
	body, sum := b[4:len(b)-16], b[len(b)-16:]
	if s := md5.Sum(body); !bytes.Equal(s[:], sum) {
		return nil, false
	}
	varint := func(b []byte, i *int) uint64 {
		var v uint64
		for shift := 0; *i < len(b); shift += 7 {
			c := b[*i]
			*i++
			v |= uint64(c&0x7f) << shift
			if c < 0x80 {
				return v
			}
		}
		ok = false
		return 0
	}
	field := func(b []byte, i *int) []byte {
		n := int(varint(b, i))
		if n < 0 || *i+n > len(b) {
			ok = false
			return nil
		}
		v := b[*i : *i+n]
		*i += n
		return v
	}
	ok = true
	var pks, ehks []string
	type raw struct {
		pk, ehk int
		data    []byte
	}
	var raws []raw
	for i := 0; i < len(body) && ok; {
		switch varint(body, &i) {
		case 1<<3 | 2:
			pks = append(pks, string(field(body, &i)))
		case 2<<3 | 2:
			ehks = append(ehks, string(field(body, &i)))
		case 3<<3 | 2:
			rb := field(body, &i)
			r := raw{ehk: -1}
			for j := 0; j < len(rb) && ok; {
				switch varint(rb, &j) {
				case 1 << 3:
					r.pk = int(varint(rb, &j))
				case 2 << 3:
					r.ehk = int(varint(rb, &j))
				case 3<<3 | 2:
					r.data = field(rb, &j)
				default:
					return nil, false
				}
			}
			raws = append(raws, r)
		default:
			return nil, false
		}
	}
	for _, r := range raws {
		if r.pk >= len(pks) || r.ehk >= len(ehks) {
			return nil, false
		}
		u := userRec{pk: pks[r.pk], data: string(r.data)}
		if r.ehk >= 0 {
			u.ehk = ehks[r.ehk]
		}
		recs = append(recs, u)
	}
	return recs, ok
}

// userRecords de-aggregates what the fake stored, checking that package kpl
// and the minimal decoder agree, and returns the user records per shard in
// order, and how many Kinesis records were aggregates. With ranges, it reads
// as a KCL reader does (AggregatorUtil.deaggregate): an aggregate with any
// member whose hash key lies outside the range of the shard it is on is
// dropped whole.
func userRecords(t testing.TB, f *kinesisfake.Fake, ranges *shardMap) (out []userRec, aggregates int) {
	t.Helper()
	for _, s := range storedRecords(t, f) {
		mine, ok := minimalDecode(s.Data)
		theirs, err := kpl.Decode(s.Data)
		if ok != (err == nil) {
			t.Fatalf("record %s: the minimal decoder says aggregate=%v, package kpl says %v", aws.ToString(s.SequenceNumber), ok, err)
		}
		if !ok {
			out = append(out, userRec{shard: s.shard, pk: aws.ToString(s.PartitionKey), data: string(s.Data)})
			continue
		}
		aggregates++
		if len(mine) != len(theirs) {
			t.Fatalf("decoders disagree: %d and %d records", len(mine), len(theirs))
		}
		stray := false
		for i, u := range mine {
			if u.pk != theirs[i].PartitionKey || u.ehk != theirs[i].ExplicitHashKey || u.data != string(theirs[i].Data) {
				t.Fatalf("decoders disagree on record %d: %+v and %+v", i, u, theirs[i])
			}
			if ranges != nil {
				h := hashPartitionKey(u.pk)
				if u.ehk != "" {
					h, _ = parseHashKey(u.ehk)
				}
				if in, _ := ranges.holds(s.shard, h); !in {
					stray = true
				}
			}
		}
		if stray {
			continue
		}
		for _, u := range mine {
			u.shard = s.shard
			out = append(out, u)
		}
	}
	return out, aggregates
}

// inversions counts, per partition key, records read after a record of the
// same key put later. Data is "<key>/<n>" with n counting up per key.
func inversions(t testing.TB, recs []userRec) int {
	t.Helper()
	last := make(map[string]int)
	bad := 0
	for _, r := range recs {
		key, n, _ := strings.Cut(r.data, "/")
		i, err := strconv.Atoi(n)
		if err != nil {
			t.Fatalf("unexpected data %q", r.data)
		}
		if prev, ok := last[key]; ok && i < prev {
			bad++
		}
		last[key] = max(last[key], i)
	}
	return bad
}

// perShardClient tracks how many requests carry entries of each shard at a
// time.
type perShardClient struct {
	*kinesisfake.Fake
	m        *shardMap
	mu       sync.Mutex
	inFlight map[string]int
	maxPer   int
}

func (c *perShardClient) PutRecords(ctx context.Context, in *kinesis.PutRecordsInput, optFns ...func(*kinesis.Options)) (*kinesis.PutRecordsOutput, error) {
	shards := map[string]bool{}
	for _, e := range in.Records {
		h := hashPartitionKey(aws.ToString(e.PartitionKey))
		if e.ExplicitHashKey != nil {
			h, _ = parseHashKey(*e.ExplicitHashKey)
		}
		shards[c.m.shardOf(h)] = true
	}
	c.mu.Lock()
	for s := range shards {
		c.inFlight[s]++
		c.maxPer = max(c.maxPer, c.inFlight[s])
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		for s := range shards {
			c.inFlight[s]--
		}
		c.mu.Unlock()
	}()
	// Let other requests start meanwhile.
	time.Sleep(time.Millisecond)
	return c.Fake.PutRecords(ctx, in, optFns...)
}

func TestOrderedModeKeepsPerKeyOrderUnderPartialFailures(t *testing.T) {
	t.Parallel()
	const keys, perKey = 40, 60
	tests := []struct {
		name      string
		ordered   bool
		aggregate bool
	}{
		{"ordered", true, false},
		{"ordered and aggregated", true, true},
		{"unordered, to show the failures do reorder", false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 4)
				m, err := loadShardMap(t.Context(), f, testStream)
				if err != nil {
					t.Fatal(err)
				}
				rng := rand.New(rand.NewPCG(1, 2))
				failures, entries := 0, 0
				f.FailEntries(func(string, types.PutRecordsRequestEntry) string {
					entries++
					if rng.Float64() < 0.3 {
						failures++
						return []string{"ProvisionedThroughputExceededException", "InternalFailure"}[failures%2]
					}
					return ""
				})
				c := &perShardClient{Fake: f, m: m, inFlight: map[string]int{}}
				p, err := NewProducer(c, testStream, func(o *Options) {
					o.Ordered = tc.ordered
					o.Aggregate = tc.aggregate
					o.AggregateMaxBytes = 400 // a handful of records per aggregate
					o.Retry.MaxAttempts = 100
					o.MaxRequestEntries = 25
					o.Linger = -1
				})
				if err != nil {
					t.Fatal(err)
				}
				for n := range perKey {
					for k := range keys {
						key := fmt.Sprintf("key-%d", k)
						if err := p.Put(t.Context(), fmt.Appendf(nil, "%s/%d", key, n), key); err != nil {
							t.Fatal(err)
						}
					}
				}
				if err := p.Close(t.Context()); err != nil {
					t.Fatal(err)
				}
				recs, aggs := userRecords(t, f, nil)
				if len(recs) != keys*perKey {
					t.Fatalf("%d records read, want %d", len(recs), keys*perKey)
				}
				if failures < entries/5 {
					t.Fatalf("only %d injected failures of %d entries sent", failures, entries)
				}
				if tc.aggregate && aggs == 0 {
					t.Error("no aggregated record was written")
				}
				bad := inversions(t, recs)
				if tc.ordered {
					if bad != 0 {
						t.Errorf("%d same-key inversions, want 0", bad)
					}
					if c.maxPer > 1 {
						t.Errorf("up to %d requests in flight for one shard, want 1", c.maxPer)
					}
				} else if bad == 0 {
					t.Error("no inversion without Ordered: the test would not notice one")
				}
			})
		})
	}
}

func TestAggregatesDecodeAndStayWithinTheirShardAndSize(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 4)
		var log callLog
		f.InjectError(func(op string, in any) error { log.hook(op, in); return nil })
		const limit = 2000
		p, err := NewProducer(f, testStream, func(o *Options) {
			o.Aggregate = true
			o.AggregateMaxBytes = limit
		})
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(3, 4))
		want := make(map[string]string)
		const n = 3000
		for i := range n {
			key := fmt.Sprintf("user-%d", rng.IntN(500))
			data := fmt.Sprintf("%s/%d/%s", key, i, strings.Repeat("x", rng.IntN(300)))
			ent := Entry{Data: []byte(data), PartitionKey: key}
			if i%50 == 0 {
				// A few explicit hash keys, and a record too large to share.
				ent.ExplicitHashKey = strconv.Itoa(i)
			}
			if i == 77 {
				ent.Data = append(ent.Data, make([]byte, limit)...)
				data = string(ent.Data)
			}
			want[data] = key
			if err := p.PutEntry(t.Context(), ent, nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		m, _ := loadShardMap(t.Context(), f, testStream)
		recs, aggs := userRecords(t, f, nil)
		if aggs < n/20 {
			t.Errorf("%d aggregates for %d records", aggs, n)
		}
		got := make(map[string]string)
		for _, r := range recs {
			if _, dup := got[r.data]; dup {
				t.Errorf("record %.20q read twice", r.data)
			}
			got[r.data] = r.pk
			h := hashPartitionKey(r.pk)
			if r.ehk != "" {
				h, _ = parseHashKey(r.ehk)
			}
			if in, _ := m.holds(r.shard, h); !in {
				t.Errorf("record %.20q with key %s is in shard %s, outside its range", r.data, r.pk, r.shard)
			}
		}
		if len(got) != len(want) {
			t.Errorf("%d distinct records read, want %d", len(got), len(want))
		}
		for data, key := range want {
			if got[data] != key {
				t.Errorf("record %.20q: key %q, want %q", data, got[data], key)
			}
		}
		for _, s := range storedRecords(t, f) {
			if size := len(s.Data) + len(aws.ToString(s.PartitionKey)); kpl.IsAggregated(s.Data) && size > limit {
				t.Errorf("aggregate of %d bytes, limit %d", size, limit)
			}
		}
	})
}

func TestReshardingRefreshesTheShardMapAndResendsStrayAggregatedRecords(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		p, err := NewProducer(f, testStream, func(o *Options) {
			o.Aggregate = true
			o.Ordered = true
			o.Linger = -1
		})
		if err != nil {
			t.Fatal(err)
		}
		put := func(from, to int) {
			for i := from; i < to; i++ {
				key := fmt.Sprintf("key-%d", i%30)
				if err := p.Put(t.Context(), fmt.Appendf(nil, "%s/%d", key, i), key); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.Flush(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		put(0, 300)
		// Split the only shard in the middle: the producer's map is stale
		// and its next aggregates land on one child only.
		if _, err := f.SplitShard(t.Context(), &kinesis.SplitShardInput{StreamName: aws.String(testStream),
			ShardToSplit: aws.String("shardId-000000000000"), NewStartingHashKey: aws.String("170141183460469231731687303715884105728")}); err != nil {
			t.Fatal(err)
		}
		listsBefore := f.Calls("ListShards")
		put(300, 900)
		if err := p.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		if f.Calls("ListShards") == listsBefore {
			t.Error("the shard map was not refreshed after records landed on an unexpected shard")
		}
		m, _ := loadShardMap(t.Context(), f, testStream)
		recs, _ := userRecords(t, f, m) // a KCL reader drops records outside their shard's range
		got := make(map[string]int)
		for _, r := range recs {
			got[r.data]++
		}
		for i := range 900 {
			data := fmt.Sprintf("key-%d/%d", i%30, i)
			if got[data] != 1 {
				t.Errorf("record %s read %d times, want 1", data, got[data])
			}
		}
		if bad := inversions(t, recs); bad != 0 {
			t.Errorf("%d same-key inversions", bad)
		}
	})
}

func TestProducerCloseReportsWhatItCouldNotSend(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := &slowClient{Fake: f, d: time.Hour}
		p, _ := NewProducer(c, testStream, func(o *Options) { o.MaxRequestEntries = 10; o.MaxInFlight = 1 })
		for i := range 25 {
			if err := p.Put(t.Context(), []byte(recData(i)), "k"); err != nil {
				t.Fatal(err)
			}
		}
		var got Result
		if err := p.PutEntry(t.Context(), Entry{Data: []byte("cb"), PartitionKey: "k"}, func(r Result) { got = r }); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		err := p.Close(ctx)
		be, ok := errors.AsType[*BatchError](err)
		if !ok || be.Failed != 25 || len(be.Errors) != 25 {
			t.Fatalf("Close = %v; want a *BatchError of 25 records", err)
		}
		if !errors.Is(err, ErrClosed) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Close error %v does not wrap ErrClosed and the deadline", err)
		}
		if !errors.Is(got.Err, ErrClosed) {
			t.Errorf("callback result %+v, want a failure wrapping ErrClosed", got)
		}
		if err := p.Put(t.Context(), []byte("x"), "k"); !errors.Is(err, ErrClosed) {
			t.Errorf("Put after Close = %v, want ErrClosed", err)
		}
		if err := p.Close(t.Context()); err == nil || errors.As(err, &be) {
			t.Errorf("second Close = %v; want the first one's error without the failures it reported", err)
		}
	})
}

func TestProducerFlushReportsFailuresOnce(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.FailEntries(func(_ string, e types.PutRecordsRequestEntry) string {
			if string(e.Data) == "bad" {
				return "AccessDeniedException"
			}
			return ""
		})
		p, _ := NewProducer(f, testStream)
		var res Result
		_ = p.Put(t.Context(), []byte("bad"), "k")
		_ = p.PutEntry(t.Context(), Entry{Data: []byte("good"), PartitionKey: "k"}, func(r Result) { res = r })
		err := p.Flush(t.Context())
		be, ok := errors.AsType[*BatchError](err)
		if !ok || be.Failed != 1 || be.Errors[0].ErrorCode != "AccessDeniedException" || be.Errors[0].Attempts != 1 {
			t.Fatalf("Flush = %v; want a *BatchError of 1 AccessDenied record after 1 attempt", err)
		}
		if res.Err != nil || res.ShardID != "shardId-000000000000" || res.SequenceNumber == "" {
			t.Errorf("callback result %+v; want the shard and sequence number", res)
		}
		if err := p.Flush(t.Context()); err != nil {
			t.Errorf("second Flush = %v, want nil: the failure was reported", err)
		}
		if err := p.Close(t.Context()); err != nil {
			t.Errorf("Close = %v", err)
		}
	})
}
