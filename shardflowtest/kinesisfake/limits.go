package kinesisfake

import (
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
)

// Limits are the rate limits of Kinesis the fake enforces, given in
// Options.Limits. Each field is a rate; zero (or negative) leaves it
// unenforced, so a test turns on exactly the limits it studies, or all of
// them with AWSLimits. The values AWS documents are in AWSLimits; the
// sources are the Kinesis API reference of each operation and the
// developer guide's "Quotas and limits" page.
//
// Two models are used. Data rates (records and bytes) are token buckets,
// refilled continuously at the rate and holding at most one second's
// worth: a writer idle for a second may send a burst of a full second's
// allowance at once, as Kinesis allows, and after it the rate itself. Call
// rates are sliding windows: at most N calls of any one second are served.
//
// Errors are those Kinesis returns: a shard's rates refuse with
// *types.ProvisionedThroughputExceededException, "Rate exceeded for shard
// shardId-000000000000 in stream s under account 000000000000." (in a
// PutRecords result entry, ErrorCode "ProvisionedThroughputExceededException"
// and that ErrorMessage, the other entries being written); control-plane
// rates refuse with *types.LimitExceededException.
type Limits struct {
	// ShardWriteRecordsPerSecond is how many records a shard accepts per
	// second, PutRecord calls and PutRecords entries together. AWS: 1,000
	// (PutRecords, PutRecord API reference).
	ShardWriteRecordsPerSecond int
	// ShardWriteBytesPerSecond is how many bytes a shard accepts per
	// second, counting each record's data and partition key, as Kinesis
	// does. A record larger than one second's worth is never accepted.
	// AWS: 1 MiB (PutRecords, PutRecord API reference).
	ShardWriteBytesPerSecond int

	// GetRecordsCallsPerSecond is how many GetRecords calls a shard serves
	// in any second, every reader together. AWS: 5 (GetRecords API
	// reference).
	GetRecordsCallsPerSecond int
	// ShardReadBytesPerSecond is the rate of record bytes (data and
	// partition keys) a shard returns to all GetRecords callers together.
	// A call may return more than what is left (up to
	// GetRecordsMaxBytes): the allowance then goes negative, and calls are
	// refused until it is paid back at this rate (a call that returns
	// 10 MiB holds the shard's readers back for about 5 seconds). AWS:
	// 2 MiB (GetRecords API reference).
	ShardReadBytesPerSecond int
	// GetRecordsMaxBytes is the most record bytes one GetRecords call
	// returns (at least one record, whatever its size). This is a size
	// limit, not a rate: the call returns fewer records, no error. AWS:
	// 10 MiB (GetRecords API reference).
	GetRecordsMaxBytes int
	// FanOutBytesPerSecond is the rate at which a shard's records are
	// pushed to each consumer's subscription, whatever the other consumers
	// and pollers read. AWS: 2 MiB (SubscribeToShard, RegisterStreamConsumer
	// API reference).
	FanOutBytesPerSecond int

	// GetShardIteratorCallsPerSecond is how many GetShardIterator calls a
	// shard serves in any second; more fail with
	// ProvisionedThroughputExceededException. AWS: 5 per open shard
	// (GetShardIterator API reference).
	GetShardIteratorCallsPerSecond int
	// ListShardsCallsPerSecond is how many ListShards calls a stream
	// serves in any second; more fail with LimitExceededException. AWS:
	// 1,000 per stream (ListShards API reference).
	ListShardsCallsPerSecond int
	// DescribeStreamSummaryCallsPerSecond is how many
	// DescribeStreamSummary calls the account (the whole fake) serves in
	// any second; more fail with LimitExceededException. AWS: 20 per
	// account (DescribeStreamSummary API reference).
	DescribeStreamSummaryCallsPerSecond int
	// RegisterStreamConsumerCallsPerSecond is how many
	// RegisterStreamConsumer calls the account (the whole fake) serves in
	// any second; more fail with LimitExceededException. AWS: 5 per
	// account (RegisterStreamConsumer API reference).
	RegisterStreamConsumerCallsPerSecond int
	// SubscribeToShardCallsPerSecond is how many SubscribeToShard calls
	// one consumer may make for one shard in any second, failed ones
	// included; more fail with LimitExceededException. (Separately, and
	// always, a call within ResubscribeInterval of a successful one fails
	// with ResourceInUseException.) AWS: 1 per consumer per shard
	// (SubscribeToShard API reference).
	SubscribeToShardCallsPerSecond int
}

