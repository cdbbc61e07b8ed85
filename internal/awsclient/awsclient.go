// Package awsclient builds the AWS SDK clients of shardflow's connectors,
// in one place, the one way: from an aws.Config, with the SDK's own retries
// turned off.
//
// shardflow retries every call itself (per shard, per entry, per lease
// write; see internal/retry and internal/awserr). The SDK's standard
// retryer would retry under it and share one retry quota per client, which
// many shards retrying at once exhaust (aws-sdk-go-v2#1665), and it would
// re-send a conditional lease write whose answer was lost, which then fails
// its own condition.
package awsclient

import (
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
)

// Kinesis returns a Kinesis client for cfg with no retryer of its own.
// Region, credentials and endpoint come from cfg (config.LoadDefaultConfig
// honours AWS_ENDPOINT_URL_KINESIS); optFns adjust the client further.
func Kinesis(cfg aws.Config, optFns ...func(*kinesis.Options)) *kinesis.Client {
	return kinesis.NewFromConfig(cfg, append([]func(*kinesis.Options){func(o *kinesis.Options) { o.Retryer = aws.NopRetryer{} }}, optFns...)...)
}

// DynamoDB returns a DynamoDB client for cfg with no retryer of its own.
// Region, credentials and endpoint come from cfg (config.LoadDefaultConfig
// honours AWS_ENDPOINT_URL_DYNAMODB); optFns adjust the client further.
func DynamoDB(cfg aws.Config, optFns ...func(*dynamodb.Options)) *dynamodb.Client {
	return dynamodb.NewFromConfig(cfg, append([]func(*dynamodb.Options){func(o *dynamodb.Options) { o.Retryer = aws.NopRetryer{} }}, optFns...)...)
}
