package reliability_test

import (
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	"github.com/shardflow/shardflow/internal/awstest"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// crashRelayEnv makes the test binary a relay process for the crash round
// (started from init, like the enhanced fan-out relay: the package's
// TestMain serves the polling relay).
const crashRelayEnv = "SHARDFLOW_RELIABILITY_CRASH_RELAY"

// crashEvery is the crash round's Options.CheckpointEvery.
const crashEvery = 200

var processStart = time.Now()

func init() { awstest.ServeChild(crashRelayEnv, runCrashRelay) }

// runCrashRelay is a relay with a stable identity (RELAY_OWNER) and
// CheckpointEvery: Kinesis source with DynamoDB checkpoints and leases ->
// ordered Kinesis sink. It logs "FIRST <ms>" when its first record reaches
// the sink stage, with the time since the process started, and "SEEN <n>"
// every 100 records.
func runCrashRelay() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	kOpts, dOpts, err := awstest.ChildOptions()
	if err != nil {
		return err
	}
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
		o.IdleInterval = 200 * time.Millisecond
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
	var seen atomic.Int64
	note := func(_ context.Context, r shardflow.Record) (shardflow.Record, error) {
		switch n := seen.Add(1); {
		case n == 1:
			fmt.Fprintf(os.Stderr, "FIRST %d\n", time.Since(processStart).Milliseconds())
		case n%100 == 0:
			fmt.Fprintf(os.Stderr, "SEEN %d\n", n)
		}
		return r, nil
	}
	runErr := shardflow.Source(src, func(o *shardflow.Options) {
		o.CheckpointEvery = crashEvery
		o.Logger = log
	}).Map(note).Map(kinesissink.FromRecord).Sink(sink).Run(ctx)
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	return errors.Join(runErr, sink.Close(closeCtx))
}

// crashRelay is a running crash-round relay.
type crashRelay struct {
	child *awstest.Child
	first chan time.Duration // its FIRST line
	seen  atomic.Int64       // its last SEEN line
	mu    sync.Mutex
	lines []string // its lease log lines
}

func startCrashRelay(t *testing.T, env []string, owner string) *crashRelay {
	t.Helper()
	r := &crashRelay{first: make(chan time.Duration, 1)}
	r.child = awstest.StartChild(t, crashRelayEnv, append(env[:len(env):len(env)], "RELAY_OWNER="+owner), func(line string) {
		if ms, ok := strings.CutPrefix(line, "FIRST "); ok {
			n, _ := strconv.Atoi(ms)
			r.first <- time.Duration(n) * time.Millisecond
			return
		}
		if n, ok := strings.CutPrefix(line, "SEEN "); ok {
			v, _ := strconv.Atoi(n)
			r.seen.Store(int64(v))
			return
		}
		if strings.Contains(line, "level=ERROR") || strings.Contains(line, "lease") || !strings.Contains(line, "level=") {
			t.Logf("%s: %s", owner, line)
			r.mu.Lock()
			r.lines = append(r.lines, line)
			r.mu.Unlock()
		}
	})
	return r
}

