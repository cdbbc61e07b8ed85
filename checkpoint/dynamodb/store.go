package dynamostore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint"
	"github.com/shardflow/shardflow/checkpoint/internal/lease"
	"github.com/shardflow/shardflow/internal/awsclient"
	"github.com/shardflow/shardflow/internal/awserr"
	"github.com/shardflow/shardflow/internal/retry"
)

// API is the part of the DynamoDB API the store calls, with the exact
// aws-sdk-go-v2 signatures, so a *dynamodb.Client satisfies it.
type API interface {
	GetItem(ctx context.Context, in *dynamodb.GetItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error)
	PutItem(ctx context.Context, in *dynamodb.PutItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.PutItemOutput, error)
	UpdateItem(ctx context.Context, in *dynamodb.UpdateItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error)
	BatchGetItem(ctx context.Context, in *dynamodb.BatchGetItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.BatchGetItemOutput, error)
	DescribeTable(ctx context.Context, in *dynamodb.DescribeTableInput, optFns ...func(*dynamodb.Options)) (*dynamodb.DescribeTableOutput, error)
	CreateTable(ctx context.Context, in *dynamodb.CreateTableInput, optFns ...func(*dynamodb.Options)) (*dynamodb.CreateTableOutput, error)
}

var _ API = (*dynamodb.Client)(nil)

// DefaultKeyAttribute is the table's HASH key by default, as in
// kinesis-python's state table. It is a DynamoDB reserved word; the store
// always names it through ExpressionAttributeNames.
const DefaultKeyAttribute = "shard"

// DefaultLeaseDuration is the lease duration of a Store whose
// Options.LeaseDuration is zero, as its instances use it: tools that read a
// table (like shardflow status, which shows when leases expire) assume it
// unless told otherwise.
const DefaultLeaseDuration = lease.DefaultLeaseDuration

// Options configure a Store. The zero value of each field means its
// documented default; negative durations are refused by [New] with a
// *shardflow.ConfigError.
type Options struct {
	// KeyAttribute is the name of the table's HASH key, of type S. Each
	// item's key is "<stream>/<shard id>". Default: "shard".
	KeyAttribute string

	// Owner identifies this instance in lease items and in the heartbeat
	// item. It must differ between instances running at the same time. Set
	// it to a stable name (the pod name of a StatefulSet, the host name) to
	// have a restarted process take back its previous run's leases at its
	// first sync instead of waiting for them to expire; a second live
	// process started with the same Owner takes them over, and the first
	// one's SyncLeases then fails with *checkpoint.OwnerConflictError.
	// Default: host name, process id and 32 random bits, like
	// "web-3-4711-9f2c01ab": unique per process.
	Owner string

	// LeaseOptions are the lease timings, LeaseDuration (default 8s),
	// RenewInterval (the heartbeat's, default LeaseDuration/3) and
	// HandoffTimeout (default 40s), and MaxLeasesPerInstance (default 0,
	// no limit). After a crash, other instances resume its shards at most
	// LeaseDuration plus a sync interval (RenewInterval/2) after its last
	// heartbeat.
	checkpoint.LeaseOptions

	// Retry is the retry policy of the store's DynamoDB calls that fail
	// with throttling, server or network errors: Load, CreateTable's wait
	// for the table, and the pages of a lease read that DynamoDB left
	// unprocessed. Zero fields take the defaults of AWS calls in shardflow:
	// no count limit, waits from 100ms doubling up to 5s with jitter, and a
	// Timeout (the outage budget, counted from the first failure) of 5
	// minutes; see "Retries and the outage budget" in the README; and the
	// creation of the heartbeat item. Heartbeats, lease writes (take,
	// release) and the fenced checkpoint writes of Save are retried within
	// the leases they protect instead: at most until the leases would
	// lapse, or one LeaseSyncInterval.
	Retry shardflow.RetryPolicy

	// Logger receives lease changes (Info) and retried failures (Warn).
	// Default: the pipeline's logger when the store serves a pipeline's
	// source (see [shardflow.PipelineLogger]), else slog.Default().
	Logger *slog.Logger

	// MeterProvider records the store's lease metrics (see the package
	// documentation). Default: nil, which means the pipeline's provider
	// when the store serves a pipeline's source (see
	// [shardflow.PipelineMeterProvider]), else the global provider,
	// otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
}

