package awstest_test

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	dtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	ktypes "github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/shardflow/shardflow/internal/awstest"
)

// record is the part of a Kinesis record the smoke test compares.
type record struct {
	ShardID        string
	SequenceNumber string
	PartitionKey   string
	Data           string
}

func TestKinesisEmulatorReturnsEveryPutRecordFromItsShardInOrder(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	client := awstest.KinesisClient(t)
	stream := awstest.CreateStream(t, client, 2)

	const n = 20
	entries := make([]ktypes.PutRecordsRequestEntry, n)
	for i := range entries {
		entries[i] = ktypes.PutRecordsRequestEntry{
			PartitionKey: aws.String(fmt.Sprintf("key-%02d", i)),
			Data:         fmt.Appendf(nil, "payload %02d", i),
		}
	}
	put, err := client.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String(stream), Records: entries})
	if err != nil {
		t.Fatalf("PutRecords: %v", err)
	}
	if got := aws.ToInt32(put.FailedRecordCount); got != 0 {
		t.Fatalf("PutRecords FailedRecordCount = %d, want 0; results: %+v", got, put.Records)
	}
	if len(put.Records) != n {
		t.Fatalf("PutRecords returned %d results, want %d", len(put.Records), n)
	}
	// Within one shard, records come back in the order they were put.
	want := make(map[string][]record)
	for i, res := range put.Records {
		shard := aws.ToString(res.ShardId)
		want[shard] = append(want[shard], record{
			ShardID:        shard,
			SequenceNumber: aws.ToString(res.SequenceNumber),
			PartitionKey:   aws.ToString(entries[i].PartitionKey),
			Data:           string(entries[i].Data),
		})
	}

	listed, err := client.ListShards(ctx, &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatalf("ListShards: %v", err)
	}
	var shardIDs []string
	for _, s := range listed.Shards {
		shardIDs = append(shardIDs, aws.ToString(s.ShardId))
	}
	slices.Sort(shardIDs)
	if len(shardIDs) != 2 {
		t.Fatalf("ListShards returned shards %q, want 2", shardIDs)
	}
	// The partition keys are fixed, so which shard each record lands on is
	// deterministic; these keys spread over both shards, so both are really read.
	if diff := cmp.Diff(shardIDs, slices.Sorted(maps.Keys(want))); diff != "" {
		t.Fatalf("shards that received records differ from ListShards (-listed +received):\n%s", diff)
	}

	for _, shardID := range shardIDs {
		t.Run(shardID, func(t *testing.T) {
			got := readShard(t, client, stream, shardID)
			if diff := cmp.Diff(want[shardID], got); diff != "" {
				t.Errorf("records read from %s mismatch (-want +got):\n%s", shardID, diff)
			}
		})
	}
}

// readShard reads a shard from TRIM_HORIZON until it is caught up.
func readShard(t *testing.T, client *kinesis.Client, stream, shardID string) []record {
	t.Helper()
	ctx := t.Context()
	it, err := client.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{
		StreamName:        aws.String(stream),
		ShardId:           aws.String(shardID),
		ShardIteratorType: ktypes.ShardIteratorTypeTrimHorizon,
	})
	if err != nil {
		t.Fatalf("GetShardIterator(%s, TRIM_HORIZON): %v", shardID, err)
	}
	var got []record
	iter := it.ShardIterator
	for calls := 0; iter != nil; calls++ {
		if calls == 20 {
			t.Fatalf("GetRecords on %s still returning data after %d calls", shardID, calls)
		}
		out, err := client.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: iter})
		if err != nil {
			t.Fatalf("GetRecords(%s): %v", shardID, err)
		}
		for _, r := range out.Records {
			got = append(got, record{
				ShardID:        shardID,
				SequenceNumber: aws.ToString(r.SequenceNumber),
				PartitionKey:   aws.ToString(r.PartitionKey),
				Data:           string(r.Data),
			})
		}
		if len(out.Records) == 0 && aws.ToInt64(out.MillisBehindLatest) == 0 {
			break
		}
		iter = out.NextShardIterator
	}
	return got
}

func TestDynamoDBEmulatorConditionalPutSucceedsOnceThenFails(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	client := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, client)

	item := map[string]dtypes.AttributeValue{
		awstest.TableHashKey: &dtypes.AttributeValueMemberS{Value: "shardId-000000000000"},
		"sequence_number":    &dtypes.AttributeValueMemberS{Value: "49590338271490256608559692538361571095921575989136588898"},
		"owner":              &dtypes.AttributeValueMemberS{Value: "worker-1"},
	}
	putIfAbsent := func() error {
		_, err := client.PutItem(ctx, &dynamodb.PutItemInput{
			TableName:                aws.String(table),
			Item:                     item,
			ConditionExpression:      aws.String("attribute_not_exists(#k)"),
			ExpressionAttributeNames: map[string]string{"#k": awstest.TableHashKey},
		})
		return err
	}

	if err := putIfAbsent(); err != nil {
		t.Fatalf("first conditional PutItem: %v", err)
	}
	err := putIfAbsent()
	var ccf *dtypes.ConditionalCheckFailedException
	if !errors.As(err, &ccf) {
		t.Fatalf("second conditional PutItem error = %v (%T), want *types.ConditionalCheckFailedException", err, err)
	}

	got, err := client.GetItem(ctx, &dynamodb.GetItemInput{
		TableName:      aws.String(table),
		Key:            map[string]dtypes.AttributeValue{awstest.TableHashKey: item[awstest.TableHashKey]},
		ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		t.Fatalf("GetItem: %v", err)
	}
	if diff := cmp.Diff(item, got.Item, cmpopts.IgnoreUnexported(dtypes.AttributeValueMemberS{})); diff != "" {
		t.Errorf("GetItem mismatch (-want +got):\n%s", diff)
	}
}

