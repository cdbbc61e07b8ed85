package kinesissink

import (
	"math"
	"time"
)

// Kinesis' write limits of one shard: what Options.RateLimit is a share of.
const (
	// ShardRecordsPerSecond is the most records a shard takes per second
	// (a KPL aggregate counts as one record).
	ShardRecordsPerSecond = 1000
	// ShardBytesPerSecond is the most bytes a shard takes per second, data
	// plus partition key (of the aggregate, for a KPL aggregate).
	ShardBytesPerSecond = 1 << 20
)

// sendMargin is how much smaller than one second's worth a bucket is.
// Entries are charged a moment before Kinesis counts them (the time to
// encode and send the request); a bucket as large as Kinesis' would refill
// during that moment while Kinesis', full already, does not, and admit
// that much too much. The margin covers a delay up to 100 ms, and costs
// only a tenth of the first second's burst.
const sendMargin = 100 * time.Millisecond

// limiter holds back the entries of each predicted shard beyond a share of
// the shard's write limits, like the KPL's RateLimit: per shard, one token
// bucket of records and one of bytes, each refilled at the share of the
// shard's limit per second and holding at most one second of it, starting
// full (as Kinesis lets a shard take one second's worth at once).
//
// An entry is charged when it is about to be sent: the ordered scheduler
// charges the job it hands to a request slot; the aggregating scheduler
// reserves the entries it packs and charges them when their request is
// taken, so that nothing charged waits in an open request while the shard's
// bucket refills (Kinesis would then see more at once than the bucket
// allowed). Retries are not held back but charged, so newer records wait
// for them.
//
// An entry larger than a bucket (a record of more than the share of 1 MiB)
// may go when the bucket is full, and leaves it in debt: the long-run rate
// stays the share.
//
// Buckets are keyed by shard ID; a new shard map drops the buckets of shards
// no longer open, and the children of a split or merge start with full
// buckets, as Kinesis gives them their own limits. Records predicted in a
// gap of the map (shard "") are not held back.
//
// It is guarded by the engine's mu, as the scheduler that owns it.
type limiter struct {
	recRate, byteRate float64 // tokens per second
	recCap, byteCap   float64 // bucket sizes: one second of the rate
	buckets           map[string]*bucket
	// held counts records that had to wait for their shard's budget and
	// were since taken, not yet recorded in the metrics (see takeHeld).
	held int
}

// bucket is one shard's budget.
type bucket struct {
	recs, bytes float64 // tokens; negative: debt of an oversized entry
	at          time.Time
	reserved    struct{ recs, bytes float64 } // packed, not yet charged
}

// newLimiter returns the limiter at share (1: 100 %) of a shard's limits,
// or nil for share <= 0: no limit.
func newLimiter(share float64) *limiter {
	if share <= 0 {
		return nil
	}
	l := &limiter{recRate: share * ShardRecordsPerSecond, byteRate: share * ShardBytesPerSecond, buckets: make(map[string]*bucket)}
	burst := (time.Second - sendMargin).Seconds()
	// A bucket holds at least one record, or a small share would never
	// admit any (an entry larger than the bytes cap goes when the bucket
	// is full, into debt).
	l.recCap, l.byteCap = max(1, burst*l.recRate), burst*l.byteRate
	return l
}

// bucket returns the bucket of shard, refilled up to now; nil for "".
func (l *limiter) bucket(shard string, now time.Time) *bucket {
	if shard == "" {
		return nil
	}
	b := l.buckets[shard]
	if b == nil {
		b = &bucket{recs: l.recCap, bytes: l.byteCap, at: now}
		l.buckets[shard] = b
		return b
	}
	if d := now.Sub(b.at).Seconds(); d > 0 {
		b.recs = min(l.recCap, b.recs+d*l.recRate)
		b.bytes = min(l.byteCap, b.bytes+d*l.byteRate)
		b.at = now
	}
	return b
}

// allowance is what a shard may send now: at most records entries and bytes
// bytes, except that a first entry larger than bytes may go when whole is
// set (the bucket is full).
type allowance struct {
	records, bytes int
	whole          bool
}

