package dynamostore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/shardflow/shardflow/checkpoint/internal/lease"
	"github.com/shardflow/shardflow/internal/retry"
)

// leaseTable is the lease.Table of a Store: every write is one conditional
// PutItem or UpdateItem, every read a strongly consistent BatchGetItem.
type leaseTable struct{ s *Store }

// sendOnce keeps the client's retryer from re-sending a conditional write.
// A write whose answer was lost may have been applied; its re-send would
// then fail its condition and pass for a lost lease. The lease manager
// retries instead, and re-reads the item to learn what became of an
// attempt it had no answer for.
func sendOnce(o *dynamodb.Options) { o.Retryer = aws.NopRetryer{} }

// errUnprocessed is the retryable error of a BatchGetItem that left keys
// unprocessed.
var errUnprocessed = errors.New("keys left unprocessed (throttled)")

// batchGetMax is the most keys one BatchGetItem takes.
const batchGetMax = 100

func (t leaseTable) Leases(ctx context.Context, stream string, shardIDs []string) ([]lease.Lease, error) {
	s := t.s
	var out []lease.Lease
	for len(shardIDs) > 0 {
		n := min(len(shardIDs), batchGetMax)
		keys := make([]map[string]types.AttributeValue, n)
		for i, id := range shardIDs[:n] {
			keys[i] = s.itemKey(stream, id)
		}
		shardIDs = shardIDs[n:]
		req := map[string]types.KeysAndAttributes{s.table: {
			Keys:                     keys,
			ConsistentRead:           aws.Bool(true),
			ProjectionExpression:     aws.String("#k, #o, #c, #w, #r"),
			ExpressionAttributeNames: map[string]string{"#k": s.key, "#o": attrOwner, "#c": attrCounter, "#w": attrWant, "#r": attrRenewedAt},
		}}
		// Keys DynamoDB left unprocessed (throttled in part) are asked for
		// again under Options.Retry, within ctx. A failed call is returned
		// at once: the lease manager retries it within the lease's time.
		var callErr error
		page := func() error {
			res, err := s.client.BatchGetItem(ctx, &dynamodb.BatchGetItemInput{RequestItems: req})
			if err != nil {
				callErr = s.classify("read leases", err)
				return retry.Permanent(callErr)
			}
			for _, item := range res.Responses[s.table] {
				l, err := s.decodeLease(item)
				if err != nil {
					callErr = retry.Permanent(err)
					return callErr
				}
				out = append(out, l)
			}
			if req = res.UnprocessedKeys; len(req) > 0 {
				return errUnprocessed
			}
			return nil
		}
		err := retry.Do(ctx, s.retry, page(), page, s.warn("read leases", "stream", stream))
		if callErr != nil {
			return nil, callErr
		}
		if err != nil {
			return nil, fmt.Errorf("read leases of stream %q: %w", stream, err)
		}
	}
	return out, nil
}

func (s *Store) decodeLease(item map[string]types.AttributeValue) (lease.Lease, error) {
	var l lease.Lease
	k, _ := item[s.key].(*types.AttributeValueMemberS)
	if k == nil {
		return l, fmt.Errorf("lease item without key %q", s.key)
	}
	_, l.ShardID, _ = strings.Cut(k.Value, "/")
	if v, ok := item[attrOwner].(*types.AttributeValueMemberS); ok {
		l.Owner = v.Value
	}
	if v, ok := item[attrWant].(*types.AttributeValueMemberS); ok {
		l.Want = v.Value
	}
	if v, ok := item[attrCounter].(*types.AttributeValueMemberN); ok {
		n, err := strconv.ParseInt(v.Value, 10, 64)
		if err != nil {
			return l, fmt.Errorf("lease item %q: %s %q: %w", k.Value, attrCounter, v.Value, err)
		}
		l.Counter = n
	}
	// Only operators read the renewal time: one that does not parse is
	// unknown, not a reason to stop reading leases. A free lease has none
	// (a release by a version that did not write it leaves it behind).
	if l.Owner != "" {
		l.RenewedAt = decodeTime(item[attrRenewedAt])
	}
	return l, nil
}

// renewedAtLayout is how lease_renewed_at is written: RFC 3339 in UTC with
// exactly three fractional digits, so that the values sort as text too.
const renewedAtLayout = "2006-01-02T15:04:05.000Z07:00"

func encodeRenewedAt(t time.Time) types.AttributeValue {
	return &types.AttributeValueMemberS{Value: t.UTC().Format(renewedAtLayout)}
}

// decodeTime returns the time of an attribute written in RFC 3339 (any
// number of fractional digits), or the zero time when it is absent or
// malformed.
func decodeTime(v types.AttributeValue) time.Time {
	s, ok := v.(*types.AttributeValueMemberS)
	if !ok {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, s.Value)
	if err != nil {
		return time.Time{}
	}
	return t.UTC()
}

