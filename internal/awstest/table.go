package awstest

import (
	"context"
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	dtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// TableHashKey is the name of the string (S) partition key of tables made by
// [CreateTable], matching the checkpoint store's layout of one item per shard.
const TableHashKey = "shard"

// CreateTable creates an on-demand table with a [UniqueName] and the string HASH key
// [TableHashKey], waits until it is ACTIVE and returns its name. A t.Cleanup deletes
// the table when the test ends. Any failure fails the test.
func CreateTable(t testing.TB, client *dynamodb.Client) string {
	t.Helper()
	ctx := t.Context()
	name := UniqueName(t, "table")
	_, err := client.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName: aws.String(name),
		AttributeDefinitions: []dtypes.AttributeDefinition{
			{AttributeName: aws.String(TableHashKey), AttributeType: dtypes.ScalarAttributeTypeS},
		},
		KeySchema: []dtypes.KeySchemaElement{
			{AttributeName: aws.String(TableHashKey), KeyType: dtypes.KeyTypeHash},
		},
		BillingMode: dtypes.BillingModePayPerRequest,
	})
	if err != nil {
		t.Fatalf("awstest: create table %q: %v", name, err)
	}
	t.Cleanup(func() { deleteTable(t, client, name) })

	err = dynamodb.NewTableExistsWaiter(client).Wait(ctx,
		&dynamodb.DescribeTableInput{TableName: aws.String(name)}, waitTimeout,
		func(o *dynamodb.TableExistsWaiterOptions) {
			o.MinDelay = waitMinDelay
			o.MaxDelay = waitMaxDelay
		})
	if err != nil {
		t.Fatalf("awstest: wait for table %q to become ACTIVE: %v", name, err)
	}
	return name
}

// deleteTable runs after t.Context is cancelled, so it uses its own bounded context.
func deleteTable(t testing.TB, client *dynamodb.Client, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	_, err := client.DeleteTable(ctx, &dynamodb.DeleteTableInput{TableName: aws.String(name)})
	var notFound *dtypes.ResourceNotFoundException
	if err != nil && !errors.As(err, &notFound) {
		t.Errorf("awstest: cleanup: delete table %q: %v", name, err)
	}
}