// unlimited is the allowance without a limiter.
var unlimited = allowance{records: math.MaxInt, bytes: math.MaxInt, whole: true}

// admits reports whether one more entry of size bytes may join n entries of
// taken bytes.
func (a allowance) admits(n, taken, size int) bool {
	if n >= a.records {
		return false
	}
	if n == 0 && a.whole {
		return true
	}
	return taken+size <= a.bytes
}

// allowance returns what shard may send at now.
func (l *limiter) allowance(shard string, now time.Time) allowance {
	if l == nil {
		return unlimited
	}
	b := l.bucket(shard, now)
	if b == nil {
		return unlimited
	}
	// The epsilon keeps a bucket refilled to a whole token by float steps
	// (0.9999999...) from reading as empty.
	recs, bytes := b.recs-b.reserved.recs+1e-6, b.bytes-b.reserved.bytes+1e-6
	a := allowance{records: max(0, int(recs)), bytes: max(0, int(bytes))}
	// A full bucket lets one entry of any size go (into debt).
	a.whole = a.records > 0 && bytes >= l.byteCap
	return a
}

// wait returns how long until shard may send recs entries of need bytes
// (each capped at the bucket's size). Callers ask for a batch's worth when
// they have one (batchRecords), not for one record: the bucket goes on
// filling while they wait, so a wait costs no throughput, where a wake-up
// per record would cost a timer per record.
func (l *limiter) wait(shard string, recs, need int, now time.Time) time.Duration {
	b := l.bucket(shard, now)
	if b == nil {
		return 0
	}
	short := max((min(float64(recs), l.recCap)-(b.recs-b.reserved.recs))/l.recRate,
		(min(float64(need), l.byteCap)-(b.bytes-b.reserved.bytes))/l.byteRate, 0)
	// Round up to a millisecond, so that the timer does not wake a hair
	// before the tokens are there.
	return time.Duration(math.Ceil(short*1000)) * time.Millisecond
}

// batchRecords is how many records of a queue of n to wait for: n, up to
// a twentieth of a second's budget (50 ms of waiting).
func (l *limiter) batchRecords(n int) int {
	return max(1, min(n, int(l.recCap/20)))
}

// charge takes entries of bytes from shard's bucket.
func (l *limiter) charge(shard string, entries, bytes int, now time.Time) {
	if l == nil {
		return
	}
	if b := l.bucket(shard, now); b != nil {
		b.recs -= float64(entries)
		b.bytes -= float64(bytes)
	}
}

// reserve sets entries of bytes aside in shard's bucket: packed into a
// request not yet sent.
func (l *limiter) reserve(shard string, entries, bytes int) {
	if l == nil {
		return
	}
	if b := l.buckets[shard]; b != nil {
		b.reserved.recs += float64(entries)
		b.reserved.bytes += float64(bytes)
	}
}

// chargeReserved charges what reserve set aside, now that it is sent.
func (l *limiter) chargeReserved(shard string, entries, bytes int, now time.Time) {
	if l == nil {
		return
	}
	if b := l.bucket(shard, now); b != nil {
		b.reserved.recs = max(0, b.reserved.recs-float64(entries))
		b.reserved.bytes = max(0, b.reserved.bytes-float64(bytes))
		b.recs -= float64(entries)
		b.bytes -= float64(bytes)
	}
}

// remap keeps the buckets of the shards open in m and drops the others;
// the shards new in m get full buckets when first used.
func (l *limiter) remap(m *shardMap) {
	if l == nil {
		return
	}
	for id := range l.buckets {
		if r, ok := m.all[id]; !ok || !r.open {
			delete(l.buckets, id)
		}
	}
}

// noteHeld counts n records taken after waiting for their shard's budget.
func (l *limiter) noteHeld(n int) {
	if l != nil {
		l.held += n
	}
}

// takeHeld returns and resets the records counted by noteHeld.
func (l *limiter) takeHeld() int {
	if l == nil {
		return 0
	}
	n := l.held
	l.held = 0
	return n
}