func (t leaseTable) Create(ctx context.Context, stream, shardID, owner string, renewedAt time.Time) error {
	s := t.s
	item := s.itemKey(stream, shardID)
	item[attrStream] = &types.AttributeValueMemberS{Value: stream}
	item[attrShardID] = &types.AttributeValueMemberS{Value: shardID}
	item[attrOwner] = &types.AttributeValueMemberS{Value: owner}
	item[attrCounter] = &types.AttributeValueMemberN{Value: "1"}
	item[attrRenewedAt] = encodeRenewedAt(renewedAt)
	_, err := s.client.PutItem(ctx, &dynamodb.PutItemInput{
		TableName:                aws.String(s.table),
		Item:                     item,
		ConditionExpression:      aws.String("attribute_not_exists(#k)"),
		ExpressionAttributeNames: map[string]string{"#k": s.key},
	}, sendOnce)
	return s.classify("lease write", err)
}

func (t leaseTable) Update(ctx context.Context, stream, shardID string, cond lease.Cond, ch lease.Change) error {
	s := t.s
	names := map[string]string{"#o": attrOwner, "#c": attrCounter}
	values := map[string]types.AttributeValue{":c": n(cond.Counter)}
	var condExpr []string
	if cond.Owner == "" {
		condExpr = append(condExpr, "attribute_not_exists(#o)")
	} else {
		condExpr = append(condExpr, "#o = :o")
		values[":o"] = &types.AttributeValueMemberS{Value: cond.Owner}
	}
	condExpr = append(condExpr, "#c = :c")
	if cond.Want != nil {
		names["#w"] = attrWant
		if *cond.Want == "" {
			condExpr = append(condExpr, "attribute_not_exists(#w)")
		} else {
			condExpr = append(condExpr, "#w = :w")
			values[":w"] = &types.AttributeValueMemberS{Value: *cond.Want}
		}
	}
	var set, remove []string
	if ch.Owner != nil && *ch.Owner == "" {
		// A free lease has no renewal time: nobody renews it.
		names["#r"] = attrRenewedAt
		remove = append(remove, "#r")
	} else if !ch.RenewedAt.IsZero() {
		names["#r"] = attrRenewedAt
		set = append(set, "#r = :r")
		values[":r"] = encodeRenewedAt(ch.RenewedAt)
	}
	if ch.Owner != nil {
		if *ch.Owner == "" {
			remove = append(remove, "#o")
		} else {
			set = append(set, "#o = :no")
			values[":no"] = &types.AttributeValueMemberS{Value: *ch.Owner}
		}
	}
	if ch.Bump {
		set = append(set, "#c = :nc")
		values[":nc"] = n(cond.Counter + 1)
	}
	if ch.Want != nil {
		names["#w"] = attrWant
		if *ch.Want == "" {
			remove = append(remove, "#w")
		} else {
			set = append(set, "#w = :nw")
			values[":nw"] = &types.AttributeValueMemberS{Value: *ch.Want}
		}
	}
	if cp := ch.Checkpoint; cp != nil {
		names["#seq"], names["#sub"], names["#partial"], names["#end"], names["#at"] = attrSeq, attrSub, attrPartial, attrEnd, attrSavedAt
		if cp.SequenceNumber == "" {
			remove = append(remove, "#seq")
		} else {
			set = append(set, "#seq = :seq")
			values[":seq"] = &types.AttributeValueMemberS{Value: cp.SequenceNumber}
		}
		set = append(set, "#sub = :sub", "#partial = :partial", "#end = :end", "#at = :at")
		values[":sub"] = &types.AttributeValueMemberN{Value: strconv.FormatUint(cp.SubSequenceNumber, 10)}
		values[":partial"] = &types.AttributeValueMemberBOOL{Value: cp.Partial}
		values[":end"] = &types.AttributeValueMemberBOOL{Value: cp.ShardEnd}
		// For people reading the table only; never compared across hosts.
		values[":at"] = &types.AttributeValueMemberS{Value: time.Now().UTC().Format(time.RFC3339Nano)}
	}
	var update []string
	if len(set) > 0 {
		update = append(update, "SET "+strings.Join(set, ", "))
	}
	if len(remove) > 0 {
		update = append(update, "REMOVE "+strings.Join(remove, ", "))
	}
	if len(update) == 0 {
		return fmt.Errorf("lease update of shard %s changes nothing", shardID)
	}
	_, err := s.client.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 aws.String(s.table),
		Key:                       s.itemKey(stream, shardID),
		UpdateExpression:          aws.String(strings.Join(update, " ")),
		ConditionExpression:       aws.String(strings.Join(condExpr, " AND ")),
		ExpressionAttributeNames:  names,
		ExpressionAttributeValues: values,
	}, sendOnce)
	return s.classify("lease write", err)
}

func n(v int64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatInt(v, 10)}
}
