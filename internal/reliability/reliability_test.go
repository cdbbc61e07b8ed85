package reliability_test

import (
	"context"
	"fmt"
	"math/big"
	"math/rand/v2"
	"os"
	"os/exec"
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

const relayEnv = "SHARDFLOW_RELIABILITY_RELAY"

func TestMain(m *testing.M) {
	if os.Getenv(relayEnv) == "1" {
		if err := runRelay(); err != nil {
			fmt.Fprintln(os.Stderr, "relay:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// decideFaults injects, when RELAY_FAULTS=1, throttling, 500s, resets before
// and after the request was served, and slow answers into about a quarter
// of the Kinesis and DynamoDB calls of a relay.
func decideFaults(seed uint64) func(op string, n int) awstest.Fault {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, 7))
	return func(op string, n int) awstest.Fault {
		mu.Lock()
		defer mu.Unlock()
		switch x := rng.IntN(100); {
		case x < 8:
			return awstest.Throttle
		case x < 13:
			return awstest.ServerError
		case x < 17:
			return awstest.ResetBefore
		case x < 20:
			return awstest.ResetAfter
		case x < 25:
			return awstest.Slow
		}
		return awstest.Pass
	}
}

// runRelay is one relay process: Kinesis source with DynamoDB checkpoints
// and leases -> ordered Kinesis sink, with faults injected into both
// clients when asked. Every second it reports the faults it injected.
func runRelay() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	kOpts, dOpts, err := awstest.ChildOptions()
	if err != nil {
		return err
	}
	var faults []*awstest.FaultClient
	if os.Getenv("RELAY_FAULTS") == "1" {
		seed := uint64(time.Now().UnixNano())
		kf := &awstest.FaultClient{Decide: decideFaults(seed), SlowDelay: 300 * time.Millisecond}
		df := &awstest.FaultClient{Decide: decideFaults(seed + 1), SlowDelay: 300 * time.Millisecond}
		awstest.KinesisFaults(kf)(&kOpts)
		awstest.DynamoDBFaults(df)(&dOpts)
		faults = []*awstest.FaultClient{kf, df}
	}
	kc, dc := kinesis.New(kOpts), dynamodb.New(dOpts)
	go func() {
		for range time.Tick(500 * time.Millisecond) {
			n := 0
			for _, fc := range faults {
				for _, f := range []awstest.Fault{awstest.Throttle, awstest.ServerError, awstest.ResetBefore, awstest.ResetAfter, awstest.Slow} {
					n += fc.Injected(f)
				}
			}
			fmt.Fprintf(os.Stderr, "FAULTS %d\n", n)
		}
	}()
	store, err := dynamostore.New(dc, os.Getenv("RELAY_TABLE"), func(o *dynamostore.Options) { o.Owner = os.Getenv("RELAY_OWNER") })
	if err != nil {
		return err
	}
	src, err := kinesissource.New(kc, os.Getenv("RELAY_IN"), func(o *kinesissource.Options) {
		o.Checkpoint = store
		o.InitialPosition = kinesissource.TrimHorizon()
		o.IdleInterval = 200 * time.Millisecond
		o.DiscoveryInterval = 2 * time.Second
	})
	if err != nil {
		return err
	}
	sink, err := kinesissink.New(kc, os.Getenv("RELAY_OUT"), func(o *kinesissink.Options) {
		o.Ordered = true
		o.Linger = 50 * time.Millisecond
	})
	if err != nil {
		return err
	}
	defer sink.Close(context.WithoutCancel(ctx))
	return shardflow.Source(src, func(o *shardflow.Options) { o.CheckpointInterval = time.Second }).
		Map(kinesissink.FromRecord).Sink(sink).Run(ctx)
}

// round is one scenario of the suite.
type round struct {
	name    string
	faults  bool
	kills   int  // kill -9 and replace a relay this many times while producing
	reshard bool // split one shard and merge two while producing
}

type result struct {
	name                    string
	faults, kills           int
	in, out, distinct, dups int
	orderViolations         int
}

// relayProc is a running relay process.
type relayProc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	faults int
	done   chan error
}

func startRelay(t *testing.T, env []string, name string, faults bool) *relayProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	f := "0"
	if faults {
		f = "1"
	}
	cmd.Env = append(os.Environ(), append(env, relayEnv+"=1", "RELAY_OWNER="+name, "RELAY_FAULTS="+f)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &relayProc{cmd: cmd, done: make(chan error, 1)}
	go func() {
		buf := make([]byte, 64<<10)
		var rest string
		for {
			n, err := stderr.Read(buf)
			rest += string(buf[:n])
			for {
				line, more, ok := strings.Cut(rest, "\n")
				if !ok {
					break
				}
				rest = more
				var k int
				if _, e := fmt.Sscanf(line, "FAULTS %d", &k); e == nil {
					p.mu.Lock()
					p.faults = k
					p.mu.Unlock()
				} else if strings.TrimSpace(line) != "" {
					t.Logf("%s: %s", name, line)
				}
			}
			if err != nil {
				break
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return p
}

func (p *relayProc) injected() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.faults
}

// produce writes n records "key-k:i" on 24 keys in bursts, ordered per key.
func produce(t *testing.T, kc *kinesis.Client, stream string, from, to int) {
	t.Helper()
	p, err := kinesissink.NewProducer(kc, stream, func(o *kinesissink.Options) { o.Ordered = true })
	if err != nil {
		t.Fatal(err)
	}
	for i := from; i < to; i++ {
		key := fmt.Sprintf("key-%02d", i%24)
		if err := p.Put(t.Context(), fmt.Appendf(nil, "%s:%d", key, i), key); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(t.Context()); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// readAll reads every record of a stream from the trim horizon.
func readAll(t *testing.T, kc *kinesis.Client, stream string) []string {
	t.Helper()
	shards, err := kc.ListShards(t.Context(), &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, sh := range shards.Shards {
		it, err := kc.GetShardIterator(t.Context(), &kinesis.GetShardIteratorInput{StreamName: aws.String(stream), ShardId: sh.ShardId,
			ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
		if err != nil {
			t.Fatal(err)
		}
		for iter := it.ShardIterator; iter != nil; {
			res, err := kc.GetRecords(t.Context(), &kinesis.GetRecordsInput{ShardIterator: iter})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res.Records {
				out = append(out, string(r.Data))
			}
			if len(res.Records) == 0 && aws.ToInt64(res.MillisBehindLatest) == 0 {
				break
			}
			iter = res.NextShardIterator
		}
	}
	return out
}

// check counts what arrived, and the per-key order of first arrivals.
func check(in int, out []string) (distinct, dups, violations int, missing []string) {
	seen := map[string]bool{}
	last := map[string]int{}
	for _, d := range out {
		if seen[d] {
			dups++
			continue
		}
		seen[d] = true
		key, num, _ := strings.Cut(d, ":")
		var i int
		fmt.Sscan(num, &i)
		if prev, ok := last[key]; ok && i < prev {
			violations++
		}
		last[key] = i
	}
	for i := range in {
		d := fmt.Sprintf("key-%02d:%d", i%24, i)
		if !seen[d] {
			missing = append(missing, d)
		}
	}
	return len(seen), dups, violations, missing
}

func TestReliability(t *testing.T) {
	if testing.Short() {
		t.Skip("the reliability suite runs relay processes for about two minutes; run without -short")
	}
	rounds := []round{
		{name: "faults on every call", faults: true},
		{name: "kill -9 three times", kills: 3},
		{name: "split and merge mid-stream", reshard: true},
		{name: "faults, kill -9 and resharding", faults: true, kills: 2, reshard: true},
	}
	kc := awstest.KinesisClient(t)
	dc := awstest.DynamoDBClient(t)
	var results []result
	for ri, rd := range rounds {
		t.Run(rd.name, func(t *testing.T) {
			in, out := awstest.CreateStream(t, kc, 4), awstest.CreateStream(t, kc, 2)
			table := awstest.CreateTable(t, dc)
			env := []string{
				awstest.KinesisEndpointEnv + "=" + awstest.KinesisEndpoint(t),
				awstest.DynamoDBEndpointEnv + "=" + awstest.DynamoDBEndpoint(t),
				"RELAY_IN=" + in, "RELAY_OUT=" + out, "RELAY_TABLE=" + table,
			}
			const batches, perBatch = 6, 250
			total := batches * perBatch
			n := 0
			relays := []*relayProc{startRelay(t, env, fmt.Sprintf("r%d-%d", ri, n), rd.faults), startRelay(t, env, fmt.Sprintf("r%d-%d", ri, n+1), rd.faults)}
			n += 2
			kills, faults := 0, 0
			rng := rand.New(rand.NewPCG(uint64(ri), 1))
			for b := range batches {
				produce(t, kc, in, b*perBatch, (b+1)*perBatch)
				if rd.reshard && b == 2 {
					reshard(t, kc, in)
				}
				if kills < rd.kills && b >= 1 {
					time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond) // a random moment
					victim := rng.IntN(len(relays))
					faults += relays[victim].injected()
					_ = relays[victim].cmd.Process.Kill()
					<-relays[victim].done
					relays[victim] = startRelay(t, env, fmt.Sprintf("r%d-%d", ri, n), rd.faults)
					n++
					kills++
				}
			}
			// Wait until every record arrived, then stop the relays.
			deadline := time.Now().Add(3 * time.Minute)
			var got []string
			for {
				got = readAll(t, kc, out)
				if distinct, _, _, _ := check(total, got); distinct >= total || time.Now().After(deadline) {
					break
				}
				time.Sleep(time.Second)
			}
			for _, r := range relays {
				faults += r.injected()
				_ = r.cmd.Process.Signal(syscall.SIGTERM)
			}
			for _, r := range relays {
				select {
				case err := <-r.done:
					if err != nil {
						t.Errorf("a relay exited with %v after SIGTERM", err)
					}
				case <-time.After(time.Minute):
					t.Errorf("a relay did not stop within a minute of SIGTERM")
				}
			}
			got = readAll(t, kc, out)
			distinct, dups, violations, missing := check(total, got)
			results = append(results, result{name: rd.name, faults: faults, kills: kills, in: total, out: len(got),
				distinct: distinct, dups: dups, orderViolations: violations})
			if len(missing) > 0 {
				t.Errorf("%d records lost, e.g. %v", len(missing), missing[:min(5, len(missing))])
			}
			if violations > 0 {
				t.Errorf("%d records arrived before an earlier record of their key", violations)
			}
			if rd.faults && faults == 0 {
				t.Errorf("no fault was injected")
			}
			// The documented window: records in flight or finished since
			// the last checkpoint (1s) when a relay was killed or lost a
			// lease, and PutRecords requests served but reset. Bound it
			// generously by what a shard can hold in flight.
			if limit := (kills+1)*4*1000 + 500*faults/4; dups > limit {
				t.Errorf("%d duplicates; more than the window allows (%d)", dups, limit)
			}
			if rd.kills == 0 && !rd.faults && dups > 0 {
				t.Errorf("%d duplicates with no kill and no fault; want none", dups)
			}
		})
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-34s %7s %6s %8s %8s %9s %6s %6s\n", "round", "faults", "kills", "in", "out", "distinct", "dups", "order")
	for _, r := range results {
		fmt.Fprintf(&sb, "%-34s %7d %6d %8d %8d %9d %6d %6d\n", r.name, r.faults, r.kills, r.in, r.out, r.distinct, r.dups, r.orderViolations)
	}
	t.Log(sb.String())
	fmt.Print(sb.String())
}

// reshard splits the first shard of a 4-shard stream and merges the next two.
func reshard(t *testing.T, kc *kinesis.Client, stream string) {
	t.Helper()
	ls, err := kc.ListShards(t.Context(), &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatal(err)
	}
	var open []types.Shard
	for _, s := range ls.Shards {
		if s.SequenceNumberRange.EndingSequenceNumber == nil {
			open = append(open, s)
		}
	}
	start, _ := new(big.Int).SetString(aws.ToString(open[0].HashKeyRange.StartingHashKey), 10)
	end, _ := new(big.Int).SetString(aws.ToString(open[0].HashKeyRange.EndingHashKey), 10)
	mid := new(big.Int).Rsh(new(big.Int).Add(start, end), 1)
	if _, err := kc.SplitShard(t.Context(), &kinesis.SplitShardInput{StreamName: aws.String(stream), ShardToSplit: open[0].ShardId,
		NewStartingHashKey: aws.String(mid.String())}); err != nil {
		t.Fatalf("split: %v", err)
	}
	waitActive(t, kc, stream)
	if _, err := kc.MergeShards(t.Context(), &kinesis.MergeShardsInput{StreamName: aws.String(stream), ShardToMerge: open[1].ShardId,
		AdjacentShardToMerge: open[2].ShardId}); err != nil {
		t.Fatalf("merge: %v", err)
	}
	waitActive(t, kc, stream)
}

func waitActive(t *testing.T, kc *kinesis.Client, stream string) {
	t.Helper()
	for range 400 {
		out, err := kc.DescribeStreamSummary(t.Context(), &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(stream)})
		if err == nil && out.StreamDescriptionSummary.StreamStatus == types.StreamStatusActive {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("stream %s not ACTIVE after resharding", stream)
}