// Store keeps checkpoints and shard leases in a DynamoDB table. Create it
// with [NewFromConfig] or [New]. It is safe for concurrent use. Give each
// pipeline instance its own Store (each is one lease owner); instances share
// the table.
type Store struct {
	client API
	table  string
	key    string
	opts   Options
	retry  retry.Policy
	m      *lease.Manager
	log    atomic.Pointer[slog.Logger]

	readyMu sync.Mutex
	ready   bool

	membersMade atomic.Bool // the heartbeat item exists
}

var (
	_ shardflow.CheckpointStore = (*Store)(nil)
	_ shardflow.Leaser          = (*Store)(nil)
	_ shardflow.LoadRecorder    = (*Store)(nil)
	_ shardflow.LeaseLeaver     = (*Store)(nil)
	_ shardflow.PipelineLogger  = (*Store)(nil)

	_ shardflow.PipelineMeterProvider = (*Store)(nil)
)

// NewFromConfig returns a store of checkpoints and leases in table, with a
// DynamoDB client made from cfg: the easy way to make a Store.
//
//	cfg, err := config.LoadDefaultConfig(ctx)
//	store, err := dynamostore.NewFromConfig(cfg, "orders-state")
//
// The client takes its region, credentials and endpoint from cfg (with
// config.LoadDefaultConfig, the environment variable
// AWS_ENDPOINT_URL_DYNAMODB points it at a local DynamoDB), and has no
// retryer of its own (aws.NopRetryer): the store retries its calls itself
// (see Options.Retry), and a conditional lease write must never be re-sent
// blindly. Like New, it checks the options and calls no API.
func NewFromConfig(cfg aws.Config, table string, optFns ...func(*Options)) (*Store, error) {
	return New(awsclient.DynamoDB(cfg), table, optFns...)
}

// New returns a store of checkpoints and leases in table, calling DynamoDB
// through client. It checks the options (a bad one is a
// *shardflow.ConfigError) and calls no API; the table is checked at first
// use (or by [Store.Check]). Whatever retryer client has, the store sends
// its conditional lease writes once per attempt and retries them itself;
// [NewFromConfig] makes a client with no retryer at all.
func New(client API, table string, optFns ...func(*Options)) (*Store, error) {
	var o Options
	for _, fn := range optFns {
		fn(&o)
	}
	switch {
	case client == nil:
		return nil, &shardflow.ConfigError{Field: "client", Reason: "nil"}
	case table == "":
		return nil, &shardflow.ConfigError{Field: "table", Reason: "empty"}
	}
	if err := o.Retry.Validate("Options.Retry"); err != nil {
		return nil, err
	}
	if o.KeyAttribute == "" {
		o.KeyAttribute = DefaultKeyAttribute
	}
	if err := lease.Resolve(&o.LeaseOptions, "Options"); err != nil {
		return nil, err
	}
	if o.Owner == "" {
		o.Owner = lease.DefaultOwner()
	}
	s := &Store{client: client, table: table, key: o.KeyAttribute, opts: o,
		retry: retry.ForAWS(o.Retry.MaxAttempts, o.Retry.InitialInterval, o.Retry.MaxInterval, o.Retry.Multiplier, o.Retry.Timeout)}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	s.log.Store(s.scope(log))
	m, err := lease.New(leaseTable{s}, lease.Options{Owner: o.Owner, LeaseOptions: o.LeaseOptions, Logger: s.logger(),
		MeterProvider: o.MeterProvider})
	if err != nil {
		return nil, err
	}
	s.m = m
	return s, nil
}

func (s *Store) scope(l *slog.Logger) *slog.Logger {
	return l.With("component", "dynamodb.store", "table", s.table, "owner", s.opts.Owner)
}

