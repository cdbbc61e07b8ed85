package dynamostore_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	dtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	"github.com/shardflow/shardflow/internal/awstest"
)

// rawItem returns the attributes of the shard's item as text, by name; nil
// when there is no item.
func rawItem(t *testing.T, dc *dynamodb.Client, table, stream, shard string) map[string]string {
	t.Helper()
	out, err := dc.GetItem(t.Context(), &dynamodb.GetItemInput{TableName: aws.String(table), ConsistentRead: aws.Bool(true),
		Key: map[string]dtypes.AttributeValue{dynamostore.DefaultKeyAttribute: &dtypes.AttributeValueMemberS{Value: stream + "/" + shard}}})
	if err != nil {
		t.Fatal(err)
	}
	if out.Item == nil {
		return nil
	}
	attrs := map[string]string{}
	for k, v := range out.Item {
		switch v := v.(type) {
		case *dtypes.AttributeValueMemberS:
			attrs[k] = v.Value
		case *dtypes.AttributeValueMemberN:
			attrs[k] = v.Value
		}
	}
	return attrs
}

// putRaw writes an item as a relay of another version (or an operator)
// would, attributes given as text: lease_counter is a number, the others
// strings.
func putRaw(t *testing.T, dc *dynamodb.Client, table, stream, shard string, attrs map[string]string) {
	t.Helper()
	item := map[string]dtypes.AttributeValue{dynamostore.DefaultKeyAttribute: &dtypes.AttributeValueMemberS{Value: stream + "/" + shard}}
	for k, v := range attrs {
		if k == "lease_counter" {
			item[k] = &dtypes.AttributeValueMemberN{Value: v}
		} else {
			item[k] = &dtypes.AttributeValueMemberS{Value: v}
		}
	}
	if _, err := dc.PutItem(t.Context(), &dynamodb.PutItemInput{TableName: aws.String(table), Item: item}); err != nil {
		t.Fatal(err)
	}
}

// shardState returns Shards' state of one shard, which must have an item.
func shardState(t *testing.T, s *dynamostore.Store, stream, shard string) dynamostore.ShardState {
	t.Helper()
	st, err := s.Shards(t.Context(), stream, []string{shard})
	if err != nil || len(st) != 1 {
		t.Fatalf("Shards = %+v, %v; want the state of %s", st, err, shard)
	}
	return st[0]
}

// within fails the test unless got lies in [lo, hi], lo truncated to the
// millisecond the table keeps.
func within(t *testing.T, what string, got, lo, hi time.Time) {
	t.Helper()
	if got.Before(lo.Truncate(time.Millisecond)) || got.After(hi) {
		t.Errorf("%s = %v; want a time in [%v, %v]", what, got, lo.Truncate(time.Millisecond), hi)
	}
}

// syncUntil syncs at the source's cadence until done says so, and returns
// when the sync that made it so began and ended.
func syncUntil(t *testing.T, s *dynamostore.Store, stream string, shards []string, what string, done func() bool) (time.Time, time.Time) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within a minute", what)
		}
		time.Sleep(s.LeaseSyncInterval())
		before := time.Now()
		if _, err := s.SyncLeases(t.Context(), stream, shards); err != nil {
			t.Fatal(err)
		}
		after := time.Now()
		if done() {
			return before, after
		}
	}
}

