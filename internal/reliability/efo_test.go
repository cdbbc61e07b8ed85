package reliability_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	"github.com/shardflow/shardflow/internal/awstest"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// efoRelayEnv makes the test binary an enhanced fan-out relay process. The
// package's TestMain (reliability_test.go) serves the polling relay, and a
// package has one TestMain, so this child is started from init, before it.
const efoRelayEnv = "SHARDFLOW_RELIABILITY_EFO_RELAY"

func init() { awstest.ServeChild(efoRelayEnv, runEFORelay) }

// runEFORelay is one relay process reading by enhanced fan-out through the
// consumer RELAY_EFO: Kinesis source with DynamoDB checkpoints and leases
// -> ordered Kinesis sink, as runRelay, with no injected faults.
func runEFORelay() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	kOpts, dOpts, err := awstest.ChildOptions()
	if err != nil {
		return err
	}
	awstest.KinesisLocalFanOut(&kOpts) // kinesis-local's event streams differ from Kinesis'
	kc, dc := kinesis.New(kOpts), dynamodb.New(dOpts)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	store, err := dynamostore.New(dc, os.Getenv("RELAY_TABLE"), func(o *dynamostore.Options) {
		o.Owner = os.Getenv("RELAY_OWNER")
		o.Logger = log
	})
	if err != nil {
		return err
	}
	src, err := kinesissource.New(kc, os.Getenv("RELAY_IN"), func(o *kinesissource.Options) {
		o.Logger = log
		o.Store = store
		o.InitialPosition = kinesissource.TrimHorizon()
		o.DiscoveryInterval = 2 * time.Second
		o.EnhancedFanOut = &kinesissource.EnhancedFanOut{ConsumerName: os.Getenv("RELAY_EFO")}
	})
	if err != nil {
		return err
	}
	sink, err := kinesissink.New(kc, os.Getenv("RELAY_OUT"), func(o *kinesissink.Options) {
		o.Ordered = true
		o.Linger = 50 * time.Millisecond
		o.Logger = log
	})
	if err != nil {
		return err
	}
	runErr := shardflow.Source(src, func(o *shardflow.Options) {
		o.CheckpointInterval = time.Second
		o.Logger = log
	}).Map(kinesissink.FromRecord).Sink(sink).Run(ctx)
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	return errors.Join(runErr, sink.Close(closeCtx))
}

// efoRelay is a running enhanced fan-out relay process.
type efoRelay struct {
	name  string // its lease owner name
	child *awstest.Child
	mu    sync.Mutex
	lines []string // what it logged that matters: errors, lease changes, subscriptions
}

func startEFORelay(t *testing.T, env []string, name string) *efoRelay {
	t.Helper()
	r := &efoRelay{name: name}
	r.child = awstest.StartChild(t, efoRelayEnv, append(env[:len(env):len(env)], "RELAY_OWNER="+name), func(line string) {
		if strings.Contains(line, "level=ERROR") || strings.Contains(line, "lease") || strings.Contains(line, "fan-out") || !strings.Contains(line, "level=") {
			t.Logf("%s: %s", name, line)
		}
		if strings.Contains(line, "lease lost") {
			r.mu.Lock()
			r.lines = append(r.lines, line)
			r.mu.Unlock()
		}
	})
	return r
}

