package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
)

// awsFlags are the AWS CLI-like flags every command takes.
type awsFlags struct {
	endpoint, dynamoEndpoint, region, profile string
}

func (a *awsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.endpoint, "endpoint-url", "", "Kinesis endpoint URL (default: AWS)")
	fs.StringVar(&a.dynamoEndpoint, "dynamodb-endpoint-url", "", "DynamoDB endpoint URL (default: AWS)")
	fs.StringVar(&a.region, "region", "", "AWS region (default: from the AWS config)")
	fs.StringVar(&a.profile, "profile", "", "AWS shared config profile")
}

func (a *awsFlags) config(ctx context.Context) (aws.Config, error) {
	var opts []func(*config.LoadOptions) error
	if a.region != "" {
		opts = append(opts, config.WithRegion(a.region))
	}
	if a.profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(a.profile))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return cfg, fmt.Errorf("load AWS config: %w", err)
	}
	if cfg.Region == "" {
		return cfg, usagef("no AWS region: set --region, AWS_REGION or a profile's region")
	}
	return cfg, nil
}

// kinesis returns a Kinesis client that leaves retries to shardflow: the
// source and sink retry per shard and per entry, with backoff.
func (a *awsFlags) kinesis(ctx context.Context) (*kinesis.Client, error) {
	cfg, err := a.config(ctx)
	if err != nil {
		return nil, err
	}
	return kinesis.NewFromConfig(cfg, func(o *kinesis.Options) {
		o.Retryer = aws.NopRetryer{}
		if a.endpoint != "" {
			o.BaseEndpoint = aws.String(a.endpoint)
		}
	}), nil
}

func (a *awsFlags) dynamodb(ctx context.Context) (*dynamodb.Client, error) {
	cfg, err := a.config(ctx)
	if err != nil {
		return nil, err
	}
	return dynamodb.NewFromConfig(cfg, func(o *dynamodb.Options) {
		if a.dynamoEndpoint != "" {
			o.BaseEndpoint = aws.String(a.dynamoEndpoint)
		}
	}), nil
}