// produceFast writes records key-NN:i, i in [0, n), with the producer's
// defaults (no per-key order: this round does not check order).
func produceFast(t *testing.T, kc *kinesis.Client, stream string, n int) {
	t.Helper()
	p, err := kinesissink.NewProducer(kc, stream)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		key := fmt.Sprintf("key-%02d", i%24)
		if err := p.Put(t.Context(), fmt.Appendf(nil, "%s:%d", key, i), key); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(t.Context()); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// shardOfKey returns the function that names the shard of stream a
// partition key goes to.
func shardOfKey(t *testing.T, kc *kinesis.Client, stream string) func(key string) string {
	t.Helper()
	res, err := kc.ListShards(t.Context(), &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatal(err)
	}
	return func(key string) string {
		sum := md5.Sum([]byte(key))
		h := new(big.Int).SetBytes(sum[:])
		for _, sh := range res.Shards {
			lo, _ := new(big.Int).SetString(aws.ToString(sh.HashKeyRange.StartingHashKey), 10)
			hi, _ := new(big.Int).SetString(aws.ToString(sh.HashKeyRange.EndingHashKey), 10)
			if h.Cmp(lo) >= 0 && h.Cmp(hi) <= 0 {
				return aws.ToString(sh.ShardId)
			}
		}
		t.Fatalf("no shard of %s holds key %s", stream, key)
		return ""
	}
}

// TestReliabilityCrashRestartSameIdentity kills a relay with kill -9 at a
// random point while it relays 6,000 records and restarts it with the same
// owner id. The restarted relay must take its own leases back at once
// (fencing the dead process by the lease counter) rather than wait for
// them to expire, and CheckpointEvery bounds what the crash repeats: at
// most crashEvery records per shard arrive twice. Nothing is lost.
func TestReliabilityCrashRestartSameIdentity(t *testing.T) {
	if testing.Short() {
		t.Skip("the crash round runs relay processes for about a minute; run without -short")
	}
	const total = 6000
	kc := awstest.KinesisClient(t)
	dc := awstest.DynamoDBClient(t)
	in, out := awstest.CreateStream(t, kc, 4), awstest.CreateStream(t, kc, 2)
	table := awstest.CreateTable(t, dc)
	env := []string{"RELAY_IN=" + in, "RELAY_OUT=" + out, "RELAY_TABLE=" + table}
	produceFast(t, kc, in, total)

	const owner = "crash-relay-0"
	first := startCrashRelay(t, env, owner)
	select {
	case d := <-first.first:
		t.Logf("first relay: first record %v after its start", d)
	case err := <-first.child.Exited():
		t.Fatalf("the relay exited before its first record: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("the relay read no record within two minutes")
	}
	// kill -9 at a random point of the relay's work: once it has seen
	// between 10% and 60% of the records.
	at := int64(total/10 + rand.IntN(total/2))
	for first.seen.Load() < at {
		select {
		case err := <-first.child.Exited():
			t.Fatalf("the relay exited before it was killed: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	_ = first.child.Cmd.Process.Kill()
	select {
	case <-first.child.Exited():
	case <-time.After(time.Minute):
		t.Fatal("the killed relay did not exit within a minute")
	}
	relayed := len(readAll(t, kc, out))
	t.Logf("killed after it had seen about %d records; %d of %d had reached the output stream", at, relayed, total)

	second := startCrashRelay(t, env, owner)
	var restart time.Duration
	select {
	case restart = <-second.first:
		t.Logf("restarted relay: first record %v after its start", restart)
	case err := <-second.child.Exited():
		t.Fatalf("the restarted relay exited before its first record: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("the restarted relay read no record within two minutes")
	}

	// Wait until every record arrived (a generous bound on a hang).
	var got []string
	for deadline := time.Now().Add(3 * time.Minute); ; {
		got = readAll(t, kc, out)
		if distinct, _, _, _ := check(total, got); distinct == total {
			break
		}
		if time.Now().After(deadline) {
			_, _, _, missing := check(total, got)
			t.Fatalf("%d records missing after three minutes, e.g. %v", len(missing), missing[:min(5, len(missing))])
		}
		time.Sleep(500 * time.Millisecond)
	}
	_ = second.child.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-second.child.Exited():
		if err != nil {
			t.Errorf("the restarted relay stopped with %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the restarted relay did not stop within a minute of SIGTERM")
	}
	got = readAll(t, kc, out)

	shardOf := shardOfKey(t, kc, in)
	seen := make(map[string]int)
	dups := make(map[string]int) // by input shard
	for _, d := range got {
		if seen[d]++; seen[d] > 1 {
			key, _, _ := strings.Cut(d, ":")
			dups[shardOf(key)]++
		}
	}
	_, _, _, missing := check(total, got)
	worst := 0
	for _, n := range dups {
		worst = max(worst, n)
	}
	t.Logf("%-28s %8s %8s %10s %18s %12s", "round", "in", "out", "missing", "dups (worst shard)", "restart")
	t.Logf("%-28s %8d %8d %10d %9d (%6d) %12v", "kill -9, restart same id", total, len(got), len(missing), len(got)-len(seen), worst, restart)
	if len(missing) > 0 {
		t.Errorf("%d records lost", len(missing))
	}
	if worst > crashEvery {
		t.Errorf("%d records of one shard arrived twice; CheckpointEvery = %d bounds it", worst, crashEvery)
	}
	second.mu.Lock()
	defer second.mu.Unlock()
	for _, line := range second.lines {
		if strings.Contains(line, "lease taken") && strings.Contains(line, "(expired)") {
			t.Errorf("the restarted relay waited for its own lease to expire instead of taking it back at once: %s", line)
		}
	}
}
