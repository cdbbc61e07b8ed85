package memory

import (
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/internal/lease"
)

// TestCallsCountAsDynamoDB checks that each table operation counts as the
// DynamoDB call the DynamoDB store makes for it, a lease read as one
// BatchGetItem per 100 shards.
func TestCallsCountAsDynamoDB(t *testing.T) {
	ctx := t.Context()
	s := New()
	tab := memTable{s}
	ids := make([]string, 250)
	for i := range ids {
		ids[i] = fmt.Sprintf("shard-%03d", i)
	}
	if _, err := tab.Leases(ctx, "orders", ids); err != nil {
		t.Fatal(err)
	}
	if _, err := tab.Leases(ctx, "orders", nil); err != nil {
		t.Fatal(err)
	}
	if err := tab.Create(ctx, "orders", "shard-000", "a", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := tab.Create(ctx, "orders", "shard-000", "b", time.Now()); err != lease.ErrConflict {
		t.Fatalf("second Create = %v; want ErrConflict", err)
	}
	if err := tab.Update(ctx, "orders", "shard-000", lease.Cond{Owner: "a", Counter: 1}, lease.Change{Bump: true}); err != nil {
		t.Fatal(err)
	}
	if err := tab.Update(ctx, "orders", "shard-000", lease.Cond{Owner: "a", Counter: 1}, lease.Change{Bump: true}); err != lease.ErrConflict {
		t.Fatalf("stale Update = %v; want ErrConflict", err)
	}
	if err := s.Save(ctx, "plain", "shard-1", shardflow.Checkpoint{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Load(ctx, "plain", "shard-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.ResetCheckpoint(ctx, "orders", "shard-000"); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"BatchGetItem": 3, "PutItem": 3, "UpdateItem": 3, "GetItem": 1}
	if got := s.Calls(); !maps.Equal(got, want) {
		t.Errorf("Calls = %v; want %v", got, want)
	}
	s.ResetCalls()
	if got := s.Calls(); len(got) != 0 {
		t.Errorf("Calls after ResetCalls = %v; want none", got)
	}
}
