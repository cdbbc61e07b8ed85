package awstest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	ktypes "github.com/aws/aws-sdk-go-v2/service/kinesis/types"
)

// Bounds for waiting on emulator state changes; the emulators are configured to finish
// them in about 50 ms.
const (
	waitTimeout  = 30 * time.Second
	waitMinDelay = 20 * time.Millisecond
	waitMaxDelay = 250 * time.Millisecond
)

// CreateStream creates a provisioned stream with shardCount shards and a [UniqueName],
// waits until it is ACTIVE and returns its name. A t.Cleanup deletes the stream (with
// its consumers) when the test ends. Any failure fails the test.
func CreateStream(t testing.TB, client *kinesis.Client, shardCount int32) string {
	t.Helper()
	ctx := t.Context()
	name := UniqueName(t, "stream")
	_, err := client.CreateStream(ctx, &kinesis.CreateStreamInput{
		StreamName:        aws.String(name),
		ShardCount:        aws.Int32(shardCount),
		StreamModeDetails: &ktypes.StreamModeDetails{StreamMode: ktypes.StreamModeProvisioned},
	})
	if err != nil {
		t.Fatalf("awstest: create stream %q: %v", name, err)
	}
	t.Cleanup(func() { deleteStream(t, client, name) })

	err = kinesis.NewStreamExistsWaiter(client).Wait(ctx,
		&kinesis.DescribeStreamInput{StreamName: aws.String(name)}, waitTimeout,
		func(o *kinesis.StreamExistsWaiterOptions) {
			o.MinDelay = waitMinDelay
			o.MaxDelay = waitMaxDelay
		})
	if err != nil {
		t.Fatalf("awstest: wait for stream %q to become ACTIVE: %v", name, err)
	}
	return name
}

// deleteStream runs after t.Context is cancelled, so it uses its own bounded context.
// A stream that is still CREATING or UPDATING (the test resharded it just before ending)
// answers ResourceInUseException; retry until it settles.
func deleteStream(t testing.TB, client *kinesis.Client, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for {
		_, err := client.DeleteStream(ctx, &kinesis.DeleteStreamInput{
			StreamName:              aws.String(name),
			EnforceConsumerDeletion: aws.Bool(true),
		})
		var inUse *ktypes.ResourceInUseException
		var notFound *ktypes.ResourceNotFoundException
		switch {
		case err == nil, errors.As(err, &notFound):
			return
		case errors.As(err, &inUse) && ctx.Err() == nil:
			select {
			case <-ctx.Done():
			case <-time.After(waitMaxDelay):
			}
		default:
			t.Errorf("awstest: cleanup: delete stream %q: %v", name, err)
			return
		}
	}
}
