package dynamostore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/shardflow/shardflow"
)

// ShardState is what the table holds for one shard, for operators (the
// shardflow CLI's checkpoints and status commands).
type ShardState struct {
	ShardID string
	// Owner is the instance holding the shard's lease; "" when it is free.
	Owner string
	// Counter is the lease counter; it changes on every renew, take and
	// release.
	Counter int64
	// WantedBy is an instance that asked the owner for the lease.
	WantedBy string
	// RenewedAt is the time the owner last proved the lease its own, on
	// the owner's wall clock, with millisecond precision: its last
	// heartbeat when the owner has an entry in the table's heartbeat item
	// (see [MembersKey]), else the time it took the lease (or, for an older
	// shardflow version, last renewed it: the item's lease_renewed_at). It
	// is zero when the lease is free, and when it is unknown: the item was
	// last written by a version of shardflow that did not record it, or
	// the attribute is not RFC 3339. Instances never compare it with their
	// own clocks (they call an owner dead once its heartbeat has not
	// changed for the lease duration, on their own clock), so RenewedAt
	// plus the lease duration is when the lease expires only as far as the
	// owner's clock is right.
	RenewedAt time.Time
	// Checkpoint is the shard's checkpoint; HasCheckpoint is false when
	// none was saved.
	Checkpoint    shardflow.Checkpoint
	HasCheckpoint bool
	// CheckpointSavedAt is when the checkpoint was saved, on the saving
	// instance's wall clock (the item's checkpoint_saved_at); zero when
	// there is no checkpoint.
	CheckpointSavedAt time.Time
}

// ErrNoShard is returned by ResetCheckpoint for a shard with no item.
var ErrNoShard = errors.New("dynamostore: no item for the shard")

// Shards returns the state of the given shards of stream that have an item
// in the table, in the order given. It only reads, strongly consistently:
// one BatchGetItem per 100 shards, one GetItem per shard and one GetItem of
// the heartbeat item. The heartbeat item itself is no shard: it is never
// listed.
func (s *Store) Shards(ctx context.Context, stream string, shardIDs []string) ([]ShardState, error) {
	if err := s.checkReady(ctx); err != nil {
		return nil, err
	}
	leases, err := leaseTable{s}.Leases(ctx, stream, shardIDs)
	if err != nil {
		return nil, fmt.Errorf("read leases of stream %q: %w", stream, err)
	}
	members, err := leaseTable{s}.Members(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the heartbeat item: %w", err)
	}
	beat := make(map[string]time.Time, len(members))
	for _, m := range members {
		beat[m.Owner] = m.RenewedAt
	}
	byID := make(map[string]ShardState, len(leases))
	for _, l := range leases {
		st := ShardState{ShardID: l.ShardID, Owner: l.Owner, Counter: l.Counter, WantedBy: l.Want, RenewedAt: l.RenewedAt}
		if at, ok := beat[l.Owner]; ok && l.Owner != "" && at.After(st.RenewedAt) {
			st.RenewedAt = at
		}
		byID[l.ShardID] = st
	}
	var out []ShardState
	for _, id := range shardIDs {
		if id == MembersKey {
			continue
		}
		item, err := s.loadItem(ctx, stream, id)
		if err != nil {
			return nil, err
		}
		cp, ok, err := decodeCheckpoint(item)
		if err != nil {
			return nil, err
		}
		st, has := byID[id]
		if !has && !ok {
			continue
		}
		st.ShardID, st.Checkpoint, st.HasCheckpoint = id, cp, ok
		if ok {
			st.CheckpointSavedAt = decodeTime(item[attrSavedAt])
		}
		out = append(out, st)
	}
	return out, nil
}

// ResetCheckpoint deletes a shard's checkpoint, so that the next reader
// starts the shard at its source's InitialPosition. It also frees the lease
// and bumps its counter: an instance reading the shard loses the lease (its
// next checkpoint is refused, so it cannot write the old position back), its
// next lease sync drops the shard so that its source stops that reader, and
// only then is the shard taken anew (by it or another instance) and read
// from InitialPosition. It returns ErrNoShard for a shard with no item.
func (s *Store) ResetCheckpoint(ctx context.Context, stream, shardID string) error {
	if err := s.checkReady(ctx); err != nil {
		return err
	}
	_, err := s.client.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:           aws.String(s.table),
		Key:                 s.itemKey(stream, shardID),
		ConditionExpression: aws.String("attribute_exists(#k)"),
		UpdateExpression:    aws.String("SET #c = if_not_exists(#c, :zero) + :one REMOVE #seq, #sub, #partial, #end, #at, #o, #w, #r"),
		ExpressionAttributeNames: map[string]string{"#k": s.key, "#c": attrCounter, "#o": attrOwner, "#w": attrWant, "#r": attrRenewedAt,
			"#seq": attrSeq, "#sub": attrSub, "#partial": attrPartial, "#end": attrEnd, "#at": attrSavedAt},
		ExpressionAttributeValues: map[string]types.AttributeValue{":zero": n(0), ":one": n(1)},
	})
	var ccf *types.ConditionalCheckFailedException
	if errors.As(err, &ccf) {
		return fmt.Errorf("reset checkpoint of shard %s of stream %q: %w", shardID, stream, ErrNoShard)
	}
	if err != nil {
		return fmt.Errorf("reset checkpoint of shard %s of stream %q: %w", shardID, stream, s.classify("reset checkpoint", err))
	}
	return nil
}
