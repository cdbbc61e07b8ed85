package dynamostore

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"

	"github.com/shardflow/shardflow/checkpoint/internal/lease"
	"github.com/shardflow/shardflow/internal/retry"
)

// MembersKey is the key of the table's one heartbeat item, which lists the
// live instances (see the package documentation). No stream name contains
// '#', so it cannot collide with a shard's item.
const MembersKey = "#instances"

// Attributes of the heartbeat item: a map of entries by owner id, each a map
// of short attribute names (the item holds every instance's shards, so it
// is kept compact).
const (
	attrMembers = "members"
	mInc        = "i" // S: the incarnation
	mBeat       = "b" // N: the heartbeat counter
	mRenewedAt  = "t" // S: wall-clock time of the heartbeat, for operators
	mStreams    = "s" // M: by stream name
	sShards     = "l" // M: shard id → N bytes/s, the shards the instance reads
	sBytes      = "b" // N: bytes/s of the stream
	sRecords    = "r" // N: records/s of the stream
	sWant       = "w" // S: the shards asked for, comma-separated
	sFrom       = "f" // S: their owner
)

func (s *Store) membersKey() map[string]types.AttributeValue {
	return map[string]types.AttributeValue{s.key: &types.AttributeValueMemberS{Value: MembersKey}}
}

// createMembers creates the heartbeat item, empty, if it does not exist.
func (s *Store) createMembers(ctx context.Context) error {
	item := s.membersKey()
	item[attrMembers] = &types.AttributeValueMemberM{Value: map[string]types.AttributeValue{}}
	// A one-time setup, retried under Options.Retry like Load. A
	// re-send of a creation whose answer was lost fails its condition,
	// which is success too.
	op := func() error {
		_, err := s.client.PutItem(ctx, &dynamodb.PutItemInput{
			TableName:                aws.String(s.table),
			Item:                     item,
			ConditionExpression:      aws.String("attribute_not_exists(#k)"),
			ExpressionAttributeNames: map[string]string{"#k": s.key},
		}, sendOnce)
		err = s.classify("create heartbeat item", err)
		if errors.Is(err, lease.ErrConflict) {
			return nil // another instance created it first
		}
		if err == nil {
			s.logger().Info("created the heartbeat item", "key", MembersKey)
		}
		return err
	}
	return retry.Do(ctx, s.retry, op(), op, s.warn("create heartbeat item"))
}

// isMissingPath reports whether err is DynamoDB's refusal of an update of a
// path inside an attribute that does not exist (the heartbeat item is
// missing).
func isMissingPath(err error) bool {
	api, ok := errors.AsType[smithy.APIError](err)
	return ok && api.ErrorCode() == "ValidationException" && strings.Contains(api.ErrorMessage(), "document path")
}

func (t leaseTable) Beat(ctx context.Context, m lease.Member, takeover bool) ([]lease.Member, error) {
	s := t.s
	if !s.membersMade.Load() {
		if err := s.createMembers(ctx); err != nil {
			return nil, err
		}
		s.membersMade.Store(true)
	}
	in := &dynamodb.UpdateItemInput{
		TableName:                 aws.String(s.table),
		Key:                       s.membersKey(),
		UpdateExpression:          aws.String("SET #m.#me = :e"),
		ExpressionAttributeNames:  map[string]string{"#m": attrMembers, "#me": m.Owner},
		ExpressionAttributeValues: map[string]types.AttributeValue{":e": encodeMember(m)},
		ReturnValues:              types.ReturnValueAllNew,
	}
	if !takeover {
		in.ConditionExpression = aws.String("attribute_not_exists(#m.#me) OR #m.#me.#i = :inc")
		in.ExpressionAttributeNames["#i"] = mInc
		in.ExpressionAttributeValues[":inc"] = &types.AttributeValueMemberS{Value: m.Inc}
	}
	out, err := s.client.UpdateItem(ctx, in, sendOnce)
	if err != nil && isMissingPath(err) {
		// The item was deleted (by an operator): make it again.
		if err := s.createMembers(ctx); err != nil {
			return nil, err
		}
		out, err = s.client.UpdateItem(ctx, in, sendOnce)
	}
	if err != nil {
		return nil, s.classify("heartbeat", err)
	}
	return decodeMembers(out.Attributes[attrMembers]), nil
}

func (t leaseTable) Members(ctx context.Context) ([]lease.Member, error) {
	s := t.s
	out, err := s.client.GetItem(ctx, &dynamodb.GetItemInput{
		TableName:                aws.String(s.table),
		Key:                      s.membersKey(),
		ConsistentRead:           aws.Bool(true),
		ProjectionExpression:     aws.String("#m"),
		ExpressionAttributeNames: map[string]string{"#m": attrMembers},
	})
	if err != nil {
		return nil, s.classify("read heartbeats", err)
	}
	return decodeMembers(out.Item[attrMembers]), nil
}

