package dynamostore_test

import (
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/shardflow/shardflow/internal/logtest"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	"github.com/shardflow/shardflow/internal/awstest"
)

func TestZeroValuedOptionsValidateAndRunWithTheDocumentedDefaults(t *testing.T) {
	client := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, client)
	s, err := dynamostore.New(client, table, func(o *dynamostore.Options) { *o = dynamostore.Options{} })
	if err != nil {
		t.Fatalf("New with zero Options = %v", err)
	}
	o := s.Options()
	if o.KeyAttribute != "shard" || o.Owner == "" || o.LeaseDuration != 8*time.Second ||
		o.RenewInterval != o.LeaseDuration/3 || o.HandoffTimeout != 40*time.Second || o.Retry != (shardflow.RetryPolicy{}) {
		t.Errorf("resolved Options = %+v; want the documented defaults", o)
	}
	if s.LeaseDuration() != 8*time.Second || s.LeaseSyncInterval() != o.RenewInterval/2 {
		t.Errorf("LeaseDuration, LeaseSyncInterval = %v, %v; want 8s and RenewInterval/2", s.LeaseDuration(), s.LeaseSyncInterval())
	}
	ctx := t.Context()
	stream := awstest.UniqueName(t, "st")
	if held, err := s.SyncLeases(ctx, stream, []string{"a"}); err != nil || !slices.Equal(held, []string{"a"}) {
		t.Fatalf("SyncLeases = %v, %v", held, err)
	}
	cp := shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: "12"}}
	if err := s.Save(ctx, stream, "a", cp); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := s.Load(ctx, stream, "a"); err != nil || !ok || got != cp {
		t.Errorf("Load = %+v, %v, %v; want %+v", got, ok, err, cp)
	}
	if err := s.ReleaseLease(ctx, stream, "a"); err != nil {
		t.Error(err)
	}
}

func TestBadOptionsAreConfigErrorsNamingTheField(t *testing.T) {
	for _, tc := range []struct {
		name   string
		client dynamostore.API
		table  string
		fn     func(*dynamostore.Options)
		field  string
	}{
		{"a nil client", nil, "t", nil, "client"},
		{"an empty table name", &attemptsAPI{}, "", nil, "table"},
		{"a negative lease duration", &attemptsAPI{}, "t", func(o *dynamostore.Options) { o.LeaseDuration = -time.Second }, "Options.LeaseDuration"},
		{"a renew interval over half the lease", &attemptsAPI{}, "t", func(o *dynamostore.Options) { o.RenewInterval = 6 * time.Second }, "Options.RenewInterval"},
		{"a negative handoff timeout", &attemptsAPI{}, "t", func(o *dynamostore.Options) { o.HandoffTimeout = -1 }, "Options.HandoffTimeout"},
		{"a negative retry timeout", &attemptsAPI{}, "t", func(o *dynamostore.Options) { o.Retry.Timeout = -time.Second }, "Options.Retry.Timeout"},
		{"a retry multiplier below 1", &attemptsAPI{}, "t", func(o *dynamostore.Options) { o.Retry.Multiplier = 0.5 }, "Options.Retry.Multiplier"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fns []func(*dynamostore.Options)
			if tc.fn != nil {
				fns = append(fns, tc.fn)
			}
			_, err := dynamostore.New(tc.client, tc.table, fns...)
			ce, ok := errors.AsType[*shardflow.ConfigError](err)
			if !ok || ce.Field != tc.field {
				t.Errorf("New = %v; want a *shardflow.ConfigError for %s", err, tc.field)
			}
		})
	}
}

func TestNewFromConfigUsesTheConfigsEndpointAndCredentials(t *testing.T) {
	cfg := aws.Config{
		Region:       awstest.Region,
		Credentials:  credentials.NewStaticCredentialsProvider("x", "x", ""),
		BaseEndpoint: aws.String(awstest.DynamoDBEndpoint(t)),
	}
	s, err := dynamostore.NewFromConfig(cfg, awstest.UniqueName(t, "fromcfg"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateTable(t.Context()); err != nil {
		t.Fatalf("CreateTable: %v", err)
	}
	ctx := t.Context()
	if held, err := s.SyncLeases(ctx, "st", []string{"a"}); err != nil || len(held) != 1 {
		t.Fatalf("SyncLeases = %v, %v", held, err)
	}
	cp := shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: "5"}}
	if err := s.Save(ctx, "st", "a", cp); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := s.Load(ctx, "st", "a"); err != nil || !ok || got != cp {
		t.Errorf("Load = %+v, %v, %v; want %+v", got, ok, err, cp)
	}
}

func TestANilLoggerLogsToThePipelinesLoggerElseSlogDefault(t *testing.T) {
	const taken = "dynamodb.store: lease taken"
	syncOne := func(t *testing.T, s *dynamostore.Store) {
		t.Helper()
		if held, err := s.SyncLeases(t.Context(), "st", []string{"a"}); err != nil || len(held) != 1 {
			t.Fatalf("SyncLeases = %v, %v", held, err)
		}
	}
	t.Run("in a pipeline, the pipeline's logger", func(t *testing.T) {
		s := newStore(t, &attemptsAPI{}, "t")
		pipeline := logtest.NewCapture()
		s.UsePipelineLogger(slog.New(pipeline))
		syncOne(t, s)
		if !pipeline.Has(taken) {
			t.Errorf("the pipeline's logger got %q; want %q", pipeline.Messages(), taken)
		}
	})
	t.Run("a logger of its own is kept", func(t *testing.T) {
		own, pipeline := logtest.NewCapture(), logtest.NewCapture()
		s := newStore(t, &attemptsAPI{}, "t", func(o *dynamostore.Options) { o.Logger = slog.New(own) })
		s.UsePipelineLogger(slog.New(pipeline))
		syncOne(t, s)
		if !own.Has(taken) || len(pipeline.Messages()) != 0 {
			t.Errorf("own logger got %q, pipeline's %q; want everything in its own", own.Messages(), pipeline.Messages())
		}
	})
	t.Run("outside a pipeline, slog.Default()", func(t *testing.T) {
		def := logtest.NewCapture()
		old := slog.Default()
		slog.SetDefault(slog.New(def))
		t.Cleanup(func() { slog.SetDefault(old) })
		s := newStore(t, &attemptsAPI{}, "t")
		syncOne(t, s)
		if !def.Has(taken) {
			t.Errorf("slog.Default() got %q; want %q", def.Messages(), taken)
		}
	})
}