func (s *Store) logger() *slog.Logger { return s.log.Load() }

// UsePipelineLogger makes l the store's logger if Options.Logger was nil.
// A Kinesis source calls it with its pipeline's logger before it starts; see
// [shardflow.PipelineLogger]. It is safe to call at any time.
func (s *Store) UsePipelineLogger(l *slog.Logger) {
	if s.opts.Logger != nil || l == nil {
		return
	}
	l = s.scope(l)
	s.log.Store(l)
	s.m.SetLogger(l)
}

// UsePipelineMeterProvider makes mp the provider of the store's lease
// metrics if Options.MeterProvider was nil. A Kinesis source calls it with
// its pipeline's provider before it starts; see
// [shardflow.PipelineMeterProvider]. It is safe to call at any time.
func (s *Store) UsePipelineMeterProvider(mp metric.MeterProvider) {
	if s.opts.MeterProvider != nil || mp == nil {
		return
	}
	s.m.SetMeterProvider(mp)
}

// warn returns the notify function of retry.Do that logs each retry of
// what at Warn, with attrs.
func (s *Store) warn(what string, attrs ...any) func(int, error, time.Duration) {
	return func(n int, err error, wait time.Duration) {
		s.logger().Warn(what+" failed; retrying", append(attrs, "attempt", n, "wait", wait, "err", err)...)
	}
}

// Owner returns this instance's owner id.
func (s *Store) Owner() string { return s.opts.Owner }

// Options returns the options with the defaults of KeyAttribute, Owner and
// the lease timings filled in; Retry, Logger and MeterProvider are as
// given.
func (s *Store) Options() Options { return s.opts }

// Check describes the table and returns a *TableError if it does not exist,
// is not ACTIVE, or its key is not one HASH key KeyAttribute of type S.
// Every other method checks the same once, at first use.
func (s *Store) Check(ctx context.Context) error {
	out, err := s.client.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(s.table)})
	var notFound *types.ResourceNotFoundException
	if errors.As(err, &notFound) {
		return s.noTable(err)
	}
	if err != nil {
		return fmt.Errorf("describe table %q: %w", s.table, s.classify("describe table", err))
	}
	t := out.Table
	if t.TableStatus != types.TableStatusActive && t.TableStatus != types.TableStatusUpdating {
		return &TableError{Table: s.table, Reason: fmt.Sprintf("is %s, not ACTIVE", t.TableStatus)}
	}
	attrTypes := map[string]types.ScalarAttributeType{}
	for _, a := range t.AttributeDefinitions {
		attrTypes[aws.ToString(a.AttributeName)] = a.AttributeType
	}
	if len(t.KeySchema) != 1 || aws.ToString(t.KeySchema[0].AttributeName) != s.key ||
		t.KeySchema[0].KeyType != types.KeyTypeHash || attrTypes[s.key] != types.ScalarAttributeTypeS {
		var have []string
		for _, k := range t.KeySchema {
			name := aws.ToString(k.AttributeName)
			have = append(have, fmt.Sprintf("%s %s %s", name, k.KeyType, attrTypes[name]))
		}
		return &TableError{Table: s.table, Err: ErrKeySchema,
			Reason: fmt.Sprintf("key schema is %v; want one HASH key %q of type S (Options.KeyAttribute)", have, s.key)}
	}
	return nil
}

// checkReady runs Check until it succeeds once.
func (s *Store) checkReady(ctx context.Context) error {
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	if s.ready {
		return nil
	}
	if err := s.Check(ctx); err != nil {
		var te *TableError
		if errors.As(err, &te) {
			return retry.Permanent(err)
		}
		return err
	}
	s.ready = true
	return nil
}

func (s *Store) resetReady() {
	s.readyMu.Lock()
	s.ready = false
	s.readyMu.Unlock()
}

