package reliability_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	"github.com/shardflow/shardflow/internal/awstest"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// keyConcRelayEnv makes the test binary a relay process with key
// concurrency. The package's TestMain (reliability_test.go) serves the
// plain relay, and a package has one TestMain, so this child is started
// from init, before it.
const keyConcRelayEnv = "SHARDFLOW_RELIABILITY_KEYCONC_RELAY"

// keyConcWorkers is the relay's ByKey n.
const keyConcWorkers = 16

// keyConcKeys is how many partition keys the round's records use: enough
// for every worker of a shard to have keys of its own.
const keyConcKeys = 96

func init() { awstest.ServeChild(keyConcRelayEnv, runKeyConcRelay) }

// runKeyConcRelay is runRelay with the relay's stages on 16 key workers per
// shard (by partition key), behind a handler that waits a random 0-4ms, so
// that the workers finish out of the shard's order. It reports the faults
// it injected and the most handler calls it saw at once on one shard.
func runKeyConcRelay() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	kOpts, dOpts, err := awstest.ChildOptions()
	if err != nil {
		return err
	}
	mode := os.Getenv("RELAY_FAULTS")
	seed := uint64(time.Now().UnixNano())
	kf := &awstest.FaultClient{Decide: decideFaults(mode, seed), SlowDelay: 300 * time.Millisecond}
	df := &awstest.FaultClient{Decide: decideFaults(mode, seed+1), SlowDelay: 300 * time.Millisecond}
	awstest.KinesisFaults(kf)(&kOpts)
	awstest.DynamoDBFaults(df)(&dOpts)
	kc, dc := kinesis.New(kOpts), dynamodb.New(dOpts)

	var mu sync.Mutex
	active := map[string]int{} // handler calls in progress, by shard
	var peak atomic.Int64
	go func() {
		for range time.Tick(500 * time.Millisecond) {
			n := 0
			for _, fc := range []*awstest.FaultClient{kf, df} {
				for _, f := range allFaults {
					n += fc.Injected(f)
				}
			}
			fmt.Fprintf(os.Stderr, "FAULTS %d\nPEAK %d\n", n, peak.Load())
		}
	}()
	call := func(ctx context.Context, r shardflow.Record) error {
		mu.Lock()
		active[r.ShardID]++
		if n := int64(active[r.ShardID]); n > peak.Load() {
			peak.Store(n)
		}
		mu.Unlock()
		defer func() {
			mu.Lock()
			active[r.ShardID]--
			mu.Unlock()
		}()
		select {
		case <-time.After(time.Duration(rand.IntN(5)) * time.Millisecond):
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}

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
		o.IdleInterval = 200 * time.Millisecond
		o.DiscoveryInterval = 2 * time.Second
	})
	if err != nil {
		return err
	}
	sink, err := kinesissink.New(kc, os.Getenv("RELAY_OUT"), func(o *kinesissink.Options) {
		o.Ordered = true // each key's order, which ByKey keeps, kept by the sink
		o.Linger = 50 * time.Millisecond
		o.Logger = log
	})
	if err != nil {
		return err
	}
	records := shardflow.Source(src, func(o *shardflow.Options) {
		o.CheckpointInterval = time.Second
		o.Logger = log
	})
	runErr := shardflow.ByKey(records, keyConcWorkers, nil).
		Tap(call, shardflow.WithName("call")).
		Map(kinesissink.FromRecord).
		Sink(sink).Run(ctx)
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	return errors.Join(runErr, sink.Close(closeCtx))
}

// keyConcRelay is a running key-concurrency relay process.
type keyConcRelay struct {
	child       *awstest.Child
	mu          sync.Mutex
	faults      int
	peak        int
	leaseLosses int
}

func startKeyConcRelay(t *testing.T, env []string, name, faults string) *keyConcRelay {
	t.Helper()
	r := &keyConcRelay{}
	r.child = awstest.StartChild(t, keyConcRelayEnv, append(env[:len(env):len(env)], "RELAY_OWNER="+name, "RELAY_FAULTS="+faults), func(line string) {
		var k int
		r.mu.Lock()
		defer r.mu.Unlock()
		switch {
		case strings.HasPrefix(line, "FAULTS "):
			_, _ = fmt.Sscanf(line, "FAULTS %d", &r.faults)
			return
		case strings.HasPrefix(line, "PEAK "):
			if _, e := fmt.Sscanf(line, "PEAK %d", &k); e == nil {
				r.peak = max(r.peak, k)
			}
			return
		case strings.Contains(line, "lease lost"):
			r.leaseLosses++
		}
		if strings.Contains(line, "level=ERROR") || strings.Contains(line, "lease") || !strings.Contains(line, "level=") {
			t.Logf("%s: %s", name, line)
		}
	})
	return r
}

