package dynamostore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/lease"
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

// Options configure a Store. Zero fields take the documented defaults.
type Options struct {
	// KeyAttribute is the name of the table's HASH key, of type S. Each
	// item's key is "<stream>/<shard id>". Default: "shard".
	KeyAttribute string

	// Owner identifies this instance in lease items. It must differ between
	// instances running at the same time. Default: host name, process id
	// and 32 random bits, like "web-3-4711-9f2c01ab".
	Owner string

	// LeaseDuration is how long a lease may go unrenewed before other
	// instances take it: after a crash, others resume its shards within
	// LeaseDuration + RenewInterval. Default: 10s.
	LeaseDuration time.Duration

	// RenewInterval is how often each held lease is renewed (one
	// UpdateItem). The source syncs leases every RenewInterval/2. Default:
	// LeaseDuration/3. At most LeaseDuration/2.
	RenewInterval time.Duration

	// HandoffTimeout bounds how long an instance keeps renewing a lease that
	// another instance asked for, while its source finishes the records in
	// flight, saves the checkpoint and releases the lease. After it the
	// lease expires like an abandoned one. Keep it at least the source's
	// HandoffTimeout (30s by default). Default: 40s.
	HandoffTimeout time.Duration

	// RetryTimeout bounds how long Load retries throttling and transient
	// errors. Default: 30s.
	RetryTimeout time.Duration

	// Logger receives lease changes (Info) and retried failures (Warn).
	// Default: nil, which discards them.
	Logger *slog.Logger
}

// Store keeps checkpoints and shard leases in a DynamoDB table. Create it
// with New. It is safe for concurrent use. Give each pipeline instance its
// own Store (each is one lease owner); instances share the table.
type Store struct {
	client API
	table  string
	key    string
	opts   Options
	m      *lease.Manager
	log    *slog.Logger

	readyMu sync.Mutex
	ready   bool
}

var (
	_ shardflow.CheckpointStore = (*Store)(nil)
	_ shardflow.Leaser          = (*Store)(nil)
)

// New returns a store of checkpoints and leases in table. It checks the
// options and calls no API; the table is checked at first use (or by
// [Store.Check]).
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
	case o.RetryTimeout < 0:
		return nil, &shardflow.ConfigError{Field: "RetryTimeout", Reason: "negative"}
	}
	if o.KeyAttribute == "" {
		o.KeyAttribute = DefaultKeyAttribute
	}
	if o.RetryTimeout == 0 {
		o.RetryTimeout = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	lo := lease.Options{Owner: o.Owner, LeaseDuration: o.LeaseDuration, RenewInterval: o.RenewInterval,
		HandoffTimeout: o.HandoffTimeout}
	if field, reason := lo.Resolve(); field != "" {
		return nil, &shardflow.ConfigError{Field: field, Reason: reason}
	}
	o.Owner, o.LeaseDuration, o.RenewInterval, o.HandoffTimeout = lo.Owner, lo.LeaseDuration, lo.RenewInterval, lo.HandoffTimeout
	s := &Store{client: client, table: table, key: o.KeyAttribute, opts: o}
	s.log = o.Logger.With("component", "dynamodb.store", "table", table, "owner", o.Owner)
	lo.Logger = s.log
	m, err := lease.New(leaseTable{s}, lo)
	if err != nil {
		return nil, &shardflow.ConfigError{Field: "Options", Reason: err.Error()}
	}
	s.m = m
	return s, nil
}

// Owner returns this instance's owner id.
func (s *Store) Owner() string { return s.opts.Owner }

