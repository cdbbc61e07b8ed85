// Package kinesisfake is an in-memory fake of the Kinesis Data Streams API,
// for unit tests of code that reads or writes Kinesis: shardflow's Kinesis
// source and sink accept it in place of a *kinesis.Client, and so does any
// code written against the same aws-sdk-go-v2 method signatures.
//
// It keeps what matters to a reader and a writer: records are routed to the
// open shard whose hash key range holds the MD5 of their partition key (or
// their explicit hash key), sequence numbers are large decimals that grow
// within a shard, iterators expire five minutes after they were issued,
// shards split and merge into children listed by ListShards and returned in
// ChildShards at a parent's end, and PutRecords enforces the request limits
// Kinesis does. Faults are injected on demand: whole-call errors with
// [Fake.InjectError], per-entry PutRecords failures with [Fake.FailEntries],
// errors that end an open subscription with [Fake.InjectSubscriptionError].
//
// Enhanced fan-out is served too: RegisterStreamConsumer,
// DescribeStreamConsumer, DeregisterStreamConsumer, ListStreamConsumers and
// SubscribeToShard, which returns a real *kinesis.SubscribeToShardOutput
// whose GetStream() yields the events, encoded and decoded by the AWS SDK's
// own event stream code exactly as it reads them from Kinesis (see
// [Fake.SubscribeToShard]).
//
// Kinesis' rate limits are enforced when a test asks, with [Options.Limits]:
// [AWSLimits] returns all of them at AWS's values (writes of 1,000 records
// and 1 MiB per second per shard, reads of 5 calls and 2 MiB per second per
// shard, control-plane call rates), and a test may keep only those it
// studies. Refusals are Kinesis' own: a PutRecords entry fails alone with
// ErrorCode ProvisionedThroughputExceededException, a call with
// *types.ProvisionedThroughputExceededException or
// *types.LimitExceededException, in Kinesis' words. [Fake.ShardStats] and
// [Fake.Throttled] count what was written, read and refused, so a test
// computes the share throttled and the throughput as a share of the limit.
// Without Limits (the default) nothing is rate limited, and tests run as
// fast as the machine allows. [Options.ReadLimits] is a shorthand for the
// read limits only.
//
// Time comes from the time package, so tests under testing/synctest control
// iterator expiry, arrival timestamps, subscription lengths and rate limits;
// [Options.Now] gives the rate limits a clock of the test's own.
// A Fake is safe for concurrent use.
package kinesisfake

import (
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
)

// Limits Kinesis enforces on every request; the fake always refuses
// requests past them, with Kinesis' errors.
const (
	// MaxPutRecordsEntries is the most entries of a PutRecords call: more
	// (or none) fail the call with ValidationException.
	MaxPutRecordsEntries = 500
	// MaxPutRecordsBytes is the most bytes (data and partition keys) of a
	// PutRecords call: more fail it with InvalidArgumentException
	// "Records size exceeds 5 MB limit".
	MaxPutRecordsBytes = 5 << 20
	// MaxRecordBytes is the most bytes of one record: data longer fails
	// the call with ValidationException; data and partition key together
	// longer, with InvalidArgumentException.
	MaxRecordBytes = 1 << 20
	// MaxPartitionKeyLen is the most characters of a partition key.
	MaxPartitionKeyLen = 256
	// IteratorLifetime is how long a shard iterator may be used after it
	// was issued; later, GetRecords fails with ExpiredIteratorException.
	IteratorLifetime   = 5 * time.Minute
	maxGetRecordsLimit = 10000
	accountID          = "000000000000"
	region             = "us-east-1"
)

var maxHashKey = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 128), big.NewInt(1))

// Fake is an in-memory Kinesis. The zero Fake is not usable; call New.
type Fake struct {
	opts Options
	lim  Limits // opts.Limits and opts.ReadLimits resolved

	mu        sync.Mutex
	streams   map[string]*stream
	iterators map[string]iterator
	// forgotten is the highest number of an iterator forgotten once
	// expired (see issue): iterators are numbered in the order issued, so
	// every one up to it had expired.
	forgotten int
	nextIter  int
	seq       *big.Int
	inject    func(op string, input any) error
	failEntry func(stream string, e types.PutRecordsRequestEntry) (code string)
	calls     map[string]int
	throttled map[string]int // by operation: calls (PutRecords: entries) refused for rate

	describeSummary, registerConsumer window // the account's call rates, with lim

	consumers map[string]*consumer // by ARN, deregistered ones until they are gone
	subs      map[*subscription]bool
	injectSub func(consumerARN, shardID string) error
	sdk       *kinesis.Client // decodes subscriptions' event streams; made at the first
}

