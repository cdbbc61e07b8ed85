package main

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/shardflow/shardflow/internal/awstest"
)

// TestDemo runs the example's demo against the emulators, as CI does. The
// example loads its AWS settings the SDK's standard way, so the test sets
// the environment `. .emulators/env` would: the emulators' endpoints, a
// region and fake credentials, and no shared config or instance metadata.
func TestDemo(t *testing.T) {
	t.Setenv("AWS_ENDPOINT_URL_KINESIS", awstest.KinesisEndpoint(t))
	t.Setenv("AWS_ENDPOINT_URL_DYNAMODB", awstest.DynamoDBEndpoint(t))
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "fake")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "fake")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	suffix := awstest.UniqueName(t, "etl")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	lg := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	purchases, dead, err := run(ctx, lg, suffix+"-in", suffix+"-out", suffix+"-dlq", suffix+"-state", true)
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
