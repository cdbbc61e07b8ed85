package dynamostore_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	dtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/checkpointtest"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	"github.com/shardflow/shardflow/internal/awstest"
)

func newStore(t *testing.T, client dynamostore.API, table string, optFns ...func(*dynamostore.Options)) *dynamostore.Store {
	t.Helper()
	s, err := dynamostore.New(client, table, optFns...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	client := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, client)
	checkpointtest.Run(t, func(t *testing.T) shardflow.CheckpointStore {
		return checkpointtest.Leasing(newStore(t, client, table))
	})
}

func TestLeaseConformance(t *testing.T) {
	client := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, client)
	checkpointtest.RunLeases(t, func(*testing.T) checkpointtest.NewInstance {
		return func(t *testing.T, owner string) checkpointtest.LeaseStore {
			return newStore(t, client, table, func(o *dynamostore.Options) {
				o.Owner = owner + "-" + t.Name()
				o.LeaseDuration, o.HandoffTimeout = checkpointtest.LeaseDuration, 4*checkpointtest.LeaseDuration
			})
		}
	})
}

func TestAMissingTableIsAClearTypedErrorAtFirstUse(t *testing.T) {
	client := awstest.DynamoDBClient(t, awstest.DynamoDBNoRetries)
	s := newStore(t, client, awstest.UniqueName(t, "missing"))
	ctx := t.Context()
	check := func(what string, err error) {
		t.Helper()
		var te *dynamostore.TableError
		if !errors.Is(err, dynamostore.ErrNoTable) || !errors.As(err, &te) {
			t.Errorf("%s = %v; want a *TableError wrapping ErrNoTable", what, err)
			return
		}
		if !strings.Contains(err.Error(), "does not exist") {
			t.Errorf("%s error %q does not say the table does not exist", what, err)
		}
	}
	_, _, err := s.Load(ctx, "st", "shardId-000000000000")
	check("Load", err)
	_, err = s.SyncLeases(ctx, "st", []string{"shardId-000000000000"})
	check("SyncLeases", err)
	check("Save", s.Save(ctx, "st", "shardId-000000000000", shardflow.Checkpoint{}))
	check("Check", s.Check(ctx))
}

func TestAWrongKeySchemaIsAClearTypedError(t *testing.T) {
	client := awstest.DynamoDBClient(t)
	for _, tc := range []struct {
		name string
		attr string
		typ  dtypes.ScalarAttributeType
	}{
		{"another key name", "id", dtypes.ScalarAttributeTypeS},
		{"a number key", "shard", dtypes.ScalarAttributeTypeN},
	} {
		t.Run(tc.name, func(t *testing.T) {
			table := awstest.UniqueName(t, "badkey")
			_, err := client.CreateTable(t.Context(), &dynamodb.CreateTableInput{
				TableName:            aws.String(table),
				AttributeDefinitions: []dtypes.AttributeDefinition{{AttributeName: aws.String(tc.attr), AttributeType: tc.typ}},
				KeySchema:            []dtypes.KeySchemaElement{{AttributeName: aws.String(tc.attr), KeyType: dtypes.KeyTypeHash}},
				BillingMode:          dtypes.BillingModePayPerRequest,
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				_, _ = client.DeleteTable(context.Background(), &dynamodb.DeleteTableInput{TableName: aws.String(table)})
			})
			s := newStore(t, client, table)
			waitActive(t, s)
			_, _, err = s.Load(t.Context(), "st", "shardId-000000000000")
			if !errors.Is(err, dynamostore.ErrKeySchema) || !strings.Contains(err.Error(), `"shard"`) {
				t.Errorf("Load = %v; want ErrKeySchema naming the key it wants", err)
			}
			if _, err := s.SyncLeases(t.Context(), "st", []string{"a"}); !errors.Is(err, dynamostore.ErrKeySchema) {
				t.Errorf("SyncLeases = %v; want ErrKeySchema", err)
			}
		})
	}
}

// waitActive waits until Check stops reporting the table as not ACTIVE.
func waitActive(t *testing.T, s *dynamostore.Store) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		err := s.Check(t.Context())
		if err == nil || !strings.Contains(err.Error(), "not ACTIVE") {
			return
		}
	}
	t.Fatal("table never became ACTIVE")
}

func TestCreateTableMakesAUsableTableAndAcceptsAnExistingOne(t *testing.T) {
	client := awstest.DynamoDBClient(t)
	table := awstest.UniqueName(t, "created")
	t.Cleanup(func() {
		_, _ = client.DeleteTable(context.Background(), &dynamodb.DeleteTableInput{TableName: aws.String(table)})
	})
	s := newStore(t, client, table)
	for range 2 {
		if err := s.CreateTable(t.Context()); err != nil {
			t.Fatalf("CreateTable: %v", err)
		}
	}
	if err := s.Check(t.Context()); err != nil {
		t.Fatalf("Check after CreateTable: %v", err)
	}
	if held, err := s.SyncLeases(t.Context(), "st", []string{"a"}); err != nil || len(held) != 1 {
		t.Fatalf("SyncLeases on the new table = %v, %v", held, err)
	}
}

