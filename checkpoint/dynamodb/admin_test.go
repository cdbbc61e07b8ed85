package dynamostore_test

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	"github.com/shardflow/shardflow/internal/awstest"
)

func TestShardsAndResetCheckpoint(t *testing.T) {
	dc := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, dc)
	store, err := dynamostore.New(dc, table, func(o *dynamostore.Options) { o.Owner = "op-test" })
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	held, err := store.SyncLeases(ctx, "s", []string{"a", "b"})
	if err != nil || len(held) != 2 {
		t.Fatalf("SyncLeases = %v, %v; want both shards", held, err)
	}
	cp := shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: "42", SubSequenceNumber: 3, Partial: true}}
	if err := store.Save(ctx, "s", "a", cp); err != nil {
		t.Fatal(err)
	}

	got, err := store.Shards(ctx, "s", []string{"a", "b", "never"})
	if err != nil {
		t.Fatal(err)
	}
	want := []dynamostore.ShardState{
		{ShardID: "a", Owner: "op-test", Checkpoint: cp, HasCheckpoint: true},
		{ShardID: "b", Owner: "op-test"},
	}
	// TestShardsShowWhenTheOwnerLastTookOrRenewedTheLease checks the times.
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(dynamostore.ShardState{}, "Counter", "RenewedAt", "CheckpointSavedAt")); diff != "" {
		t.Errorf("Shards mismatch (-want +got):\n%s", diff)
	}

	if err := store.ResetCheckpoint(ctx, "s", "a"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := store.Load(ctx, "s", "a"); ok {
		t.Errorf("a checkpoint is left after ResetCheckpoint")
	}
	// The instance that held the lease can no longer write the old
	// position back.
	if err := store.Save(ctx, "s", "a", cp); !errors.Is(err, shardflow.ErrLeaseLost) {
		t.Errorf("Save after a reset = %v; want ErrLeaseLost", err)
	}
	if err := store.ResetCheckpoint(ctx, "s", "never"); !errors.Is(err, dynamostore.ErrNoShard) {
		t.Errorf("ResetCheckpoint of a shard with no item = %v; want ErrNoShard", err)
	}
}