// The take writes the owner's time of the write, and each heartbeat the
// owner's time in the heartbeat item; Shards returns the later as
// RenewedAt; a checkpoint leaves it (and Shards returns
// its own time as CheckpointSavedAt); a release and a reset remove it.
func TestShardsShowWhenTheOwnerLastTookOrRenewedTheLease(t *testing.T) {
	dc := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, dc)
	s := newStore(t, dc, table, func(o *dynamostore.Options) { o.Owner, o.LeaseDuration = "a", 300*time.Millisecond })
	ctx := t.Context()
	stream := awstest.UniqueName(t, "st")
	shards := []string{"s0", "s1"}

	before := time.Now()
	if held, err := s.SyncLeases(ctx, stream, shards); err != nil || !slices.Equal(held, shards) {
		t.Fatalf("SyncLeases = %v, %v; want both shards", held, err)
	}
	after := time.Now()
	taken := shardState(t, s, stream, "s0")
	within(t, "RenewedAt after the take", taken.RenewedAt, before, after)
	if v := rawItem(t, dc, table, stream, "s0")["lease_renewed_at"]; v != taken.RenewedAt.Format("2006-01-02T15:04:05.000Z07:00") {
		t.Errorf("lease_renewed_at = %q; want RFC 3339 in UTC with milliseconds, %v", v, taken.RenewedAt)
	}

	// The owner's heartbeats (not lease writes) renew it: Shards shows the
	// last heartbeat's time, and the lease item is left as it is.
	before, after = syncUntil(t, s, stream, shards, "heartbeat", func() bool {
		return shardState(t, s, stream, "s0").RenewedAt.After(taken.RenewedAt)
	})
	renewed := shardState(t, s, stream, "s0")
	within(t, "RenewedAt after a heartbeat", renewed.RenewedAt, before, after)
	if renewed.Counter != taken.Counter {
		t.Errorf("lease counter %d after heartbeats; want %d: a heartbeat writes no lease item", renewed.Counter, taken.Counter)
	}

	before = time.Now()
	if err := s.Save(ctx, stream, "s0", shardflow.Checkpoint{SequenceNumber: "42"}); err != nil {
		t.Fatal(err)
	}
	after = time.Now()
	saved := shardState(t, s, stream, "s0")
	within(t, "CheckpointSavedAt", saved.CheckpointSavedAt, before, after)
	if !saved.RenewedAt.Equal(renewed.RenewedAt) {
		t.Errorf("RenewedAt = %v after a checkpoint; want the renewal's %v: a checkpoint is no renewal", saved.RenewedAt, renewed.RenewedAt)
	}
	if st := shardState(t, s, stream, "s1"); !st.CheckpointSavedAt.IsZero() {
		t.Errorf("CheckpointSavedAt = %v for a shard with no checkpoint; want zero", st.CheckpointSavedAt)
	}

	if err := s.ReleaseLease(ctx, stream, "s0"); err != nil {
		t.Fatal(err)
	}
	if err := s.ResetCheckpoint(ctx, stream, "s1"); err != nil {
		t.Fatal(err)
	}
	for _, id := range shards {
		if st := shardState(t, s, stream, id); st.Owner != "" || !st.RenewedAt.IsZero() {
			t.Errorf("%s: owner %q, RenewedAt %v after a release or reset; want a free lease with no renewal time", id, st.Owner, st.RenewedAt)
		}
		if v, ok := rawItem(t, dc, table, stream, id)["lease_renewed_at"]; ok {
			t.Errorf("%s: lease_renewed_at = %q is left on a free lease", id, v)
		}
	}
}

// Items written before renewal times were kept, or with one that does not
// parse, read as leases with RenewedAt unknown (zero); the instance that
// takes such a lease over writes its time.
func TestItemsWithoutAValidRenewalTimeAreReadAndTakenOver(t *testing.T) {
	dc := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, dc)
	stream := awstest.UniqueName(t, "st")
	putRaw(t, dc, table, stream, "old", map[string]string{"lease_owner": "gone", "lease_counter": "4"})
	putRaw(t, dc, table, stream, "bad", map[string]string{"lease_owner": "gone", "lease_counter": "5", "lease_renewed_at": "yesterday"})
	putRaw(t, dc, table, stream, "free", map[string]string{"lease_counter": "6", "lease_renewed_at": "2026-12-01T09:00:00.000Z"})
	s := newStore(t, dc, table, func(o *dynamostore.Options) { o.Owner, o.LeaseDuration = "a", 300*time.Millisecond })
	shards := []string{"bad", "free", "old"}

	got, err := s.Shards(t.Context(), stream, shards)
	if err != nil {
		t.Fatal(err)
	}
	want := []dynamostore.ShardState{
		{ShardID: "bad", Owner: "gone", Counter: 5},
		{ShardID: "free", Counter: 6},
		{ShardID: "old", Owner: "gone", Counter: 4},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Shards mismatch (-want +got):\n%s", diff)
	}

	// "gone" never renews: its leases expire and a takes them.
	start := time.Now()
	_, after := syncUntil(t, s, stream, shards, "take-over of the expired leases", func() bool {
		st, err := s.Shards(t.Context(), stream, shards)
		return err == nil && !slices.ContainsFunc(st, func(st dynamostore.ShardState) bool { return st.Owner != "a" })
	})
	for _, id := range shards {
		st := shardState(t, s, stream, id)
		within(t, id+": RenewedAt after the take-over", st.RenewedAt, start, after)
	}
}

