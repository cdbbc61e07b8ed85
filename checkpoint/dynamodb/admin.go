package dynamostore

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/shardflow/shardflow"
)

// ShardState is what the table holds for one shard, for operators (the
// shardflow CLI's checkpoints command).
type ShardState struct {
	ShardID string
	// Owner is the instance holding the shard's lease; "" when it is free.
	Owner string
	// Counter is the lease counter; it changes on every renew, take and
	// release.
	Counter int64
	// WantedBy is an instance that asked the owner for the lease.
	WantedBy string
	// Checkpoint is the shard's checkpoint; HasCheckpoint is false when
	// none was saved.
	Checkpoint    shardflow.Checkpoint
	HasCheckpoint bool
}

// ErrNoShard is returned by ResetCheckpoint for a shard with no item.
var ErrNoShard = errors.New("dynamostore: no item for the shard")

// Shards returns the state of the given shards of stream that have an item
// in the table, in the order given.
func (s *Store) Shards(ctx context.Context, stream string, shardIDs []string) ([]ShardState, error) {
	if err := s.checkReady(ctx); err != nil {
		return nil, err
	}
	leases, err := leaseTable{s}.Leases(ctx, stream, shardIDs)
	if err != nil {
		return nil, fmt.Errorf("read leases of stream %q: %w", stream, err)
	}
	byID := make(map[string]ShardState, len(leases))
	for _, l := range leases {
		byID[l.ShardID] = ShardState{ShardID: l.ShardID, Owner: l.Owner, Counter: l.Counter, WantedBy: l.Want}
	}
	var out []ShardState
	for _, id := range shardIDs {
		cp, ok, err := s.Load(ctx, stream, id)
		if err != nil {
			return nil, err
		}
		st, has := byID[id]
		if !has && !ok {
			continue
		}
		st.ShardID, st.Checkpoint, st.HasCheckpoint = id, cp, ok
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
		UpdateExpression:    aws.String("SET #c = if_not_exists(#c, :zero) + :one REMOVE #seq, #sub, #partial, #end, #at, #o, #w"),
		ExpressionAttributeNames: map[string]string{"#k": s.key, "#c": attrCounter, "#o": attrOwner, "#w": attrWant,
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
