package kinesissource_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	dtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	"github.com/shardflow/shardflow/checkpoint/memory"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// noTableAPI is a DynamoDB API whose table does not exist.
type noTableAPI struct{}

func notFound() error {
	return &dtypes.ResourceNotFoundException{Message: new("Requested resource not found")}
}

func (noTableAPI) GetItem(context.Context, *dynamodb.GetItemInput, ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error) {
	return nil, notFound()
}
func (noTableAPI) PutItem(context.Context, *dynamodb.PutItemInput, ...func(*dynamodb.Options)) (*dynamodb.PutItemOutput, error) {
	return nil, notFound()
}
func (noTableAPI) UpdateItem(context.Context, *dynamodb.UpdateItemInput, ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error) {
	return nil, notFound()
}
func (noTableAPI) BatchGetItem(context.Context, *dynamodb.BatchGetItemInput, ...func(*dynamodb.Options)) (*dynamodb.BatchGetItemOutput, error) {
	return nil, notFound()
}
func (noTableAPI) DescribeTable(context.Context, *dynamodb.DescribeTableInput, ...func(*dynamodb.Options)) (*dynamodb.DescribeTableOutput, error) {
	return nil, notFound()
}
func (noTableAPI) CreateTable(context.Context, *dynamodb.CreateTableInput, ...func(*dynamodb.Options)) (*dynamodb.CreateTableOutput, error) {
	return nil, errors.New("not called by the source")
}

func TestAMissingLeaseTableStopsTheSourceWithAnErrorAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 2)
		put(t, f, "in", 0, 10, 2)
		store, err := dynamostore.New(noTableAPI{}, "missing")
		if err != nil {
			t.Fatal(err)
		}
		src := newSource(t, f, "in", func(o *kinesissource.Options) {
			o.Store = store
			o.InitialPosition = kinesissource.TrimHorizon()
		})
		ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
		defer cancel()
		start := time.Now()
		err = shardflow.Source(src).Sink(&collector{}).Run(ctx)
		if !errors.Is(err, dynamostore.ErrNoTable) {
			t.Fatalf("Run = %v after %v; want an error wrapping dynamostore.ErrNoTable", err, time.Since(start))
		}
		// The first lease sync finds the table missing: no retries, no
		// waiting for the next sync.
		if d := time.Since(start); d > 0 {
			t.Errorf("Run returned after %v of virtual time; want it at the first sync", d)
		}
	})
}

// savesAfter is a memory Instance that notes, for every save that succeeds
// once armed, how many records the sink had then.
type savesAfter struct {
	*memory.Instance
	sink  *collector
	mu    sync.Mutex
	armed bool
	seen  []int
}

func (s *savesAfter) Save(ctx context.Context, stream, shard string, cp shardflow.Checkpoint) error {
	err := s.Instance.Save(ctx, stream, shard, cp)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil && s.armed {
		s.seen = append(s.seen, s.sink.len())
	}
	return err
}

func TestResettingACheckpointMakesItsReaderStartAgainFromTheInitialPosition(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const shard = "shardId-000000000000"
		f := newStream(t, "in", 1)
		put(t, f, "in", 0, 100, 5)
		mem := memory.New()
		in, err := mem.Instance("a")
		if err != nil {
			t.Fatal(err)
		}
		sink := &collector{}
		store := &savesAfter{Instance: in, sink: sink}
		src := newSource(t, f, "in", func(o *kinesissource.Options) {
			o.Store = store
			o.InitialPosition = kinesissource.TrimHorizon()
		})
		pl := shardflow.Source(src, func(o *shardflow.Options) { o.CheckpointInterval = time.Second }).Sink(sink)
		reset := false
		err = runUntil(t, pl, func() bool {
			if !reset {
				cp, ok := mem.Checkpoint("in", shard)
				if sink.len() < 100 || !ok || cp.SequenceNumber == "" {
					return false
				}
				if err := mem.ResetCheckpoint(t.Context(), "in", shard); err != nil {
					t.Fatal(err)
				}
				store.mu.Lock()
				store.armed, reset = true, true
				store.mu.Unlock()
			}
			return sink.len() >= 200
		})
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
		got := sink.data()
		checkExactlyOnceInOrder(t, 100, got[:100])
		checkExactlyOnceInOrder(t, 100, got[100:])
		store.mu.Lock()
		defer store.mu.Unlock()
		if len(store.seen) == 0 {
			t.Errorf("no checkpoint saved after the reset; want the new reader's")
		}
		for _, n := range store.seen {
			if n <= 100 {
				t.Errorf("a checkpoint was saved after the reset with %d records read: the old reader wrote its position back", n)
			}
		}
	})
}
