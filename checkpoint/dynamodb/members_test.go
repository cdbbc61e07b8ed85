package dynamostore_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	dtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	"github.com/shardflow/shardflow/internal/awstest"
)

func owners(t *testing.T, s *dynamostore.Store) []string {
	t.Helper()
	ms, err := s.Members(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		out = append(out, m.Owner)
	}
	return out
}

// Instances starting at once on a table with no heartbeat item all create
// it (one wins, the others find it made) and each writes its own entry.
func TestInstancesRacingToCreateTheHeartbeatItemAllJoin(t *testing.T) {
	dc := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, dc)
	stream := awstest.UniqueName(t, "st")
	const n = 6
	stores := make([]*dynamostore.Store, n)
	for i := range stores {
		stores[i] = newStore(t, dc, table, func(o *dynamostore.Options) {
			o.Owner = fmt.Sprintf("i%d", i)
			o.Logger = slog.New(slog.DiscardHandler)
		})
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, s := range stores {
		wg.Go(func() { _, errs[i] = s.SyncLeases(t.Context(), stream, []string{"s0", "s1"}) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("i%d: SyncLeases: %v", i, err)
		}
	}
	want := []string{"i0", "i1", "i2", "i3", "i4", "i5"}
	if got := owners(t, stores[0]); !slices.Equal(got, want) {
		t.Errorf("members = %v; want %v", got, want)
	}
	// The item is no shard: it is not listed.
	states, err := stores[0].Shards(t.Context(), stream, []string{"s0", "s1", dynamostore.MembersKey})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range states {
		if st.ShardID == dynamostore.MembersKey {
			t.Errorf("Shards lists the heartbeat item")
		}
	}
}

// A process started with the owner id of a running one takes its entry
// (new incarnation) and its leases at its first sync; the older process's
// next heartbeat is refused by its condition, and its SyncLeases fails for
// good with an *OwnerConflictError; its checkpoints are refused.
func TestAHeartbeatIsConditionalOnTheIncarnationAndASecondProcessWithTheIdWins(t *testing.T) {
	dc := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, dc)
	stream := awstest.UniqueName(t, "st")
	opts := func(o *dynamostore.Options) {
		o.Owner, o.LeaseDuration = "pod-1", 1500*time.Millisecond
		o.Logger = slog.New(slog.DiscardHandler)
	}
	shards := []string{"s0", "s1"}
	old := newStore(t, dc, table, opts)
	if held, err := old.SyncLeases(t.Context(), stream, shards); err != nil || !slices.Equal(held, shards) {
		t.Fatalf("old SyncLeases = %v, %v", held, err)
	}
	if err := old.Save(t.Context(), stream, "s0", shardflow.Checkpoint{SequenceNumber: "5"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	renewed := newStore(t, dc, table, opts)
	held, err := renewed.SyncLeases(t.Context(), stream, shards)
	if err != nil || !slices.Equal(held, shards) {
		t.Fatalf("first SyncLeases of the restarted process = %v, %v; want every shard at once", held, err)
	}
	t.Logf("restarted process holds its shards %v after its start", time.Since(start).Round(time.Millisecond))
	if err := old.Save(t.Context(), stream, "s0", shardflow.Checkpoint{SequenceNumber: "6"}); !errors.Is(err, shardflow.ErrLeaseLost) {
		t.Errorf("old process's Save = %v; want ErrLeaseLost", err)
	}
	time.Sleep(2 * old.LeaseSyncInterval()) // its heartbeat is due
	_, err = old.SyncLeases(t.Context(), stream, shards)
	var oc *checkpoint.OwnerConflictError
	if !errors.As(err, &oc) || oc.Owner != "pod-1" || !errors.Is(err, checkpoint.ErrOwnerTaken) {
		t.Errorf("old process's SyncLeases = %v; want an *OwnerConflictError for pod-1", err)
	}
	if got := owners(t, renewed); !slices.Equal(got, []string{"pod-1"}) {
		t.Errorf("members = %v; want the one entry of pod-1", got)
	}
	cp, _, err := renewed.Load(t.Context(), stream, "s0")
	if err != nil || cp.SequenceNumber != "5" {
		t.Errorf("checkpoint = %+v, %v; want 5 (the old process's later save refused)", cp, err)
	}
}

// Leave removes the instance's entry at once; leaving twice is no error,
// and a later sync joins again.
func TestLeaveRemovesTheEntryAndASyncJoinsAgain(t *testing.T) {
	dc := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, dc)
	stream := awstest.UniqueName(t, "st")
	mk := func(owner string) *dynamostore.Store {
		return newStore(t, dc, table, func(o *dynamostore.Options) {
			o.Owner = owner
			o.Logger = slog.New(slog.DiscardHandler)
		})
	}
	a, b := mk("a"), mk("b")
	for _, s := range []*dynamostore.Store{a, b} {
		if _, err := s.SyncLeases(t.Context(), stream, []string{"s0"}); err != nil {
			t.Fatal(err)
		}
	}
	if got := owners(t, a); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("members = %v; want a and b", got)
	}
	for range 2 {
		if err := a.Leave(t.Context()); err != nil {
			t.Errorf("Leave = %v", err)
		}
	}
	if got := owners(t, b); !slices.Equal(got, []string{"b"}) {
		t.Errorf("members after a left = %v; want b", got)
	}
	if _, err := a.SyncLeases(t.Context(), stream, []string{"s0"}); err != nil {
		t.Fatal(err)
	}
	if got := owners(t, b); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("members after a synced again = %v; want a and b", got)
	}
}