// AWSLimits returns the limits of a provisioned Kinesis data stream as AWS
// documents them, every one enforced. A test may change fields of the
// result (zero removes one) before it passes it in Options.Limits.
func AWSLimits() *Limits {
	return &Limits{
		ShardWriteRecordsPerSecond:           1000,
		ShardWriteBytesPerSecond:             1 << 20,
		GetRecordsCallsPerSecond:             MaxGetRecordsPerSecond,
		ShardReadBytesPerSecond:              ShardReadBytesPerSecond,
		GetRecordsMaxBytes:                   MaxGetRecordsBytes,
		FanOutBytesPerSecond:                 FanOutBytesPerSecond,
		GetShardIteratorCallsPerSecond:       5,
		ListShardsCallsPerSecond:             1000,
		DescribeStreamSummaryCallsPerSecond:  20,
		RegisterStreamConsumerCallsPerSecond: 5,
		SubscribeToShardCallsPerSecond:       1,
	}
}

// resolveLimits returns the limits a fake enforces: o.Limits, with the read
// limits of AWSLimits where o.ReadLimits asks for them and o.Limits leaves
// them unset.
func resolveLimits(o *Options) Limits {
	var l Limits
	if o.Limits != nil {
		l = *o.Limits
	}
	if o.ReadLimits {
		aws := AWSLimits()
		set := func(v *int, def int) {
			if *v <= 0 {
				*v = def
			}
		}
		set(&l.GetRecordsCallsPerSecond, aws.GetRecordsCallsPerSecond)
		set(&l.ShardReadBytesPerSecond, aws.ShardReadBytesPerSecond)
		set(&l.GetRecordsMaxBytes, aws.GetRecordsMaxBytes)
		set(&l.FanOutBytesPerSecond, aws.FanOutBytesPerSecond)
	}
	return l
}

// bucket is a token bucket of integer nano-tokens (tokens × 1e9), so that
// refilling at rate r for d nanoseconds adds exactly r·d of them: no
// rounding drift however small the steps. Its zero value is full.
type bucket struct {
	nano int64     // tokens × 1e9; negative after an overdraft
	at   time.Time // when nano was last refilled; zero: never, full
}

// maxRate is the highest rate a bucket keeps: a higher one is taken as
// maxRate (4 Gi a second, no limit in practice), so that its nano-tokens
// fit an int64.
const maxRate = 1 << 32

// refill brings the bucket to now at rate (> 0) tokens per second,
// holding at most one second's worth.
func (b *bucket) refill(now time.Time, rate int) {
	rate = min(rate, maxRate)
	capacity := int64(rate) * 1e9
	switch d := int64(now.Sub(b.at)); {
	case b.at.IsZero(), d >= (capacity-b.nano)/int64(rate)+1:
		// Full (compared so, rate·d cannot overflow for a long d).
		b.nano = capacity
	case d > 0:
		b.nano += int64(rate) * d
	}
	if now.After(b.at) {
		b.at = now
	}
}

// has reports whether n tokens are in the bucket at now.
func (b *bucket) has(now time.Time, rate, n int) bool {
	b.refill(now, rate)
	return b.nano >= int64(n)*1e9
}

// take removes n (at most a request's size, far below maxRate) tokens at
// now; the bucket may go negative.
func (b *bucket) take(now time.Time, rate, n int) {
	b.refill(now, rate)
	b.nano -= int64(n) * 1e9
}