// CreateTable creates the store's table (on-demand capacity, one HASH key
// KeyAttribute of type S) and waits until it is ACTIVE. A table that already
// exists is fine if its key schema matches. Throttling, server and network
// errors are retried, and the wait for the table polls, under
// Options.Retry; both end early when ctx is done.
func (s *Store) CreateTable(ctx context.Context) error {
	create := func() error {
		_, err := s.client.CreateTable(ctx, &dynamodb.CreateTableInput{
			TableName: aws.String(s.table),
			AttributeDefinitions: []types.AttributeDefinition{
				{AttributeName: aws.String(s.key), AttributeType: types.ScalarAttributeTypeS},
			},
			KeySchema:   []types.KeySchemaElement{{AttributeName: aws.String(s.key), KeyType: types.KeyTypeHash}},
			BillingMode: types.BillingModePayPerRequest,
		})
		if _, ok := errors.AsType[*types.ResourceInUseException](err); ok {
			return nil // it exists: Check says whether it fits
		}
		return awserr.Mark("create table", err)
	}
	if err := retry.Do(ctx, s.retry, create(), create, s.warn("create table")); err != nil {
		return fmt.Errorf("create table %q: %w", s.table, err)
	}
	active := func() error {
		err := s.Check(ctx)
		if te, ok := errors.AsType[*TableError](err); ok && te.Err != nil {
			return retry.Permanent(err) // missing, or the wrong key
		}
		return err // not ACTIVE yet, or a retryable failure to describe it
	}
	if err := retry.Do(ctx, s.retry, active(), active, nil); err != nil {
		return fmt.Errorf("wait for table %q to become ACTIVE: %w", s.table, err)
	}
	return nil
}

// Load returns the shard's checkpoint (strongly consistent read); ok is false
// when none was saved. Throttling, server and network errors are retried
// under Options.Retry (each retry logged at Warn); a missing table or one
// with the wrong key fails it at once with a *TableError.
func (s *Store) Load(ctx context.Context, stream, shardID string) (shardflow.Checkpoint, bool, error) {
	item, err := s.loadItem(ctx, stream, shardID)
	if err != nil {
		return shardflow.Checkpoint{}, false, err
	}
	return decodeCheckpoint(item)
}

// loadItem reads the checkpoint attributes of the shard's item for Load; a
// nil map when there is no item.
func (s *Store) loadItem(ctx context.Context, stream, shardID string) (map[string]types.AttributeValue, error) {
	var out *dynamodb.GetItemOutput
	get := func() error {
		if err := s.checkReady(ctx); err != nil {
			return err
		}
		var err error
		out, err = s.client.GetItem(ctx, &dynamodb.GetItemInput{
			TableName:                aws.String(s.table),
			Key:                      s.itemKey(stream, shardID),
			ConsistentRead:           aws.Bool(true),
			ProjectionExpression:     aws.String("#seq, #sub, #partial, #end, #at"),
			ExpressionAttributeNames: map[string]string{"#seq": attrSeq, "#sub": attrSub, "#partial": attrPartial, "#end": attrEnd, "#at": attrSavedAt},
		})
		return s.classify("load checkpoint", err)
	}
	if err := retry.Do(ctx, s.retry, get(), get, s.warn("load checkpoint", "stream", stream, "shard_id", shardID)); err != nil {
		return nil, fmt.Errorf("load checkpoint of shard %s of stream %q from table %q: %w", shardID, stream, s.table, err)
	}
	return out.Item, nil
}

// Save writes the shard's checkpoint if this instance holds the shard's
// lease: the write is conditional on the item's owner and lease counter. If
// another instance took the lease (or it was released), Save fails with an
// error wrapping [shardflow.ErrLeaseLost] and changes nothing. Transient
// errors are retried for up to LeaseSyncInterval.
func (s *Store) Save(ctx context.Context, stream, shardID string, cp shardflow.Checkpoint) error {
	if err := s.checkReady(ctx); err != nil {
		return err
	}
	if err := s.m.Checkpoint(ctx, stream, shardID, cp); err != nil {
		return fmt.Errorf("save checkpoint to table %q: %w", s.table, err)
	}
	return nil
}