// The heartbeat item, deleted by an operator, is made again by the next
// heartbeat.
func TestADeletedHeartbeatItemIsMadeAgain(t *testing.T) {
	dc := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, dc)
	stream := awstest.UniqueName(t, "st")
	s := newStore(t, dc, table, func(o *dynamostore.Options) {
		o.Owner, o.LeaseDuration = "a", 3*time.Second // the beat that makes the item again has 2s on a loaded machine
		o.Logger = slog.New(slog.DiscardHandler)
	})
	if _, err := s.SyncLeases(t.Context(), stream, []string{"s0"}); err != nil {
		t.Fatal(err)
	}
	_, err := dc.DeleteItem(t.Context(), &dynamodb.DeleteItemInput{TableName: aws.String(table),
		Key: map[string]dtypes.AttributeValue{dynamostore.DefaultKeyAttribute: &dtypes.AttributeValueMemberS{Value: dynamostore.MembersKey}}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * s.LeaseSyncInterval())
	if held, err := s.SyncLeases(t.Context(), stream, []string{"s0"}); err != nil || len(held) != 1 {
		t.Fatalf("SyncLeases after the item was deleted = %v, %v; want s0 kept", held, err)
	}
	if got := owners(t, s); !slices.Equal(got, []string{"a"}) {
		t.Errorf("members = %v; want a", got)
	}
}

// callGroup runs instances of a store on one table as sources drive them:
// each syncs every LeaseSyncInterval, releases what it no longer holds,
// and, when busy, saves every shard it holds every checkpointEvery.
type callGroup struct {
	mu   sync.Mutex
	held map[string][]string
}