func TestThrottledOrFailingDynamoDBGivesClearErrorsOrIsRetried(t *testing.T) {
	good := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, good)
	t.Run("throttled without end: Load gives up after Retry.Timeout naming the throttling", func(t *testing.T) {
		fc := &awstest.FaultClient{Decide: func(op string, n int) awstest.Fault {
			if op == "GetItem" {
				return awstest.Throttle
			}
			return awstest.Pass
		}}
		s := newStore(t, awstest.DynamoDBClient(t, awstest.DynamoDBNoRetries, awstest.DynamoDBFaults(fc)), table,
			func(o *dynamostore.Options) { o.Retry.Timeout = time.Second })
		_, _, err := s.Load(t.Context(), "st", "a")
		if err == nil || !strings.Contains(err.Error(), "ProvisionedThroughputExceeded") || !strings.Contains(err.Error(), "load checkpoint") {
			t.Errorf("Load = %v; want the throttling error after retries", err)
		}
		if fc.Injected(awstest.Throttle) < 3 {
			t.Errorf("Load tried %d times; want retries", fc.Injected(awstest.Throttle))
		}
	})
	t.Run("a few 500s and resets are retried and every call succeeds", func(t *testing.T) {
		fc := &awstest.FaultClient{Decide: func(op string, n int) awstest.Fault {
			switch {
			case op == "DescribeTable":
				return awstest.Pass
			case n <= 2:
				return awstest.ServerError
			case n == 3:
				return awstest.ResetAfter // served, but the answer is lost
			}
			return awstest.Pass
		}}
		s := newStore(t, awstest.DynamoDBClient(t, awstest.DynamoDBNoRetries, awstest.DynamoDBFaults(fc)), table)
		ctx := t.Context()
		stream := awstest.UniqueName(t, "st")
		held, err := s.SyncLeases(ctx, stream, []string{"a", "b"})
		if err != nil || len(held) != 2 {
			t.Fatalf("SyncLeases = %v, %v; want both leases", held, err)
		}
		cp := shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: "77"}}
		if err := s.Save(ctx, stream, "a", cp); err != nil {
			t.Fatalf("Save: %v", err)
		}
		if got, _, err := s.Load(ctx, stream, "a"); err != nil || got != cp {
			t.Fatalf("Load = %+v, %v", got, err)
		}
		if fc.Injected(awstest.ServerError) == 0 || fc.Injected(awstest.ResetAfter) == 0 {
			t.Errorf("no faults injected")
		}
	})
	t.Run("a throttled SyncLeases says so", func(t *testing.T) {
		fc := &awstest.FaultClient{Decide: func(op string, n int) awstest.Fault {
			if op == "BatchGetItem" {
				return awstest.Throttle
			}
			return awstest.Pass
		}}
		s := newStore(t, awstest.DynamoDBClient(t, awstest.DynamoDBNoRetries, awstest.DynamoDBFaults(fc)), table,
			func(o *dynamostore.Options) { o.LeaseDuration = time.Second })
		_, err := s.SyncLeases(t.Context(), "st", []string{"a"})
		if err == nil || !strings.Contains(err.Error(), "ProvisionedThroughputExceeded") || !strings.Contains(err.Error(), "read leases") {
			t.Errorf("SyncLeases = %v; want a read-leases error naming the throttling", err)
		}
	})
}

// syncLoop syncs s every LeaseSyncInterval until ctx ends, recording every
// shard it was ever told it holds.
type syncLoop struct {
	s    *dynamostore.Store
	mu   sync.Mutex
	held []string
	ever map[string]bool
	errs atomic.Int32
}

func (l *syncLoop) run(ctx context.Context, stream string, shards []string) {
	tick := time.NewTicker(l.s.LeaseSyncInterval())
	defer tick.Stop()
	for {
		held, err := l.s.SyncLeases(ctx, stream, shards)
		l.mu.Lock()
		if err == nil {
			for _, id := range l.held {
				if !slices.Contains(held, id) {
					_ = l.s.ReleaseLease(ctx, stream, id) // as the source does
				}
			}
			l.held = held
			for _, id := range held {
				l.ever[id] = true
			}
		} else if ctx.Err() == nil {
			l.errs.Add(1)
		}
		l.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (l *syncLoop) holds() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.held)
}