// racer is a DynamoDB client on which another instance writes the lease
// item just before this store's first lease write (UpdateItem) after arm:
// a take or renewal that loses a race.
type racer struct {
	dynamostore.API
	armed   atomic.Bool
	updates atomic.Int32
	first   func(ctx context.Context) error
}

func (r *racer) UpdateItem(ctx context.Context, in *dynamodb.UpdateItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error) {
	if k, _ := in.Key[dynamostore.DefaultKeyAttribute].(*dtypes.AttributeValueMemberS); k != nil && k.Value == dynamostore.MembersKey {
		return r.API.UpdateItem(ctx, in, optFns...) // a heartbeat, not a lease write
	}
	if r.armed.Load() && r.updates.Add(1) == 1 {
		if err := r.first(ctx); err != nil {
			return nil, err
		}
	}
	return r.API.UpdateItem(ctx, in, optFns...)
}

// A take refused by its condition writes no renewal time: the
// time is part of the one conditional write, not a write of its own.
func TestALeaseWriteRefusedByItsConditionLeavesTheRenewalTime(t *testing.T) {
	dc := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, dc)
	theirs := map[string]string{"lease_owner": "b", "lease_counter": "99", "lease_renewed_at": "2026-12-01T09:00:00.000Z"}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, s *dynamostore.Store, stream string)
	}{
		{"take of a free lease", func(t *testing.T, _ *dynamostore.Store, stream string) {
			putRaw(t, dc, table, stream, "s0", map[string]string{"lease_counter": "3"})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream := awstest.UniqueName(t, "st")
			r := &racer{API: dc, first: func(ctx context.Context) error {
				item := map[string]dtypes.AttributeValue{
					dynamostore.DefaultKeyAttribute: &dtypes.AttributeValueMemberS{Value: stream + "/s0"},
					"lease_owner":                   &dtypes.AttributeValueMemberS{Value: theirs["lease_owner"]},
					"lease_counter":                 &dtypes.AttributeValueMemberN{Value: theirs["lease_counter"]},
					"lease_renewed_at":              &dtypes.AttributeValueMemberS{Value: theirs["lease_renewed_at"]},
				}
				_, err := dc.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(table), Item: item})
				return err
			}}
			s := newStore(t, r, table, func(o *dynamostore.Options) { o.Owner, o.LeaseDuration = "a", 300*time.Millisecond })
			tc.setup(t, s, stream)
			r.armed.Store(true)
			syncUntil(t, s, stream, []string{"s0"}, "lease write", func() bool { return r.updates.Load() > 0 })
			if held, err := s.SyncLeases(t.Context(), stream, []string{"s0"}); err != nil || len(held) != 0 {
				t.Errorf("SyncLeases = %v, %v; want nothing held: b holds s0", held, err)
			}
			got := rawItem(t, dc, table, stream, "s0")
			for k, v := range theirs {
				if got[k] != v {
					t.Errorf("%s = %q; want b's %q, untouched by the refused write", k, got[k], v)
				}
			}
		})
	}
}