// The DynamoDB calls of 4 instances sharing 64 shards with the default
// timings, measured over a minute each: idle (no checkpoint) at most 2
// calls per shard per minute for the group; busy at most that plus one
// checkpoint write per shard per CheckpointInterval (5s). Over two
// minutes of real time: set SHARDFLOW_MEASURE_CALLS=1 to run it.
func TestLeaseUpkeepOf64ShardsAnd4InstancesOnDynamoDB(t *testing.T) {
	if os.Getenv("SHARDFLOW_MEASURE_CALLS") == "" {
		t.Skip("a measurement of over two minutes: set SHARDFLOW_MEASURE_CALLS=1")
	}
	dc := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, dc)
	stream := awstest.UniqueName(t, "st")
	shards := make([]string, 64)
	for i := range shards {
		shards[i] = fmt.Sprintf("shardId-%012d", i)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	const checkpointEvery = 5 * time.Second
	var busy sync.Mutex // held while idle; busy once unlocked
	busyOn := false
	g := &callGroup{held: map[string][]string{}}
	var counters []*countingDDB
	var wg sync.WaitGroup
	for i := range 4 {
		c := &countingDDB{API: dc}
		counters = append(counters, c)
		name := fmt.Sprintf("i%d", i)
		s := newStore(t, c, table, func(o *dynamostore.Options) {
			o.Owner = name
			o.Logger = slog.New(slog.DiscardHandler)
		})
		wg.Go(func() {
			tick := time.NewTicker(s.LeaseSyncInterval())
			defer tick.Stop()
			saved := map[string]time.Time{}
			var last []string
			for ctx.Err() == nil {
				held, err := s.SyncLeases(ctx, stream, shards)
				if err == nil {
					for _, id := range last {
						if !slices.Contains(held, id) {
							_ = s.Save(ctx, stream, id, shardflow.Checkpoint{SequenceNumber: "1"})
							_ = s.ReleaseLease(ctx, stream, id)
						}
					}
					last = held
					g.mu.Lock()
					g.held[name] = held
					g.mu.Unlock()
				}
				busy.Lock()
				on := busyOn
				busy.Unlock()
				if on {
					for _, id := range last {
						if time.Since(saved[id]) >= checkpointEvery {
							saved[id] = time.Now()
							_ = s.Save(ctx, stream, id, shardflow.Checkpoint{SequenceNumber: "2"})
						}
					}
				}
				select {
				case <-ctx.Done():
				case <-tick.C:
				}
			}
		})
	}
	total := func() int64 {
		n := int64(0)
		for _, c := range counters {
			for op, v := range c.counts() {
				if op != "DescribeTable" {
					n += v
				}
			}
		}
		return n
	}
	byOp := func() map[string]int64 {
		out := map[string]int64{}
		for _, c := range counters {
			for op, v := range c.counts() {
				out[op] += v
			}
		}
		return out
	}
	waitFor(t, "16 shards each", 2*time.Minute, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		for i := range 4 {
			if len(g.held[fmt.Sprintf("i%d", i)]) != 16 {
				return false
			}
		}
		return true
	})
	time.Sleep(10 * time.Second) // settled
	measure := func(what string, d time.Duration) float64 {
		n0, ops0, t0 := total(), byOp(), time.Now()
		time.Sleep(d)
		n1, ops1 := total(), byOp()
		mins := time.Since(t0).Minutes()
		for op := range ops1 {
			ops1[op] -= ops0[op]
		}
		perMin := float64(n1-n0) / mins
		t.Logf("%s: %d calls in %v: %.1f calls/min for 64 shards (%.2f per shard per minute) %v",
			what, n1-n0, time.Since(t0).Round(time.Millisecond), perMin, perMin/64, ops1)
		return perMin
	}
	idle := measure("idle", time.Minute)
	if idle > 128 {
		t.Errorf("idle lease upkeep %.1f calls/min; want at most 128 (2 per shard per minute)", idle)
	}
	busy.Lock()
	busyOn = true
	busy.Unlock()
	time.Sleep(checkpointEvery)
	busyRate := measure("busy (a checkpoint per shard every 5s)", time.Minute)
	if limit := 128 + 64*time.Minute.Seconds()/checkpointEvery.Seconds(); busyRate > limit {
		t.Errorf("busy %.1f calls/min; want at most %.0f (idle bound + 64 checkpoints per 5s)", busyRate, limit)
	}
	cancel()
	wg.Wait()
}