func TestLeasesSurviveADynamoDBOutageShorterThanTheirValidity(t *testing.T) {
	good := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, good)
	var down atomic.Bool
	fc := &awstest.FaultClient{Decide: func(op string, n int) awstest.Fault {
		if down.Load() {
			if n%2 == 0 {
				return awstest.ResetBefore
			}
			return awstest.ServerError
		}
		return awstest.Pass
	}}
	// An instance keeps its leases for the lease duration less a renew
	// interval after its last heartbeat, which may be a renew interval old
	// when the outage starts: any outage shorter than LeaseDuration - 2 ×
	// RenewInterval (3s here) is survived. The outage is half that: the
	// other half is the margin for a's first heartbeat after it, which a
	// loaded machine can delay.
	const leaseDuration, outage = 9 * time.Second, 1500 * time.Millisecond
	opts := func(owner string) func(*dynamostore.Options) {
		return func(o *dynamostore.Options) { o.Owner, o.LeaseDuration = owner, leaseDuration }
	}
	a := &syncLoop{s: newStore(t, awstest.DynamoDBClient(t, awstest.DynamoDBNoRetries, awstest.DynamoDBFaults(fc)), table, opts("a")), ever: map[string]bool{}}
	b := &syncLoop{s: newStore(t, good, table, opts("b")), ever: map[string]bool{}}
	shards := []string{"s0", "s1", "s2", "s3"}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { a.run(ctx, "st", shards) })
	time.Sleep(time.Second) // a takes all, then b joins and balances
	wg.Go(func() { b.run(ctx, "st", shards) })
	deadline := time.Now().Add(30 * time.Second)
	for len(a.holds()) != 2 || len(b.holds()) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("not balanced: a %v, b %v", a.holds(), b.holds())
		}
		time.Sleep(100 * time.Millisecond)
	}
	before := a.holds()
	b.mu.Lock()
	clear(b.ever)
	b.mu.Unlock()

	down.Store(true) // a cannot reach DynamoDB; b can
	time.Sleep(outage)
	down.Store(false)
	time.Sleep(2 * leaseDuration)

	if got := a.holds(); !slices.Equal(got, before) {
		t.Errorf("after a %v outage a holds %v; want %v still", outage, got, before)
	}
	b.mu.Lock()
	for _, id := range before {
		if b.ever[id] {
			t.Errorf("b held %s during a's outage", id)
		}
	}
	b.mu.Unlock()
	if fc.Injected(awstest.ServerError)+fc.Injected(awstest.ResetBefore) == 0 {
		t.Fatal("no faults injected")
	}

	// A longer outage: b takes a's leases, and a stops reading them.
	down.Store(true)
	deadline = time.Now().Add(5 * leaseDuration)
	for len(b.holds()) != 4 || len(a.holds()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after a long outage: a holds %v, b %v; want b all, a none", a.holds(), b.holds())
		}
		time.Sleep(100 * time.Millisecond)
	}
	down.Store(false)
	cancel()
	wg.Wait()
}

// A lease write that DynamoDB applied but whose answer was lost must not be
// re-sent blindly: the re-send fails its condition, although the table names
// this instance. The store is given a client with the SDK's standard
// retryer, as users' clients have.
func TestALeaseWriteAppliedButWhoseAnswerWasLostKeepsTheLease(t *testing.T) {
	table := awstest.CreateTable(t, awstest.DynamoDBClient(t))
	fc := &awstest.FaultClient{Decide: func(op string, n int) awstest.Fault {
		if (op == "PutItem" || op == "UpdateItem") && n == 1 {
			return awstest.ResetAfter // the take, then the first renewal
		}
		return awstest.Pass
	}}
	s := newStore(t, awstest.DynamoDBClient(t, awstest.DynamoDBFaults(fc)), table, func(o *dynamostore.Options) {
		o.LeaseDuration = 3 * time.Second
	})
	ctx := t.Context()
	stream := awstest.UniqueName(t, "st")
	held, err := s.SyncLeases(ctx, stream, []string{"a"})
	if err != nil || !slices.Equal(held, []string{"a"}) {
		t.Fatalf("SyncLeases after a take whose answer was lost = %v, %v; want [a]", held, err)
	}
	// Sync until the renewal (the first UpdateItem) has been sent and its
	// answer lost.
	for deadline := time.Now().Add(time.Minute); fc.Injected(awstest.ResetAfter) < 2; {
		if time.Now().After(deadline) {
			t.Fatal("no renewal within a minute")
		}
		time.Sleep(s.LeaseSyncInterval()) // the source's sync cadence
		if held, err = s.SyncLeases(ctx, stream, []string{"a"}); err != nil || !slices.Equal(held, []string{"a"}) {
			t.Fatalf("SyncLeases = %v, %v; want [a] throughout", held, err)
		}
	}
	if held, err = s.SyncLeases(ctx, stream, []string{"a"}); err != nil || !slices.Equal(held, []string{"a"}) {
		t.Fatalf("SyncLeases after a renewal whose answer was lost = %v, %v; want [a]", held, err)
	}
	if err := s.Save(ctx, stream, "a", shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: "5"}}); err != nil {
		t.Errorf("Save = %v; want the lease still held", err)
	}
	st, err := s.Shards(ctx, stream, []string{"a"})
	if err != nil || len(st) != 1 || st[0].Owner != s.Owner() {
		t.Errorf("Shards = %+v, %v; want a owned by %s", st, err, s.Owner())
	}
}
