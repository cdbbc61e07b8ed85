package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
)

const createStreamDoc = `Creates a provisioned stream of --shards shards and waits until it is ACTIVE (at most
--wait). Meant for local emulators and tests; for production streams use your
infrastructure tooling.`

func cmdCreateStream(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("create-stream", "create-stream NAME [--shards N] [flags]", createStreamDoc)
	var a awsFlags
	a.register(fs.FlagSet, true, false)
	shards := fs.Int("shards", 1, "number of shards")
	wait := fs.Duration("wait", 2*time.Minute, "how long to wait for the stream to become ACTIVE")
	positional, err := fs.parse(args, stdout)
	if err != nil {
		return err
	}
	if len(positional) != 1 {
		return usagef("want one stream name, got %d arguments", len(positional))
	}
	name := positional[0]
	if *shards < 1 || *shards > 10000 {
		return usagef("--shards %d: want 1 to 10000", *shards)
	}
	if *wait <= 0 {
		return usagef("--wait %v: want a positive duration", *wait)
	}
	kc, err := a.kinesis(ctx)
	if err != nil {
		return err
	}
	if _, err := kc.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(int32(*shards))}); err != nil {
		return fmt.Errorf("create stream %q: %w", name, err)
	}
	if err := kinesis.NewStreamExistsWaiter(kc).Wait(ctx, &kinesis.DescribeStreamInput{StreamName: aws.String(name)}, *wait,
		func(o *kinesis.StreamExistsWaiterOptions) {
			o.MinDelay, o.MaxDelay = 100*time.Millisecond, 2*time.Second
		}); err != nil {
		return fmt.Errorf("wait for stream %q to be ACTIVE: %w", name, err)
	}
	fmt.Fprintf(stderr, "created stream %s (%d shards): ACTIVE\n", name, *shards)
	return nil
}

const createTableDoc = `Creates a DynamoDB table of checkpoints and leases for "relay --table" (on-demand
capacity, HASH key "shard" of type S) and waits until it is ACTIVE. A table that exists
already with that key is fine. Meant for local emulators and tests; for production tables
use your infrastructure tooling.`

func cmdCreateTable(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("create-table", "create-table NAME [flags]", createTableDoc)
	var a awsFlags
	a.register(fs.FlagSet, false, true)
	logger := registerLogLevel(fs, stderr)
	positional, err := fs.parse(args, stdout)
	if err != nil {
		return err
	}
	if len(positional) != 1 {
		return usagef("want one table name, got %d arguments", len(positional))
	}
	name := positional[0]
	log := logger()
	a.health.log = log
	dc, err := a.dynamodb(ctx)
	if err != nil {
		return err
	}
	store, err := dynamostore.New(dc, name, func(o *dynamostore.Options) { o.Logger = log })
	if err != nil {
		return err
	}
	if err := store.CreateTable(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "table %s: ACTIVE\n", name)
	return nil
}