func (t leaseTable) Remove(ctx context.Context, owner, inc string, beat int64) error {
	s := t.s
	cond := "#m.#me.#i = :inc"
	names := map[string]string{"#m": attrMembers, "#me": owner, "#i": mInc}
	values := map[string]types.AttributeValue{":inc": &types.AttributeValueMemberS{Value: inc}}
	if beat >= 0 {
		cond += " AND #m.#me.#b = :b"
		names["#b"] = mBeat
		values[":b"] = n(beat)
	}
	_, err := s.client.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 aws.String(s.table),
		Key:                       s.membersKey(),
		UpdateExpression:          aws.String("REMOVE #m.#me"),
		ConditionExpression:       aws.String(cond),
		ExpressionAttributeNames:  names,
		ExpressionAttributeValues: values,
	}, sendOnce)
	if err != nil && isMissingPath(err) {
		return lease.ErrConflict // no item, so no entry
	}
	return s.classify("remove heartbeat entry", err)
}

func encodeMember(m lease.Member) types.AttributeValue {
	streams := make(map[string]types.AttributeValue, len(m.Streams))
	for name, si := range m.Streams {
		shards := make(map[string]types.AttributeValue, len(si.Shards))
		for id, b := range si.Shards {
			shards[id] = n(b)
		}
		st := map[string]types.AttributeValue{sShards: &types.AttributeValueMemberM{Value: shards}}
		if si.Bytes != 0 || si.Records != 0 {
			st[sBytes], st[sRecords] = n(si.Bytes), n(si.Records)
		}
		if len(si.Want) > 0 {
			st[sWant] = &types.AttributeValueMemberS{Value: strings.Join(si.Want, ",")}
			st[sFrom] = &types.AttributeValueMemberS{Value: si.From}
		}
		streams[name] = &types.AttributeValueMemberM{Value: st}
	}
	return &types.AttributeValueMemberM{Value: map[string]types.AttributeValue{
		mInc:       &types.AttributeValueMemberS{Value: m.Inc},
		mBeat:      n(m.Beat),
		mRenewedAt: encodeRenewedAt(m.RenewedAt),
		mStreams:   &types.AttributeValueMemberM{Value: streams},
	}}
}

// decodeMembers decodes the members attribute. An entry that does not
// decode is skipped: it is no member this version understands.
func decodeMembers(v types.AttributeValue) []lease.Member {
	mv, ok := v.(*types.AttributeValueMemberM)
	if !ok {
		return nil
	}
	out := make([]lease.Member, 0, len(mv.Value))
	for owner, ev := range mv.Value {
		e, ok := ev.(*types.AttributeValueMemberM)
		if !ok {
			continue
		}
		m := lease.Member{Owner: owner, Streams: map[string]lease.StreamInfo{}}
		if v, ok := e.Value[mInc].(*types.AttributeValueMemberS); ok {
			m.Inc = v.Value
		}
		m.Beat = num(e.Value[mBeat])
		m.RenewedAt = decodeTime(e.Value[mRenewedAt])
		if ss, ok := e.Value[mStreams].(*types.AttributeValueMemberM); ok {
			for name, sv := range ss.Value {
				st, ok := sv.(*types.AttributeValueMemberM)
				if !ok {
					continue
				}
				si := lease.StreamInfo{Shards: map[string]int64{}, Bytes: num(st.Value[sBytes]), Records: num(st.Value[sRecords])}
				if l, ok := st.Value[sShards].(*types.AttributeValueMemberM); ok {
					for id, b := range l.Value {
						si.Shards[id] = num(b)
					}
				}
				if w, ok := st.Value[sWant].(*types.AttributeValueMemberS); ok && w.Value != "" {
					si.Want = strings.Split(w.Value, ",")
				}
				if f, ok := st.Value[sFrom].(*types.AttributeValueMemberS); ok {
					si.From = f.Value
				}
				m.Streams[name] = si
			}
		}
		out = append(out, m)
	}
	return out
}

// num decodes a number attribute; 0 when absent or malformed.
func num(v types.AttributeValue) int64 {
	nv, ok := v.(*types.AttributeValueMemberN)
	if !ok {
		return 0
	}
	i, err := strconv.ParseInt(nv.Value, 10, 64)
	if err != nil {
		return 0
	}
	return i
}

// Member is one live instance as the heartbeat item shows it, for
// operators: see [Store.Members].
type Member struct {
	// Owner is the instance's owner id.
	Owner string
	// RenewedAt is the instance's wall-clock time of its last heartbeat.
	RenewedAt time.Time
	// Held is how many shards of each stream it reads, by stream.
	Held map[string]int
	// BytesPerSecond is its measured load of each stream, by stream.
	BytesPerSecond map[string]int64
}

// Members returns the entries of the table's heartbeat item (one
// strongly consistent GetItem), sorted by owner, for operators: an entry
// whose RenewedAt is older than the lease duration is a dead instance not
// yet removed.
func (s *Store) Members(ctx context.Context) ([]Member, error) {
	ms, err := leaseTable{s}.Members(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Member, 0, len(ms))
	for _, m := range ms {
		o := Member{Owner: m.Owner, RenewedAt: m.RenewedAt, Held: map[string]int{}, BytesPerSecond: map[string]int64{}}
		for name, si := range m.Streams {
			o.Held[name] = len(si.Shards)
			o.BytesPerSecond[name] = si.Bytes
		}
		out = append(out, o)
	}
	slicesSortByOwner(out)
	return out, nil
}

func slicesSortByOwner(ms []Member) {
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.Owner, b.Owner) })
}