// Options returns the options with defaults filled in.
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
		return fmt.Errorf("describe table %q: %w", s.table, s.classify(err))
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
// exists is fine if its key schema matches.
func (s *Store) CreateTable(ctx context.Context) error {
	_, err := s.client.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName: aws.String(s.table),
		AttributeDefinitions: []types.AttributeDefinition{
			{AttributeName: aws.String(s.key), AttributeType: types.ScalarAttributeTypeS},
		},
		KeySchema:   []types.KeySchemaElement{{AttributeName: aws.String(s.key), KeyType: types.KeyTypeHash}},
		BillingMode: types.BillingModePayPerRequest,
	})
	var inUse *types.ResourceInUseException
	if err != nil && !errors.As(err, &inUse) {
		return fmt.Errorf("create table %q: %w", s.table, err)
	}
	bo := retry.NewBackOff(retry.Policy{InitialInterval: 20 * time.Millisecond, MaxInterval: time.Second, Multiplier: 2})
	for {
		err := s.Check(ctx)
		var te *TableError
		if err == nil || !errors.As(err, &te) || te.Err != nil {
			return err
		}
		t := time.NewTimer(bo.NextBackOff()) // not ACTIVE yet
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for table %q to become ACTIVE: %w", s.table, ctx.Err())
		case <-t.C:
		}
	}
}

// Load returns the shard's checkpoint (strongly consistent read); ok is false
// when none was saved. Throttling and transient errors are retried for
// RetryTimeout.
func (s *Store) Load(ctx context.Context, stream, shardID string) (shardflow.Checkpoint, bool, error) {
	var out *dynamodb.GetItemOutput
	bo := retry.NewBackOff(retry.Policy{InitialInterval: 50 * time.Millisecond, MaxInterval: 2 * time.Second, Multiplier: 2})
	start := time.Now()
	for {
		err := s.checkReady(ctx)
		if retry.IsPermanent(err) {
			return shardflow.Checkpoint{}, false, err
		}
		if err == nil {
			out, err = s.client.GetItem(ctx, &dynamodb.GetItemInput{
				TableName:                aws.String(s.table),
				Key:                      s.itemKey(stream, shardID),
				ConsistentRead:           aws.Bool(true),
				ProjectionExpression:     aws.String("#seq, #sub, #partial, #end, #at"),
				ExpressionAttributeNames: map[string]string{"#seq": attrSeq, "#sub": attrSub, "#partial": attrPartial, "#end": attrEnd, "#at": attrSavedAt},
			})
			if err == nil {
				break
			}
			err = s.classify(err)
		}
		if retry.IsPermanent(err) || ctx.Err() != nil || time.Since(start) > s.opts.RetryTimeout {
			return shardflow.Checkpoint{}, false, fmt.Errorf("load checkpoint of shard %s of stream %q from table %q: %w", shardID, stream, s.table, err)
		}
		wait := bo.NextBackOff()
		s.log.Warn("load checkpoint failed; retrying", "stream", stream, "shard_id", shardID, "wait", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return shardflow.Checkpoint{}, false, fmt.Errorf("load checkpoint of shard %s of stream %q: %w", shardID, stream, ctx.Err())
		case <-t.C:
		}
	}
	return decodeCheckpoint(out.Item)
}

// Save writes the shard's checkpoint if this instance holds the shard's
// lease: the write is conditional on the item's owner and lease counter. If
// another instance took the lease (or it was released), Save fails with an
// error wrapping [shardflow.ErrLeaseLost] and changes nothing. Transient
// errors are retried for up to RenewInterval/2.
func (s *Store) Save(ctx context.Context, stream, shardID string, cp shardflow.Checkpoint) error {
	if err := s.checkReady(ctx); err != nil {
		return err
	}
	if err := s.m.Checkpoint(ctx, stream, shardID, cp); err != nil {
		return fmt.Errorf("save checkpoint to table %q: %w", s.table, err)
	}
	return nil
}

// SyncLeases renews this instance's leases of stream, takes free and
// expired ones, balances with other instances and returns the eligible
// shards this instance holds. See [shardflow.Leaser] and the package
// documentation for the algorithm. A table that is missing or has the
// wrong key fails it with a *TableError.
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

// LeaseSyncInterval is how often the source calls SyncLeases:
// RenewInterval/2 (1.67s by default).
func (s *Store) LeaseSyncInterval() time.Duration { return s.m.SyncInterval() }

// LeaseDuration is Options.LeaseDuration: how long a lease may go
// unrenewed before another instance takes it.
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