func TestKinesisEmulatorReportsMissingStreamAsResourceNotFound(t *testing.T) {
	t.Parallel()
	client := awstest.KinesisClient(t, awstest.KinesisNoRetries)
	_, err := client.DescribeStreamSummary(t.Context(), &kinesis.DescribeStreamSummaryInput{
		StreamName: aws.String(awstest.UniqueName(t, "missing")),
	})
	var notFound *ktypes.ResourceNotFoundException
	if !errors.As(err, &notFound) {
		t.Fatalf("DescribeStreamSummary of a missing stream: error = %v (%T), want *types.ResourceNotFoundException", err, err)
	}
}

func TestPartialFailureFailsSomeEntriesAndWritesTheOthers(t *testing.T) {
	t.Parallel()
	fc := &awstest.FaultClient{Decide: func(string, int) awstest.Fault { return awstest.PartialFailure }}
	client := awstest.KinesisClient(t, awstest.KinesisNoRetries, awstest.KinesisFaults(fc))
	plain := awstest.KinesisClient(t)
	stream := awstest.CreateStream(t, plain, 1)

	const n = 30
	entries := make([]ktypes.PutRecordsRequestEntry, n)
	for i := range entries {
		entries[i] = ktypes.PutRecordsRequestEntry{PartitionKey: aws.String("k"), Data: fmt.Appendf(nil, "d%02d", i)}
	}
	put, err := client.PutRecords(t.Context(), &kinesis.PutRecordsInput{StreamName: aws.String(stream), Records: entries})
	if err != nil {
		t.Fatalf("PutRecords: %v", err)
	}
	var want []string
	failed := 0
	for i, r := range put.Records {
		if r.ErrorCode != nil {
			failed++
			if got := aws.ToString(r.ErrorCode); got != "ProvisionedThroughputExceededException" {
				t.Errorf("entry %d: error code %q", i, got)
			}
			continue
		}
		want = append(want, string(entries[i].Data))
	}
	if len(put.Records) != n || failed == 0 || failed == n || int(aws.ToInt32(put.FailedRecordCount)) != failed {
		t.Fatalf("%d results, %d failed, FailedRecordCount %d; want %d results, some but not all failed and counted",
			len(put.Records), failed, aws.ToInt32(put.FailedRecordCount), n)
	}
	shards, err := plain.ListShards(t.Context(), &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatal(err)
	}
	it, err := plain.GetShardIterator(t.Context(), &kinesis.GetShardIteratorInput{StreamName: aws.String(stream),
		ShardId: shards.Shards[0].ShardId, ShardIteratorType: ktypes.ShardIteratorTypeTrimHorizon})
	if err != nil {
		t.Fatal(err)
	}
	got, err := plain.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: it.ShardIterator})
	if err != nil {
		t.Fatal(err)
	}
	var written []string
	for _, r := range got.Records {
		written = append(written, string(r.Data))
	}
	if diff := cmp.Diff(want, written); diff != "" {
		t.Errorf("records on the stream mismatch (-entries reported written +read):\n%s", diff)
	}
}

// A client that gives up on a request while its body is still being sent
// (a timeout, a cancelled context) must not take the DynamoDB emulator down:
// dynalite rethrows the aborted request's error, which scripts/emulators.sh
// guards against. Every test after such an abort would fail otherwise.
func TestDynamoDBEmulatorSurvivesAnAbortedRequest(t *testing.T) {
	endpoint := awstest.DynamoDBEndpoint(t)
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		conn, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		// Promise 1,000 bytes of body, send a few, and hang up.
		fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-amz-json-1.0\r\n"+
			"X-Amz-Target: DynamoDB_20120810.ListTables\r\nContent-Length: 1000\r\n\r\n{\"Limit\":", u.Host)
		conn.Close()
	}
	client := awstest.DynamoDBClient(t, awstest.DynamoDBNoRetries)
	for i := range 10 {
		if _, err := client.ListTables(t.Context(), &dynamodb.ListTablesInput{}); err != nil {
			t.Fatalf("ListTables #%d after clients aborted requests: %v", i+1, err)
		}
	}
}
