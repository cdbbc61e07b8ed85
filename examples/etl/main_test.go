package main

import (
	"context"
	"testing"
	"time"

	"github.com/shardflow/shardflow/internal/awstest"
)

// TestDemo runs the example's demo against the emulators, as CI does.
func TestDemo(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	suffix := awstest.UniqueName(t, "etl")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	purchases, dead, err := run(ctx, awstest.KinesisEndpoint(t), awstest.DynamoDBEndpoint(t),
		suffix+"-in", suffix+"-out", suffix+"-dlq", suffix+"-state", true)
	if err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatalf("the demo did not finish by itself: it ran until the test's timeout")
	}
	// 300 sample clicks: every third is a purchase, 6 are broken JSON (2
	// of which would have been purchases).
	if purchases != 98 || dead != 6 {
		t.Errorf("%d purchases and %d dead letters; want 98 and 6", purchases, dead)
	}
}