type stream struct {
	name       string
	shards     []*shard          // in creation order; add with addShard
	byID       map[string]*shard // shards by id
	listShards window            // ListShards calls, with lim
}

type shard struct {
	id             string
	parent         string
	adjacentParent string
	start, end     *big.Int // inclusive hash key range
	startSeq       string
	endSeq         string // set when closed
	records        []types.Record

	// changed is closed, and replaced, whenever records are added or the
	// shard closes: subscriptions wait on it.
	changed chan struct{}
	lim     shardLimits // rates (with Fake.lim) and counts
}

// notify wakes the subscriptions of the shard. Called with f.mu held.
func (s *shard) notify() {
	if s.changed != nil {
		close(s.changed)
	}
	s.changed = make(chan struct{})
}

func (s *shard) closed() bool { return s.endSeq != "" }

type iterator struct {
	stream, shard string
	next          int // index of the next record to return
	issued        time.Time
}

// New returns an empty fake, configured by optFns.
func New(optFns ...func(*Options)) *Fake {
	var o Options
	for _, fn := range optFns {
		fn(&o)
	}
	if o.SubscriptionDuration <= 0 {
		o.SubscriptionDuration = DefaultSubscriptionDuration
	}
	o.ConsumerStatusDelay = max(o.ConsumerStatusDelay, 0)
	seq, _ := new(big.Int).SetString("49590338271490256608559692538361571095921575989136588898", 10)
	return &Fake{
		opts:      o,
		lim:       resolveLimits(&o),
		throttled: make(map[string]int),
		streams:   make(map[string]*stream),
		iterators: make(map[string]iterator),
		seq:       seq,
		calls:     make(map[string]int),
		consumers: make(map[string]*consumer),
		subs:      make(map[*subscription]bool),
	}
}

// StreamARN returns the ARN the fake gives the named stream.
func StreamARN(name string) string {
	return fmt.Sprintf("arn:aws:kinesis:%s:%s:stream/%s", region, accountID, name)
}

// InjectError makes every later API call first call fn with the operation
// name ("PutRecords", "GetRecords", ...) and its input; a non-nil error is
// returned as the call's error and the call does nothing. nil removes it.
func (f *Fake) InjectError(fn func(op string, input any) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inject = fn
}

// FailEntries makes PutRecords call fn for each entry it would write; a
// non-empty error code ("ProvisionedThroughputExceededException",
// "InternalFailure", ...) fails that entry, which is not written. nil removes it.
func (f *Fake) FailEntries(fn func(stream string, e types.PutRecordsRequestEntry) (code string)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failEntry = fn
}

