package kinesissource_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	dtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// noTableAPI is a DynamoDB API whose table does not exist.
type noTableAPI struct{}

func notFound() error {
	return &dtypes.ResourceNotFoundException{Message: new("Requested resource not found")}
}

func (noTableAPI) GetItem(context.Context, *dynamodb.GetItemInput, ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error) {
	return nil, notFound()
}
func (noTableAPI) PutItem(context.Context, *dynamodb.PutItemInput, ...func(*dynamodb.Options)) (*dynamodb.PutItemOutput, error) {
	return nil, notFound()
}
func (noTableAPI) UpdateItem(context.Context, *dynamodb.UpdateItemInput, ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error) {
	return nil, notFound()
}
func (noTableAPI) BatchGetItem(context.Context, *dynamodb.BatchGetItemInput, ...func(*dynamodb.Options)) (*dynamodb.BatchGetItemOutput, error) {
	return nil, notFound()
}
func (noTableAPI) DescribeTable(context.Context, *dynamodb.DescribeTableInput, ...func(*dynamodb.Options)) (*dynamodb.DescribeTableOutput, error) {
	return nil, notFound()
}
func (noTableAPI) CreateTable(context.Context, *dynamodb.CreateTableInput, ...func(*dynamodb.Options)) (*dynamodb.CreateTableOutput, error) {
	return nil, errors.New("not called by the source")
}

func TestAMissingLeaseTableStopsTheSourceWithAnErrorAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 2)
		put(t, f, "in", 0, 10, 2)
		store, err := dynamostore.New(noTableAPI{}, "missing")
		if err != nil {
			t.Fatal(err)
		}
		src := newSource(t, f, "in", func(o *kinesissource.Options) {
			o.Checkpoint = store
			o.InitialPosition = kinesissource.TrimHorizon()
		})
		ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
		defer cancel()
		start := time.Now()
		err = shardflow.Source(src).Sink(&collector{}).Run(ctx)
		if !errors.Is(err, dynamostore.ErrNoTable) {
			t.Fatalf("Run = %v after %v; want an error wrapping dynamostore.ErrNoTable", err, time.Since(start))
		}
		// The first lease sync finds the table missing: no retries, no
		// waiting for the next sync.
		if d := time.Since(start); d > 0 {
			t.Errorf("Run returned after %v of virtual time; want it at the first sync", d)
		}
	})
}