// SyncLeases writes this instance's heartbeat when due (which keeps every
// lease it holds), takes free and expired leases of stream, balances with
// other instances and returns the eligible shards this instance holds. See
// [shardflow.Leaser] and the package documentation for the algorithm. A
// table that is missing or has the wrong key fails it with a *TableError;
// a newer process started with this Owner fails it, and every later call,
// with a permanent *checkpoint.OwnerConflictError.
func (s *Store) SyncLeases(ctx context.Context, stream string, eligible []string) ([]string, error) {
	if err := s.checkReady(ctx); err != nil {
		return nil, err
	}
	return s.m.Sync(ctx, stream, eligible)
}

// ReleaseLease frees this instance's lease of a shard (a conditional write),
// keeping its checkpoint, so another instance takes it at its next sync.
// Releasing a lease not held is not an error.
func (s *Store) ReleaseLease(ctx context.Context, stream, shardID string) error {
	return s.m.Release(ctx, stream, shardID)
}

// RecordLoad adds what one read of a shard returned to the shard's measured
// load, by which the store's instances balance their leases (see
// [shardflow.LoadRecorder]). It is cheap (atomic adds) and never blocks.
func (s *Store) RecordLoad(stream, shardID string, records, bytes int) {
	s.m.RecordLoad(stream, shardID, records, bytes)
}

// Leave removes this instance's entry from the table's heartbeat item
// (conditional on this process's incarnation), so that the other instances
// count it gone and rebalance at once (see [shardflow.LeaseLeaver]). A
// later SyncLeases joins again. Leaving twice is not an error.
func (s *Store) Leave(ctx context.Context) error { return s.m.Leave(ctx) }

// LeaseSyncInterval is how often the source calls SyncLeases:
// RenewInterval/2 (1.33s by default).
func (s *Store) LeaseSyncInterval() time.Duration { return s.m.SyncInterval() }

// LeaseDuration is Options.LeaseDuration (8s by default): the most time
// between an instance's last heartbeat and the moment others may take its
// leases (it gives them up a RenewInterval sooner).
func (s *Store) LeaseDuration() time.Duration { return s.m.LeaseDuration() }

// Item attributes besides the key.
const (
	attrStream  = "stream"
	attrShardID = "shard_id"
	attrOwner   = "lease_owner"
	attrCounter = "lease_counter"
	attrWant    = "lease_wanted_by"
	attrSeq     = "checkpoint"
	attrSub     = "sub_sequence_number"
	attrPartial = "partial"
	attrEnd     = "shard_end"
	attrSavedAt = "checkpoint_saved_at"
	// attrRenewedAt is the owner's wall-clock time of its last take or
	// renewal, written by the same conditional write (renewedAtLayout).
	attrRenewedAt = "lease_renewed_at"
)

func (s *Store) itemKey(stream, shardID string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{s.key: &types.AttributeValueMemberS{Value: stream + "/" + shardID}}
}

func decodeCheckpoint(item map[string]types.AttributeValue) (shardflow.Checkpoint, bool, error) {
	if _, ok := item[attrSavedAt]; !ok {
		return shardflow.Checkpoint{}, false, nil
	}
	var cp shardflow.Checkpoint
	if v, ok := item[attrSeq].(*types.AttributeValueMemberS); ok {
		cp.SequenceNumber = v.Value
	}
	if v, ok := item[attrSub].(*types.AttributeValueMemberN); ok {
		n, err := strconv.ParseUint(v.Value, 10, 64)
		if err != nil {
			return cp, false, fmt.Errorf("checkpoint item: %s %q: %w", attrSub, v.Value, err)
		}
		cp.SubSequenceNumber = n
	}
	if v, ok := item[attrPartial].(*types.AttributeValueMemberBOOL); ok {
		cp.Partial = v.Value
	}
	if v, ok := item[attrEnd].(*types.AttributeValueMemberBOOL); ok {
		cp.ShardEnd = v.Value
	}
	return cp, true, nil
}
