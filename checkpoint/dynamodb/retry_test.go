package dynamostore_test

import (
	"context"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	dtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
)

// attemptsAPI is a DynamoDB API with an empty, usable table that records how
// many attempts the SDK would make of each write, given the per-call
// options, for a client configured with the standard retryer.
type attemptsAPI struct {
	mu       sync.Mutex
	attempts map[string][]int // by operation
}

func (a *attemptsAPI) record(op string, optFns []func(*dynamodb.Options)) {
	o := dynamodb.Options{Retryer: retry.NewStandard()}
	for _, fn := range optFns {
		fn(&o)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.attempts == nil {
		a.attempts = map[string][]int{}
	}
	a.attempts[op] = append(a.attempts[op], o.Retryer.MaxAttempts())
}

func (a *attemptsAPI) GetItem(context.Context, *dynamodb.GetItemInput, ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error) {
	return &dynamodb.GetItemOutput{}, nil
}
func (a *attemptsAPI) PutItem(_ context.Context, _ *dynamodb.PutItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.PutItemOutput, error) {
	a.record("PutItem", optFns)
	return &dynamodb.PutItemOutput{}, nil
}
func (a *attemptsAPI) UpdateItem(_ context.Context, _ *dynamodb.UpdateItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error) {
	a.record("UpdateItem", optFns)
	return &dynamodb.UpdateItemOutput{}, nil
}
func (a *attemptsAPI) BatchGetItem(context.Context, *dynamodb.BatchGetItemInput, ...func(*dynamodb.Options)) (*dynamodb.BatchGetItemOutput, error) {
	return &dynamodb.BatchGetItemOutput{}, nil
}
func (a *attemptsAPI) DescribeTable(_ context.Context, in *dynamodb.DescribeTableInput, _ ...func(*dynamodb.Options)) (*dynamodb.DescribeTableOutput, error) {
	return &dynamodb.DescribeTableOutput{Table: &dtypes.TableDescription{
		TableName:            in.TableName,
		TableStatus:          dtypes.TableStatusActive,
		AttributeDefinitions: []dtypes.AttributeDefinition{{AttributeName: aws.String("shard"), AttributeType: dtypes.ScalarAttributeTypeS}},
		KeySchema:            []dtypes.KeySchemaElement{{AttributeName: aws.String("shard"), KeyType: dtypes.KeyTypeHash}},
	}}, nil
}
func (a *attemptsAPI) CreateTable(context.Context, *dynamodb.CreateTableInput, ...func(*dynamodb.Options)) (*dynamodb.CreateTableOutput, error) {
	return &dynamodb.CreateTableOutput{}, nil
}

func TestConditionalLeaseWritesAreSentOnceBySDKClientsThatRetry(t *testing.T) {
	api := &attemptsAPI{}
	s, err := dynamostore.New(api, "t")
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if held, err := s.SyncLeases(ctx, "st", []string{"a"}); err != nil || len(held) != 1 {
		t.Fatalf("SyncLeases = %v, %v", held, err)
	}
	if err := s.Save(ctx, "st", "a", shardflow.Checkpoint{}); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseLease(ctx, "st", "a"); err != nil {
		t.Fatal(err)
	}
	// PutItem: the heartbeat item's creation and the lease's; UpdateItem:
	// the heartbeat, the checkpoint and the release.
	for op, want := range map[string]int{"PutItem": 2, "UpdateItem": 3} {
		got := api.attempts[op]
		if len(got) != want {
			t.Errorf("%d %s calls; want %d", len(got), op, want)
		}
		for _, n := range got {
			if n != 1 {
				t.Errorf("%s may be sent %d times by the SDK's retryer; want once: the lease algorithm re-reads the item instead", op, n)
			}
		}
	}
}