// TestReliabilityEnhancedFanOut is a reliability round of relays reading by
// enhanced fan-out on kinesis-local: two relays share one consumer and a
// lease table; while 1,500 records flow, one relay is killed with kill -9
// and replaced, and a shard is split. Every record must arrive, no record
// of a key before an earlier one of that key (first arrivals), and the
// duplicates must stay within the documented window (what the killed relay
// had in flight or finished since its last checkpoint).
func TestReliabilityEnhancedFanOut(t *testing.T) {
	if testing.Short() {
		t.Skip("the reliability round runs relay processes for about a minute; run without -short")
	}
	kc := awstest.KinesisClient(t)
	dc := awstest.DynamoDBClient(t)
	in, out := awstest.CreateStream(t, kc, 4), awstest.CreateStream(t, kc, 2)
	table := awstest.CreateTable(t, dc)
	env := []string{
		awstest.KinesisEndpointEnv + "=" + awstest.KinesisEndpoint(t),
		awstest.DynamoDBEndpointEnv + "=" + awstest.DynamoDBEndpoint(t),
		"RELAY_IN=" + in, "RELAY_OUT=" + out, "RELAY_TABLE=" + table, "RELAY_EFO=relay",
	}
	relays := []*efoRelay{startEFORelay(t, env, "e0"), startEFORelay(t, env, "e1")}
	started := 2
	const batches, perBatch = 6, 250
	total := batches * perBatch
	rng := rand.New(rand.NewPCG(12, 1))
	kills, victimShards := 0, 0
	for b := range batches {
		if b != 2 {
			produce(t, kc, in, b*perBatch, (b+1)*perBatch)
		} else {
			// kill -9, at a random moment while records flow, a relay that
			// holds shards and relays them: once the batches so far are
			// through.
			for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
				if distinct, _, _, _ := check(b*perBatch, readAll(t, kc, out)); distinct >= b*perBatch {
					break
				}
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				// A trickle of 25 records every 200ms, so that the kill
				// comes while the relay has records in flight.
				for i := b * perBatch; i < (b+1)*perBatch; i += 25 {
					produce(t, kc, in, i, i+25)
					time.Sleep(200 * time.Millisecond)
				}
			}()
			time.Sleep(500*time.Millisecond + time.Duration(rng.IntN(1500))*time.Millisecond)
			victim, held := leaseHolder(t, dc, table, kc, in, relays)
			_ = relays[victim].child.Cmd.Process.Kill()
			select {
			case <-relays[victim].child.Exited():
			case <-time.After(time.Minute):
				t.Fatal("a killed relay did not exit within a minute")
			}
			kills, victimShards = kills+1, held
			relays[victim] = startEFORelay(t, env, fmt.Sprintf("e%d", started))
			started++
			<-done
		}
		if b == 3 {
			splitFirstShard(t, kc, in)
		}
	}
	if victimShards == 0 {
		t.Errorf("the killed relay held no shard: the kill tested nothing")
	}
	deadline := time.Now().Add(3 * time.Minute) // a bound on a hang, not a speed claim
	var got []string
	for {
		got = readAll(t, kc, out)
		if distinct, _, _, _ := check(total, got); distinct >= total || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	for _, r := range relays {
		_ = r.child.Cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, r := range relays {
		select {
		case err := <-r.child.Exited():
			if err != nil {
				t.Errorf("a relay exited with %v after SIGTERM", err)
			}
		case <-time.After(time.Minute):
			t.Errorf("a relay did not stop within a minute of SIGTERM")
		}
	}
	got = readAll(t, kc, out)
	distinct, dups, violations, missing := check(total, got)
	if len(missing) > 0 {
		t.Errorf("%d records lost, e.g. %v", len(missing), missing[:min(5, len(missing))])
	}
	if violations > 0 {
		t.Errorf("%d records arrived before an earlier record of their key", violations)
	}
	// As the polling rounds bound it: what a shard can hold in flight,
	// per kill.
	if limit := (kills + 1) * 4 * 1000; dups > limit {
		t.Errorf("%d duplicates; more than the window allows (%d)", dups, limit)
	}
	shards, err := kc.ListShards(t.Context(), &kinesis.ListShardsInput{StreamName: aws.String(in)})
	if err != nil {
		t.Fatal(err)
	}
	if len(shards.Shards) != 6 {
		t.Errorf("the input has %d shards; want 6 after the split", len(shards.Shards))
	}
	t.Logf("the killed relay held %d of the 4 shards", victimShards)
	summary := fmt.Sprintf("\n%-36s %7s %6s %6s %6s %6s %9s %6s %6s\n%-36s %7d %6d %6d %6d %6d %9d %6d %6d\n",
		"round", "faults", "kills", "stops", "in", "out", "distinct", "dups", "order",
		"enhanced fan-out, kill -9 and a split", 0, kills, 0, total, len(got), distinct, dups, violations)
	t.Log(summary)
	fmt.Print(summary)
}

// leaseHolder returns the index in relays of a relay holding leases of
// stream's shards, waiting up to a minute for one, and how many it holds.
func leaseHolder(t *testing.T, dc *dynamodb.Client, table string, kc *kinesis.Client, stream string, relays []*efoRelay) (int, int) {
	t.Helper()
	ls, err := kc.ListShards(t.Context(), &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, sh := range ls.Shards {
		ids = append(ids, aws.ToString(sh.ShardId))
	}
	store, err := dynamostore.New(dc, table, func(o *dynamostore.Options) { o.Owner = "observer" })
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		states, err := store.Shards(t.Context(), stream, ids)
		if err != nil {
			t.Fatal(err)
		}
		held := map[string]int{}
		for _, st := range states {
			held[st.Owner]++
		}
		for i, r := range relays {
			if held[r.name] > 0 {
				return i, held[r.name]
			}
		}
	}
	t.Fatal("no relay held a lease within a minute")
	return 0, 0
}

// splitFirstShard splits the first open shard of stream in the middle of
// its hash key range.
func splitFirstShard(t *testing.T, kc *kinesis.Client, stream string) {
	t.Helper()
	ls, err := kc.ListShards(t.Context(), &kinesis.ListShardsInput{StreamName: aws.String(stream),
		ShardFilter: &types.ShardFilter{Type: types.ShardFilterTypeAtLatest}})
	if err != nil {
		t.Fatal(err)
	}
	sh := ls.Shards[0]
	start, _ := new(big.Int).SetString(aws.ToString(sh.HashKeyRange.StartingHashKey), 10)
	end, _ := new(big.Int).SetString(aws.ToString(sh.HashKeyRange.EndingHashKey), 10)
	mid := new(big.Int).Rsh(new(big.Int).Add(start, end), 1)
	if _, err := kc.SplitShard(t.Context(), &kinesis.SplitShardInput{StreamName: aws.String(stream), ShardToSplit: sh.ShardId,
		NewStartingHashKey: aws.String(mid.String())}); err != nil {
		t.Fatalf("split: %v", err)
	}
	waitActive(t, kc, stream)
}