// window admits at most limit calls in any second. It keeps the times of
// the calls admitted in the last second, oldest first: never more than
// limit, and no more than were made, however high the limit.
type window struct {
	calls []time.Time
}

// admit admits a call at now, or refuses it when limit calls were admitted
// in the second before now.
func (w *window) admit(now time.Time, limit int) bool {
	i := 0
	for i < len(w.calls) && now.Sub(w.calls[i]) >= time.Second {
		i++
	}
	w.calls = w.calls[i:]
	if len(w.calls) >= limit {
		return false
	}
	w.calls = append(w.calls, now)
	return true
}

// now is the time of the rate limits: Options.Now, or time.Now.
func (f *Fake) now() time.Time {
	if f.opts.Now != nil {
		return f.opts.Now()
	}
	return time.Now()
}

// shardLimits is a shard's rate state and counts.
type shardLimits struct {
	writeRecords, writeBytes bucket
	readBytes                bucket
	getRecords, iterators    window
	stats                    ShardStats
}

// shardThrottled is the error of a shard's rate limits, as Kinesis words
// it.
func shardThrottled(stream, shard string) *types.ProvisionedThroughputExceededException {
	return &types.ProvisionedThroughputExceededException{Message: aws.String(shardThrottledMessage(stream, shard))}
}

func shardThrottledMessage(stream, shard string) string {
	return fmt.Sprintf("Rate exceeded for shard %s in stream %s under account %s.", shard, stream, accountID)
}

// streamLimitExceeded is the error of a control-plane call rate, as
// Kinesis words it (for per-account limits too: it names the stream of
// the call).
func streamLimitExceeded(stream string) *types.LimitExceededException {
	return &types.LimitExceededException{Message: aws.String(fmt.Sprintf("Rate exceeded for stream %s under account %s.", stream, accountID))}
}

// ShardStats are the counts of one shard's traffic, kept whether or not
// limits are enforced: written and throttled records and their bytes,
// GetRecords and GetShardIterator calls served and throttled, and what
// they returned. Bytes are data and partition keys, as Kinesis counts
// them. Records failed by FailEntries and calls failed by InjectError are
// in none of them.
type ShardStats struct {
	ShardID string

	// WrittenRecords and WrittenBytes are the records PutRecord and
	// PutRecords wrote to the shard.
	WrittenRecords int
	WrittenBytes   int64
	// ThrottledRecords and ThrottledBytes are the records refused for the
	// shard's write rates (PutRecord calls and PutRecords entries).
	ThrottledRecords int
	ThrottledBytes   int64

	// GetRecordsCalls are the GetRecords calls served; ReadRecords and
	// ReadBytes what they returned. ThrottledGetRecords are the calls
	// refused for the shard's read rates.
	GetRecordsCalls     int
	ThrottledGetRecords int
	ReadRecords         int
	ReadBytes           int64

	// GetShardIteratorCalls are the GetShardIterator calls served;
	// ThrottledGetShardIterator those refused for rate.
	GetShardIteratorCalls     int
	ThrottledGetShardIterator int
}

// ShardStats returns the traffic counts of every shard of the stream (by
// name or ARN), in creation order: with limits on, a test computes from
// them the share of entries throttled and the throughput as a share of
// the limit.
func (f *Fake) ShardStats(stream string) ([]ShardStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := f.byNameOrARN(stream)
	if err != nil {
		return nil, err
	}
	out := make([]ShardStats, len(st.shards))
	for i, s := range st.shards {
		out[i] = s.lim.stats
		out[i].ShardID = s.id
	}
	return out, nil
}

// Throttled returns how often a limit of Options.Limits refused the
// operation ("PutRecord", "GetRecords", "ListShards", ...): the calls it
// failed, and for "PutRecords" the entries it failed (a PutRecords call is
// never refused whole for rate).
func (f *Fake) Throttled(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.throttled[op]
}
