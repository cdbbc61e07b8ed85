package kinesissink

import (
	"context"

	"github.com/aws/aws-sdk-go-v2/service/kinesis"
)

// API is the part of the Kinesis Data Streams API the sink and the producer
// call, with the exact aws-sdk-go-v2 signatures: a *kinesis.Client satisfies
// it, and so does the in-memory fake of package shardflowtest/kinesisfake.
//
// ListShards is called only in ordered and aggregating modes, to predict each
// record's shard.
type API interface {
	PutRecords(ctx context.Context, in *kinesis.PutRecordsInput, optFns ...func(*kinesis.Options)) (*kinesis.PutRecordsOutput, error)
	ListShards(ctx context.Context, in *kinesis.ListShardsInput, optFns ...func(*kinesis.Options)) (*kinesis.ListShardsOutput, error)
}

var _ API = (*kinesis.Client)(nil)
