package kinesisfake_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
)

// A test turns Kinesis' limits on with Options.Limits. Here a producer
// writes 1,500 records at once to a one-shard stream: the shard takes a
// burst of 1,000 and throttles the rest entry by entry, as Kinesis does;
// a second later it takes them. The clock is frozen (Options.Now) so that
// the output does not depend on the machine's speed; tests under
// testing/synctest need no clock of their own.
func ExampleAWSLimits() {
	ctx := context.Background()
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := kinesisfake.New(func(o *kinesisfake.Options) {
		o.Limits = kinesisfake.AWSLimits()
		o.Now = func() time.Time { return clock }
	})
	if _, err := f.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String("orders"), ShardCount: aws.Int32(1)}); err != nil {
		panic(err)
	}
	batch := make([]types.PutRecordsRequestEntry, 500)
	for i := range batch {
		batch[i] = types.PutRecordsRequestEntry{Data: make([]byte, 100), PartitionKey: aws.String(fmt.Sprint("order-", i))}
	}
	put := func() *kinesis.PutRecordsOutput {
		out, err := f.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String("orders"), Records: batch})
		if err != nil {
			panic(err)
		}
		return out
	}
	for range 3 {
		fmt.Println("failed entries:", aws.ToInt32(put().FailedRecordCount))
	}
	out := put()
	fmt.Println(aws.ToString(out.Records[0].ErrorCode)+":", aws.ToString(out.Records[0].ErrorMessage))

	_, err := f.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: aws.String("orders"), Data: []byte("x"), PartitionKey: aws.String("k")})
	var throttled *types.ProvisionedThroughputExceededException
	fmt.Println("PutRecord throttled:", errors.As(err, &throttled))

	clock = clock.Add(time.Second)
	fmt.Println("a second later, failed entries:", aws.ToInt32(put().FailedRecordCount))

	stats, err := f.ShardStats("orders")
	if err != nil {
		panic(err)
	}
	s := stats[0]
	fmt.Printf("%s: %d records written, %d throttled (%.0f%% of entries)\n", s.ShardID, s.WrittenRecords, s.ThrottledRecords,
		100*float64(s.ThrottledRecords)/float64(s.WrittenRecords+s.ThrottledRecords))
	// Output:
	// failed entries: 0
	// failed entries: 0
	// failed entries: 500
	// ProvisionedThroughputExceededException: Rate exceeded for shard shardId-000000000000 in stream orders under account 000000000000.
	// PutRecord throttled: true
	// a second later, failed entries: 0
	// shardId-000000000000: 1500 records written, 1001 throttled (40% of entries)
}