func (r *keyConcRelay) counts() (faults, peak, leaseLosses int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.faults, r.peak, r.leaseLosses
}

// produceKeyed writes records "key-k:i" for i in [from, to) on keyConcKeys
// keys, in order per key.
func produceKeyed(t *testing.T, kc *kinesis.Client, stream string, from, to int) {
	t.Helper()
	p, err := kinesissink.NewProducer(kc, stream, func(o *kinesissink.Options) { o.Ordered = true })
	if err != nil {
		t.Fatal(err)
	}
	for i := from; i < to; i++ {
		key := fmt.Sprintf("key-%02d", i%keyConcKeys)
		if err := p.Put(t.Context(), fmt.Appendf(nil, "%s:%d", key, i), key); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(t.Context()); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// missingKeyed returns the records of [0, total) that out lacks.
func missingKeyed(total int, out []string) []string {
	seen := make(map[string]bool, len(out))
	for _, d := range out {
		seen[d] = true
	}
	var missing []string
	for i := range total {
		if d := fmt.Sprintf("key-%02d:%d", i%keyConcKeys, i); !seen[d] {
			missing = append(missing, d)
		}
	}
	return missing
}

// TestReliabilityKeyConcurrency is a reliability round of relays that run
// their stages on 16 key workers per shard (ByKey), under faults on every
// AWS call and three kill -9s: two relays share a lease table while 1,500
// records on 96 keys flow through 4 shards. Every record must arrive, no
// record of a key before an earlier one of that key (first arrivals), the
// duplicates must stay within the documented window, and the relays must
// have run records of a shard concurrently.
func TestReliabilityKeyConcurrency(t *testing.T) {
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
		"RELAY_IN=" + in, "RELAY_OUT=" + out, "RELAY_TABLE=" + table,
	}
	const batches, perBatch, wantKills = 6, 250, 3
	total := batches * perBatch
	relays := []*keyConcRelay{startKeyConcRelay(t, env, "k0", faultsAll), startKeyConcRelay(t, env, "k1", faultsAll)}
	started := 2
	var gone []*keyConcRelay
	rng := rand.New(rand.NewPCG(16, 1))
	kills := 0
	for b := range batches {
		produceKeyed(t, kc, in, b*perBatch, (b+1)*perBatch)
		if kills < wantKills && b >= 1 {
			time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond) // a random moment
			victim := rng.IntN(len(relays))
			_ = relays[victim].child.Cmd.Process.Kill()
			select {
			case <-relays[victim].child.Exited():
			case <-time.After(time.Minute):
				t.Fatal("a killed relay did not exit within a minute")
			}
			gone = append(gone, relays[victim])
			relays[victim] = startKeyConcRelay(t, env, fmt.Sprintf("k%d", started), faultsAll)
			started++
			kills++
		}
	}
	deadline := time.Now().Add(3 * time.Minute) // a bound on a hang, not a speed claim
	var got []string
	for {
		got = readAll(t, kc, out)
		if len(missingKeyed(total, got)) == 0 || time.Now().After(deadline) {
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
	faults, peak, losses := 0, 0, 0
	for _, r := range append(gone, relays...) {
		f, p, l := r.counts()
		faults, peak, losses = faults+f, max(peak, p), losses+l
	}
	got = readAll(t, kc, out)
	distinct, dups, violations, _ := check(total, got) // check's own missing list is for produce's keys
	missing := missingKeyed(total, got)
	if len(missing) > 0 {
		t.Errorf("%d records lost, e.g. %v", len(missing), missing[:min(5, len(missing))])
	}
	if violations > 0 {
		t.Errorf("%d records arrived before an earlier record of their key", violations)
	}
	if faults == 0 {
		t.Errorf("no fault was injected")
	}
	if peak < 2 {
		t.Errorf("at most %d handler calls of a shard ran at once; want key workers running concurrently", peak)
	}
	// As the other rounds bound it: what a shard can hold in flight per
	// kill, and the PutRecords requests served but reset.
	if limit := (kills+1)*4*1000 + 500*faults/4; dups > limit {
		t.Errorf("%d duplicates; more than the window allows (%d)", dups, limit)
	}
	summary := fmt.Sprintf("\n%-36s %7s %6s %6s %6s %9s %6s %6s %7s %5s\n%-36s %7d %6d %6d %6d %9d %6d %6d %7d %5d\n",
		"round", "faults", "kills", "in", "out", "distinct", "dups", "order", "losses", "peak",
		fmt.Sprintf("%d key workers, faults and kill -9", keyConcWorkers), faults, kills, total, len(got), distinct, dups, violations, losses, peak)
	t.Log(summary)
	fmt.Print(summary)
}