// Calls returns how many times the operation was called (injected failures
// included).
func (f *Fake) Calls(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

// begin counts the call and applies an injected fault. Called with f.mu held.
func (f *Fake) begin(op string, input any) error {
	f.calls[op]++
	if f.inject != nil {
		return f.inject(op, input)
	}
	return nil
}

// CreateStream creates a stream of ShardCount shards that split the hash
// key space evenly.
func (f *Fake) CreateStream(_ context.Context, in *kinesis.CreateStreamInput, _ ...func(*kinesis.Options)) (*kinesis.CreateStreamOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("CreateStream", in); err != nil {
		return nil, err
	}
	name := aws.ToString(in.StreamName)
	if name == "" {
		return nil, invalidArgument("StreamName is required")
	}
	if _, ok := f.streams[name]; ok {
		return nil, &types.ResourceInUseException{Message: aws.String("Stream " + name + " already exists")}
	}
	n := int64(aws.ToInt32(in.ShardCount))
	if n < 1 {
		n = 1
	}
	st := &stream{name: name}
	width := new(big.Int).Div(new(big.Int).Add(maxHashKey, big.NewInt(1)), big.NewInt(n))
	for i := range n {
		start := new(big.Int).Mul(width, big.NewInt(i))
		end := new(big.Int).Sub(new(big.Int).Add(start, width), big.NewInt(1))
		if i == n-1 {
			end = new(big.Int).Set(maxHashKey)
		}
		st.addShard(&shard{id: shardID(len(st.shards)), start: start, end: end, startSeq: f.nextSeq(), changed: make(chan struct{})})
	}
	f.streams[name] = st
	return &kinesis.CreateStreamOutput{}, nil
}

func shardID(i int) string { return fmt.Sprintf("shardId-%012d", i) }

func (f *Fake) nextSeq() string {
	f.seq.Add(f.seq, big.NewInt(1))
	return f.seq.String()
}

// lookup finds a stream by name or ARN. Called with f.mu held.
func (f *Fake) lookup(name, arn *string) (*stream, error) {
	n := aws.ToString(name)
	if a := aws.ToString(arn); a != "" {
		i := strings.LastIndex(a, ":stream/")
		if i < 0 {
			return nil, invalidArgument("malformed StreamARN " + a)
		}
		n = a[i+len(":stream/"):]
	}
	st, ok := f.streams[n]
	if !ok {
		return nil, &types.ResourceNotFoundException{Message: aws.String("Stream " + n + " under account " + accountID + " not found.")}
	}
	return st, nil
}

func (st *stream) shard(id string) *shard { return st.byID[id] }

// addShard appends a new shard to the stream.
func (st *stream) addShard(s *shard) {
	if st.byID == nil {
		st.byID = make(map[string]*shard)
	}
	st.shards = append(st.shards, s)
	st.byID[s.id] = s
}

func invalidArgument(msg string) error {
	return &types.InvalidArgumentException{Message: aws.String(msg)}
}

// validationError is Kinesis' ValidationException of a member's length,
// in its words (with the value itself left out).
func validationError(member, bound string, n int) error {
	return &types.ValidationException{Message: aws.String(fmt.Sprintf("1 validation error detected: Value at '%s' failed to satisfy constraint: Member must have length %s %d", member, bound, n))}
}

// hashKey returns the 128-bit hash key a record is routed by.
func hashKey(partitionKey string, explicit *string) (*big.Int, error) {
	if explicit != nil {
		h, ok := new(big.Int).SetString(*explicit, 10)
		if !ok || h.Sign() < 0 || h.Cmp(maxHashKey) > 0 {
			return nil, invalidArgument("ExplicitHashKey " + *explicit + " is not a decimal in [0, 2^128-1]")
		}
		return h, nil
	}
	sum := md5.Sum([]byte(partitionKey))
	return new(big.Int).SetBytes(sum[:]), nil
}

// route finds the open shard whose range holds h.
func (st *stream) route(h *big.Int) *shard {
	for _, s := range st.shards {
		if !s.closed() && s.start.Cmp(h) <= 0 && h.Cmp(s.end) <= 0 {
			return s
		}
	}
	return nil
}

// validateEntry checks a record's partition key and size: that of
// PutRecord for entry < 0, else of the PutRecords entry of that index, as
// ValidationException messages name its data.
func validateEntry(data []byte, key *string, entry int) error {
	k := aws.ToString(key)
	if k == "" || len([]rune(k)) > MaxPartitionKeyLen {
		return invalidArgument(fmt.Sprintf("partition key must be 1 to %d characters, got %d", MaxPartitionKeyLen, len([]rune(k))))
	}
	if len(data) > MaxRecordBytes {
		field := "data"
		if entry >= 0 {
			field = "records." + strconv.Itoa(entry+1) + ".member.data"
		}
		return validationError(field, "less than or equal to", MaxRecordBytes)
	}
	if len(data)+len(k) > MaxRecordBytes {
		return invalidArgument(fmt.Sprintf("record of %d bytes (data + partition key) exceeds the limit of %d", len(data)+len(k), MaxRecordBytes))
	}
	return nil
}

// routeKey finds the open shard a record goes to.
func (st *stream) routeKey(key string, explicit *string) (*shard, error) {
	h, err := hashKey(key, explicit)
	if err != nil {
		return nil, err
	}
	s := st.route(h)
	if s == nil {
		return nil, fmt.Errorf("kinesisfake: no open shard for hash key %s", h)
	}
	return s, nil
}

// admitWrite takes a record of n bytes from the shard's write rates, or
// refuses it (and counts it throttled). Called with f.mu held.
func (f *Fake) admitWrite(s *shard, n int) bool {
	recs, bytes := f.lim.ShardWriteRecordsPerSecond, f.lim.ShardWriteBytesPerSecond
	if recs <= 0 && bytes <= 0 {
		return true
	}
	now := f.now()
	if (recs > 0 && !s.lim.writeRecords.has(now, recs, 1)) || (bytes > 0 && !s.lim.writeBytes.has(now, bytes, n)) {
		s.lim.stats.ThrottledRecords++
		s.lim.stats.ThrottledBytes += int64(n)
		return false
	}
	if recs > 0 {
		s.lim.writeRecords.take(now, recs, 1)
	}
	if bytes > 0 {
		s.lim.writeBytes.take(now, bytes, n)
	}
	return true
}

// put appends one record to s and returns its sequence number. Called
// with f.mu held.
func (f *Fake) put(s *shard, data []byte, key string) string {
	s.lim.stats.WrittenRecords++
	s.lim.stats.WrittenBytes += int64(len(data) + len(key))
	seq := f.nextSeq()
	s.records = append(s.records, types.Record{
		Data:                        append([]byte(nil), data...),
		PartitionKey:                aws.String(key),
		SequenceNumber:              aws.String(seq),
		ApproximateArrivalTimestamp: aws.Time(time.Now()),
	})
	s.notify()
	return seq
}

// PutRecord writes one record.
func (f *Fake) PutRecord(_ context.Context, in *kinesis.PutRecordInput, _ ...func(*kinesis.Options)) (*kinesis.PutRecordOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("PutRecord", in); err != nil {
		return nil, err
	}
	st, err := f.lookup(in.StreamName, in.StreamARN)
	if err != nil {
		return nil, err
	}
	if err := validateEntry(in.Data, in.PartitionKey, -1); err != nil {
		return nil, err
	}
	key := aws.ToString(in.PartitionKey)
	s, err := st.routeKey(key, in.ExplicitHashKey)
	if err != nil {
		return nil, err
	}
	if !f.admitWrite(s, len(in.Data)+len(key)) {
		f.throttled["PutRecord"]++
		return nil, shardThrottled(st.name, s.id)
	}
	seq := f.put(s, in.Data, key)
	return &kinesis.PutRecordOutput{ShardId: aws.String(s.id), SequenceNumber: aws.String(seq)}, nil
}

// PutRecords writes a batch of records, each to its shard, failing the
// entries FailEntries says to fail.
func (f *Fake) PutRecords(_ context.Context, in *kinesis.PutRecordsInput, _ ...func(*kinesis.Options)) (*kinesis.PutRecordsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("PutRecords", in); err != nil {
		return nil, err
	}
	st, err := f.lookup(in.StreamName, in.StreamARN)
	if err != nil {
		return nil, err
	}
	switch n := len(in.Records); {
	case n == 0:
		return nil, validationError("records", "greater than or equal to", 1)
	case n > MaxPutRecordsEntries:
		return nil, validationError("records", "less than or equal to", MaxPutRecordsEntries)
	}
	total := 0
	for i, e := range in.Records {
		if err := validateEntry(e.Data, e.PartitionKey, i); err != nil {
			return nil, err
		}
		if _, err := hashKey("", e.ExplicitHashKey); e.ExplicitHashKey != nil && err != nil {
			return nil, err
		}
		total += len(e.Data) + len(aws.ToString(e.PartitionKey))
	}
	if total > MaxPutRecordsBytes {
		return nil, invalidArgument("Records size exceeds 5 MB limit")
	}
	out := &kinesis.PutRecordsOutput{Records: make([]types.PutRecordsResultEntry, len(in.Records))}
	failed := int32(0)
	for i, e := range in.Records {
		if f.failEntry != nil {
			if code := f.failEntry(st.name, e); code != "" {
				out.Records[i] = types.PutRecordsResultEntry{ErrorCode: aws.String(code), ErrorMessage: aws.String("injected by kinesisfake")}
				failed++
				continue
			}
		}
		key := aws.ToString(e.PartitionKey)
		s, err := st.routeKey(key, e.ExplicitHashKey)
		if err != nil {
			return nil, err
		}
		if !f.admitWrite(s, len(e.Data)+len(key)) {
			f.throttled["PutRecords"]++
			out.Records[i] = types.PutRecordsResultEntry{ErrorCode: aws.String("ProvisionedThroughputExceededException"), ErrorMessage: aws.String(shardThrottledMessage(st.name, s.id))}
			failed++
			continue
		}
		out.Records[i] = types.PutRecordsResultEntry{ShardId: aws.String(s.id), SequenceNumber: aws.String(f.put(s, e.Data, key))}
	}
	out.FailedRecordCount = aws.Int32(failed)
	return out, nil
}

// ListShards lists the stream's shards, open and closed, in creation order,
// at most MaxResults (default 1000) per page. ShardFilter AT_LATEST lists
// the open shards only. With Limits.ListShardsCallsPerSecond, calls for a
// stream past it fail with LimitExceededException.
func (f *Fake) ListShards(_ context.Context, in *kinesis.ListShardsInput, _ ...func(*kinesis.Options)) (*kinesis.ListShardsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("ListShards", in); err != nil {
		return nil, err
	}
	name, arn, after := in.StreamName, in.StreamARN, aws.ToString(in.ExclusiveStartShardId)
	filter := in.ShardFilter
	if tok := aws.ToString(in.NextToken); tok != "" {
		if name != nil || arn != nil {
			return nil, invalidArgument("NextToken and StreamName cannot be provided together")
		}
		parts := strings.SplitN(tok, "|", 3)
		if len(parts) != 3 {
			return nil, invalidArgument("invalid NextToken")
		}
		name, after = aws.String(parts[0]), parts[1]
		if parts[2] != "" {
			filter = &types.ShardFilter{Type: types.ShardFilterType(parts[2])}
		}
	}
	st, err := f.lookup(name, arn)
	if err != nil {
		return nil, err
	}
	if n := f.lim.ListShardsCallsPerSecond; n > 0 && !st.listShards.admit(f.now(), n) {
		f.throttled["ListShards"]++
		return nil, streamLimitExceeded(st.name)
	}
	limit := int(aws.ToInt32(in.MaxResults))
	if limit <= 0 || limit > 10000 {
		limit = 1000
	}
	out := &kinesis.ListShardsOutput{}
	for _, s := range st.shards {
		if after != "" && s.id <= after {
			continue
		}
		if filter != nil && filter.Type == types.ShardFilterTypeAtLatest && s.closed() {
			continue
		}
		if len(out.Shards) == limit {
			ft := ""
			if filter != nil {
				ft = string(filter.Type)
			}
			out.NextToken = aws.String(st.name + "|" + aws.ToString(out.Shards[limit-1].ShardId) + "|" + ft)
			break
		}
		out.Shards = append(out.Shards, s.describe())
	}
	return out, nil
}

func (s *shard) describe() types.Shard {
	d := types.Shard{
		ShardId:             aws.String(s.id),
		HashKeyRange:        &types.HashKeyRange{StartingHashKey: aws.String(s.start.String()), EndingHashKey: aws.String(s.end.String())},
		SequenceNumberRange: &types.SequenceNumberRange{StartingSequenceNumber: aws.String(s.startSeq)},
	}
	if s.parent != "" {
		d.ParentShardId = aws.String(s.parent)
	}
	if s.adjacentParent != "" {
		d.AdjacentParentShardId = aws.String(s.adjacentParent)
	}
	if s.closed() {
		d.SequenceNumberRange.EndingSequenceNumber = aws.String(s.endSeq)
	}
	return d
}

// GetShardIterator returns an iterator of any type Kinesis knows. With
// Limits.GetShardIteratorCallsPerSecond, calls for a shard past it fail
// with ProvisionedThroughputExceededException.
func (f *Fake) GetShardIterator(_ context.Context, in *kinesis.GetShardIteratorInput, _ ...func(*kinesis.Options)) (*kinesis.GetShardIteratorOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("GetShardIterator", in); err != nil {
		return nil, err
	}
	st, err := f.lookup(in.StreamName, in.StreamARN)
	if err != nil {
		return nil, err
	}
	s := st.shard(aws.ToString(in.ShardId))
	if s == nil {
		return nil, &types.ResourceNotFoundException{Message: aws.String("Shard " + aws.ToString(in.ShardId) + " in stream " + st.name + " not found")}
	}
	if n := f.lim.GetShardIteratorCallsPerSecond; n > 0 && !s.lim.iterators.admit(f.now(), n) {
		f.throttled["GetShardIterator"]++
		s.lim.stats.ThrottledGetShardIterator++
		return nil, shardThrottled(st.name, s.id)
	}
	next, err := startIndex(s, in.ShardIteratorType, in.StartingSequenceNumber, in.Timestamp)
	if err != nil {
		return nil, err
	}
	s.lim.stats.GetShardIteratorCalls++
	return &kinesis.GetShardIteratorOutput{ShardIterator: aws.String(f.issue(st.name, s.id, next))}, nil
}

// startIndex returns the index in s.records of the first record a reader
// starting at the position given by typ (and seq or ts) reads.
func startIndex(s *shard, typ types.ShardIteratorType, seq *string, ts *time.Time) (int, error) {
	switch typ {
	case types.ShardIteratorTypeTrimHorizon:
		return 0, nil
	case types.ShardIteratorTypeLatest:
		return len(s.records), nil
	case types.ShardIteratorTypeAtSequenceNumber, types.ShardIteratorTypeAfterSequenceNumber:
		want, ok := new(big.Int).SetString(aws.ToString(seq), 10)
		if !ok {
			return 0, invalidArgument("StartingSequenceNumber " + aws.ToString(seq) + " is not a sequence number")
		}
		for i, r := range s.records {
			have, _ := new(big.Int).SetString(aws.ToString(r.SequenceNumber), 10)
			if c := have.Cmp(want); c >= 0 {
				if c == 0 && typ == types.ShardIteratorTypeAfterSequenceNumber {
					return i + 1, nil
				}
				return i, nil
			}
		}
		// Past the last record: valid if it belongs to this shard (not
		// past its end), as Kinesis accepts the last record's sequence
		// number.
		return len(s.records), nil
	case types.ShardIteratorTypeAtTimestamp:
		t := aws.ToTime(ts)
		for i, r := range s.records {
			if !aws.ToTime(r.ApproximateArrivalTimestamp).Before(t) {
				return i, nil
			}
		}
		return len(s.records), nil
	}
	return 0, invalidArgument("unknown ShardIteratorType " + string(typ))
}

// issue records a new iterator. Called with f.mu held.
func (f *Fake) issue(stream, shard string, next int) string {
	f.nextIter++
	if f.nextIter%4096 == 0 {
		// Forget expired iterators, so that a long run does not keep
		// every iterator it was ever given. A caller of a forgotten one
		// gets the same ExpiredIteratorException as before.
		now := time.Now()
		for tok, it := range f.iterators {
			if now.Sub(it.issued) > IteratorLifetime {
				delete(f.iterators, tok)
				if n, err := strconv.Atoi(strings.TrimPrefix(tok, "iter-")); err == nil {
					f.forgotten = max(f.forgotten, n)
				}
			}
		}
	}
	tok := "iter-" + strconv.Itoa(f.nextIter)
	f.iterators[tok] = iterator{stream: stream, shard: shard, next: next, issued: time.Now()}
	return tok
}

// forgot reports whether tok is an iterator forgotten once expired.
func (f *Fake) forgot(tok string) bool {
	n, err := strconv.Atoi(strings.TrimPrefix(tok, "iter-"))
	return err == nil && strings.HasPrefix(tok, "iter-") && n <= f.forgotten
}

// GetRecords returns up to Limit (default 10,000) records from the
// iterator's position, the next iterator (nil at the end of a closed shard,
// with its ChildShards) and MillisBehindLatest.
func (f *Fake) GetRecords(_ context.Context, in *kinesis.GetRecordsInput, _ ...func(*kinesis.Options)) (*kinesis.GetRecordsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("GetRecords", in); err != nil {
		return nil, err
	}
	it, ok := f.iterators[aws.ToString(in.ShardIterator)]
	if !ok && f.forgot(aws.ToString(in.ShardIterator)) {
		return nil, &types.ExpiredIteratorException{Message: aws.String("Iterator expired")}
	}
	if !ok {
		return nil, invalidArgument("invalid ShardIterator")
	}
	if time.Since(it.issued) > IteratorLifetime {
		return nil, &types.ExpiredIteratorException{Message: aws.String("Iterator expired")}
	}
	st, err := f.lookup(aws.String(it.stream), nil)
	if err != nil {
		return nil, err
	}
	s := st.shard(it.shard)
	if !f.admitRead(s) {
		f.throttled["GetRecords"]++
		s.lim.stats.ThrottledGetRecords++
		return nil, shardThrottled(st.name, s.id)
	}
	limit := int(aws.ToInt32(in.Limit))
	if limit <= 0 || limit > maxGetRecordsLimit {
		limit = maxGetRecordsLimit
	}
	end := min(it.next+limit, len(s.records))
	if f.lim.GetRecordsMaxBytes > 0 {
		end = it.next + fitBytes(s.records[it.next:end], f.lim.GetRecordsMaxBytes)
	}
	n := recordBytes(s.records[it.next:end])
	if f.lim.ShardReadBytesPerSecond > 0 {
		s.lim.readBytes.take(f.now(), f.lim.ShardReadBytesPerSecond, n)
	}
	s.lim.stats.GetRecordsCalls++
	s.lim.stats.ReadRecords += end - it.next
	s.lim.stats.ReadBytes += int64(n)
	out := &kinesis.GetRecordsOutput{Records: append([]types.Record(nil), s.records[it.next:end]...), MillisBehindLatest: aws.Int64(behindLatest(s, end))}
	if s.closed() && end == len(s.records) {
		out.ChildShards = st.children(s)
		return out, nil
	}
	out.NextShardIterator = aws.String(f.issue(it.stream, it.shard, end))
	return out, nil
}

// admitRead admits a GetRecords call to s under the shard's read rates:
// its call rate, and its bytes allowance, which a big read may have
// overdrawn. Called with f.mu held.
func (f *Fake) admitRead(s *shard) bool {
	calls, bytes := f.lim.GetRecordsCallsPerSecond, f.lim.ShardReadBytesPerSecond
	if calls <= 0 && bytes <= 0 {
		return true
	}
	now := f.now()
	if bytes > 0 && !s.lim.readBytes.has(now, bytes, 0) {
		return false
	}
	return calls <= 0 || s.lim.getRecords.admit(now, calls)
}

// behindLatest is MillisBehindLatest for a reader whose next record is
// s.records[next]: 0 at the tip, else the age of that record (at least 1).
func behindLatest(s *shard, next int) int64 {
	if next >= len(s.records) {
		return 0
	}
	return max(time.Since(aws.ToTime(s.records[next].ApproximateArrivalTimestamp)).Milliseconds(), 1)
}

// children returns the ChildShards of a closed shard.
func (st *stream) children(s *shard) []types.ChildShard {
	var out []types.ChildShard
	for _, c := range st.shards {
		if c.parent == s.id || c.adjacentParent == s.id {
			parents := []string{c.parent}
			if c.adjacentParent != "" {
				parents = append(parents, c.adjacentParent)
			}
			out = append(out, types.ChildShard{
				ShardId: aws.String(c.id), ParentShards: parents,
				HashKeyRange: &types.HashKeyRange{StartingHashKey: aws.String(c.start.String()), EndingHashKey: aws.String(c.end.String())},
			})
		}
	}
	return out
}

// SplitShard closes a shard and opens two children that share its range at
// NewStartingHashKey.
func (f *Fake) SplitShard(_ context.Context, in *kinesis.SplitShardInput, _ ...func(*kinesis.Options)) (*kinesis.SplitShardOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("SplitShard", in); err != nil {
		return nil, err
	}
	st, err := f.lookup(in.StreamName, in.StreamARN)
	if err != nil {
		return nil, err
	}
	p := st.shard(aws.ToString(in.ShardToSplit))
	if p == nil || p.closed() {
		return nil, &types.ResourceNotFoundException{Message: aws.String("no open shard " + aws.ToString(in.ShardToSplit))}
	}
	at, ok := new(big.Int).SetString(aws.ToString(in.NewStartingHashKey), 10)
	if !ok || at.Cmp(p.start) <= 0 || at.Cmp(p.end) > 0 {
		return nil, invalidArgument("NewStartingHashKey must be inside the shard's range, above its start")
	}
	p.endSeq = f.nextSeq()
	lo := &shard{id: shardID(len(st.shards)), parent: p.id, start: p.start, end: new(big.Int).Sub(at, big.NewInt(1)), startSeq: f.nextSeq(), changed: make(chan struct{})}
	st.addShard(lo)
	hi := &shard{id: shardID(len(st.shards)), parent: p.id, start: at, end: p.end, startSeq: f.nextSeq(), changed: make(chan struct{})}
	st.addShard(hi)
	p.notify()
	return &kinesis.SplitShardOutput{}, nil
}

// MergeShards closes two adjacent shards and opens one child over both
// ranges.
func (f *Fake) MergeShards(_ context.Context, in *kinesis.MergeShardsInput, _ ...func(*kinesis.Options)) (*kinesis.MergeShardsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("MergeShards", in); err != nil {
		return nil, err
	}
	st, err := f.lookup(in.StreamName, in.StreamARN)
	if err != nil {
		return nil, err
	}
	a, b := st.shard(aws.ToString(in.ShardToMerge)), st.shard(aws.ToString(in.AdjacentShardToMerge))
	if a == nil || b == nil || a.closed() || b.closed() {
		return nil, &types.ResourceNotFoundException{Message: aws.String("both shards must exist and be open")}
	}
	lo, hi := a, b
	if hi.start.Cmp(lo.start) < 0 {
		lo, hi = hi, lo
	}
	if new(big.Int).Add(lo.end, big.NewInt(1)).Cmp(hi.start) != 0 {
		return nil, invalidArgument("shards to merge must be adjacent")
	}
	a.endSeq = f.nextSeq()
	b.endSeq = f.nextSeq()
	c := &shard{id: shardID(len(st.shards)), parent: a.id, adjacentParent: b.id, start: lo.start, end: hi.end, startSeq: f.nextSeq(), changed: make(chan struct{})}
	st.addShard(c)
	a.notify()
	b.notify()
	return &kinesis.MergeShardsOutput{}, nil
}

// DescribeStreamSummary describes the stream: name, ARN, status ACTIVE and
// the number of open shards. With Limits.DescribeStreamSummaryCallsPerSecond,
// calls past it fail with LimitExceededException.
func (f *Fake) DescribeStreamSummary(_ context.Context, in *kinesis.DescribeStreamSummaryInput, _ ...func(*kinesis.Options)) (*kinesis.DescribeStreamSummaryOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("DescribeStreamSummary", in); err != nil {
		return nil, err
	}
	st, err := f.lookup(in.StreamName, in.StreamARN)
	if err != nil {
		return nil, err
	}
	if n := f.lim.DescribeStreamSummaryCallsPerSecond; n > 0 && !f.describeSummary.admit(f.now(), n) {
		f.throttled["DescribeStreamSummary"]++
		return nil, streamLimitExceeded(st.name)
	}
	open := int32(0)
	for _, s := range st.shards {
		if !s.closed() {
			open++
		}
	}
	return &kinesis.DescribeStreamSummaryOutput{StreamDescriptionSummary: &types.StreamDescriptionSummary{
		StreamName: aws.String(st.name), StreamARN: aws.String(StreamARN(st.name)),
		StreamStatus: types.StreamStatusActive, OpenShardCount: aws.Int32(open),
		ConsumerCount:        aws.Int32(int32(len(f.streamConsumers(st.name, time.Now())))),
		RetentionPeriodHours: aws.Int32(24), StreamCreationTimestamp: aws.Time(time.Time{}),
	}}, nil
}

// byNameOrARN looks a stream up by its name or its ARN. Called with f.mu held.
func (f *Fake) byNameOrARN(stream string) (*stream, error) {
	if strings.HasPrefix(stream, "arn:") {
		return f.lookup(nil, aws.String(stream))
	}
	return f.lookup(aws.String(stream), nil)
}

// Records returns a copy of every record of a shard, in order: tests use it
// to check what a writer wrote, and to know the sequence numbers to expect
// in checkpoints. The stream is given by name or ARN; shard ids are
// "shardId-" and 12 digits, numbered from 0 in creation order.
func (f *Fake) Records(streamName, shardID string) ([]types.Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := f.byNameOrARN(streamName)
	if err != nil {
		return nil, err
	}
	s := st.shard(shardID)
	if s == nil {
		return nil, errors.New("kinesisfake: no shard " + shardID)
	}
	return append([]types.Record(nil), s.records...), nil
}

// Shards returns the ids of every shard of the stream (by name or ARN),
// open and closed, in creation order.
func (f *Fake) Shards(streamName string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := f.byNameOrARN(streamName)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(st.shards))
	for i, s := range st.shards {
		ids[i] = s.id
	}
	return ids, nil
}
