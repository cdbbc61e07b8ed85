package kinesissink

import (
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/shardflow/shardflow/internal/awsclient"
)

// NewFromConfig returns a sink writing to stream with a Kinesis client built
// from cfg: the easy way to make a sink.
//
//	cfg, err := config.LoadDefaultConfig(ctx)
//	...
//	sink, err := kinesissink.NewFromConfig(cfg, "large-orders")
//
// The client's own retries are turned off (aws.NopRetryer), because the sink
// retries PutRecords itself, per entry, with Options.Retry. Region,
// credentials and endpoint come from cfg; a cfg from config.LoadDefaultConfig
// honours AWS_ENDPOINT_URL_KINESIS, the way to point the sink at an emulator.
// Options and errors are those of [New].
func NewFromConfig(cfg aws.Config, stream string, optFns ...func(*Options)) (*Sink, error) {
	return New(awsclient.Kinesis(cfg), stream, optFns...)
}

// NewProducerFromConfig returns a producer writing to stream with a Kinesis
// client built from cfg, as [NewFromConfig] builds it: the easy way to make
// a producer. Options and errors are those of [NewProducer].
func NewProducerFromConfig(cfg aws.Config, stream string, optFns ...func(*Options)) (*Producer, error) {
	return NewProducer(awsclient.Kinesis(cfg), stream, optFns...)
}
