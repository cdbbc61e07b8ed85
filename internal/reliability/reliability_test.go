package reliability_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsretry "github.com/aws/aws-sdk-go-v2/aws/retry"
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

func TestMain(m *testing.M) { awstest.ChildMain(m, relayEnv, runRelay) }

// The fault modes of a relay (RELAY_FAULTS).
const (
	faultsNone = ""
	// faultsAll: throttling, 500s, resets before and after the request was
	// served, slow answers and partial PutRecords failures on about a
	// quarter of the Kinesis and DynamoDB calls.
	faultsAll = "all"
	// faultsPartial: a partial failure on a third of the PutRecords calls,
	// nothing else: the case where an unordered sink reorders a key.
	faultsPartial = "partial"
	// faultsLostWrites: half of the DynamoDB writes are applied but
	// their response is lost, and the DynamoDB client has the SDK's
	// standard retryer, as a user's client would.
	faultsLostWrites = "lost-writes"
	// faultsSlowLeases: DynamoDB applies writes at once but answers them
	// slowly, so that a SIGTERM often arrives while a lease renewal is in
	// flight: cancelled for the relay, applied in the table.
	faultsSlowLeases = "slow-leases"
)

// decideFaults picks the faults of one client of a relay in mode.
func decideFaults(mode string, seed uint64) func(op string, n int) awstest.Fault {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, 7))
	return func(op string, n int) awstest.Fault {
		mu.Lock()
		defer mu.Unlock()
		write := op == "UpdateItem" || op == "PutItem" || op == "DeleteItem"
		switch mode {
		case faultsPartial:
			if op == "PutRecords" && rng.IntN(3) == 0 {
				return awstest.PartialFailure
			}
			return awstest.Pass
		case faultsLostWrites:
			if write && rng.IntN(2) == 0 {
				return awstest.ResetAfter
			}
			return awstest.Pass
		case faultsSlowLeases:
			if write {
				return awstest.SlowAnswer
			}
			return awstest.Pass
		case faultsNone:
			return awstest.Pass
		}
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
		case x < 30 && op == "PutRecords":
			return awstest.PartialFailure
		}
		return awstest.Pass
	}
}

// allFaults are the faults a relay counts and reports.
var allFaults = []awstest.Fault{awstest.Throttle, awstest.ServerError, awstest.ResetBefore, awstest.ResetAfter, awstest.Slow, awstest.PartialFailure, awstest.SlowAnswer}

// outage wraps decide: while the file named by RELAY_OUTAGE_FILE exists,
// every call fails as if the service were unreachable.
func outage(decide func(op string, n int) awstest.Fault) func(op string, n int) awstest.Fault {
	flag := os.Getenv("RELAY_OUTAGE_FILE")
	if flag == "" {
		return decide
	}
	return func(op string, n int) awstest.Fault {
		if _, err := os.Stat(flag); err == nil {
			return awstest.ResetBefore
		}
		return decide(op, n)
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
	mode := os.Getenv("RELAY_FAULTS")
	seed := uint64(time.Now().UnixNano())
	kf := &awstest.FaultClient{Decide: outage(decideFaults(mode, seed)), SlowDelay: 300 * time.Millisecond}
	df := &awstest.FaultClient{Decide: decideFaults(mode, seed+1), SlowDelay: 300 * time.Millisecond}
	awstest.KinesisFaults(kf)(&kOpts)
	awstest.DynamoDBFaults(df)(&dOpts)
	if mode == faultsSlowLeases {
		df.SlowDelay = time.Second
	}
	if mode == faultsLostWrites {
		dOpts.Retryer = awsretry.NewStandard() // what a user's client has
	}
	kc, dc := kinesis.New(kOpts), dynamodb.New(dOpts)
	go func() {
		for range time.Tick(500 * time.Millisecond) {
			n := 0
			for _, fc := range []*awstest.FaultClient{kf, df} {
				for _, f := range allFaults {
					n += fc.Injected(f)
				}
			}
			fmt.Fprintf(os.Stderr, "FAULTS %d\n", n)
		}
	}()
	// The parent counts what the relay logs (lease losses, retries).
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
		// A relay keeps each key's order: the CLI's and the example's
		// default too.
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

// round is one scenario of the suite.
type round struct {
	name     string
	faults   string        // a fault mode: faultsAll, faultsPartial...
	kills    int           // kill -9 and replace a relay this many times while producing
	sigterms int           // stop a relay with SIGTERM and replace it this many times while producing
	reshard  bool          // split one shard and merge two while producing
	reset    bool          // reset a held shard's checkpoint while producing
	outage   time.Duration // make Kinesis unreachable this long while producing
	// noDups: the round must not repeat a record (graceful hand-overs only).
	noDups bool
}

type result struct {
	name                    string
	faults, kills, stops    int
	in, out, distinct, dups int
	orderViolations         int
	leaseLosses             int
}

// relayProc is a running relay process.
type relayProc struct {
	cmd         *exec.Cmd
	mu          sync.Mutex
	faults      int
	leaseLosses int
	lateHandoff int // hand-overs that ran out of HandoffTimeout (logged)
	done        <-chan error
}

func startRelay(t *testing.T, env []string, name string, faults string) *relayProc {
	t.Helper()
	p := &relayProc{}
	c := awstest.StartChild(t, relayEnv, append(env[:len(env):len(env)], "RELAY_OWNER="+name, "RELAY_FAULTS="+faults), func(line string) {
		var k int
		if _, e := fmt.Sscanf(line, "FAULTS %d", &k); e == nil {
			p.mu.Lock()
			p.faults = k
			p.mu.Unlock()
			return
		}
		if strings.Contains(line, "lease lost") {
			p.mu.Lock()
			p.leaseLosses++
			p.mu.Unlock()
		}
		if strings.Contains(line, "without its final checkpoint") {
			p.mu.Lock()
			p.lateHandoff++
			p.mu.Unlock()
		}
		// Retries are expected under faults; show what matters.
		if strings.Contains(line, "level=ERROR") || strings.Contains(line, "lease") || !strings.Contains(line, "level=") {
			t.Logf("%s: %s", name, line)
		}
	})
	p.cmd, p.done = c.Cmd, c.Exited()
	return p
}

func (p *relayProc) injected() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.faults
}

func (p *relayProc) losses() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.leaseLosses
}

func (p *relayProc) lateHandoffs() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lateHandoff
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
		out = append(out, readShard(t, kc, stream, aws.ToString(sh.ShardId))...)
	}
	return out
}

// readShard reads every record of a shard from the trim horizon.
func readShard(t *testing.T, kc *kinesis.Client, stream, shardID string) []string {
	t.Helper()
	it, err := kc.GetShardIterator(t.Context(), &kinesis.GetShardIteratorInput{StreamName: aws.String(stream), ShardId: aws.String(shardID),
		ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
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
		t.Skip("the reliability suite runs relay processes for several minutes; run without -short")
	}
	rounds := []round{
		{name: "faults on every call", faults: faultsAll},
		{name: "partial PutRecords failures", faults: faultsPartial},
		{name: "kill -9 three times", kills: 3},
		{name: "split and merge mid-stream", reshard: true},
		{name: "faults, kill -9 and resharding", faults: faultsAll, kills: 2, reshard: true},
		{name: "lease writes applied, answers lost", faults: faultsLostWrites},
		{name: "SIGTERM during slow lease writes", faults: faultsSlowLeases, sigterms: 3, noDups: true},
		{name: "checkpoint reset of a held shard", reset: true},
		{name: "Kinesis unreachable for 30s", outage: 30 * time.Second},
	}
	kc := awstest.KinesisClient(t)
	dc := awstest.DynamoDBClient(t)
	var results []result
	for ri, rd := range rounds {
		t.Run(rd.name, func(t *testing.T) {
			in, out := awstest.CreateStream(t, kc, 4), awstest.CreateStream(t, kc, 2)
			table := awstest.CreateTable(t, dc)
			outageFile := filepath.Join(t.TempDir(), "outage")
			env := []string{
				awstest.KinesisEndpointEnv + "=" + awstest.KinesisEndpoint(t),
				awstest.DynamoDBEndpointEnv + "=" + awstest.DynamoDBEndpoint(t),
				"RELAY_IN=" + in, "RELAY_OUT=" + out, "RELAY_TABLE=" + table, "RELAY_OUTAGE_FILE=" + outageFile,
			}
			const batches, perBatch = 6, 250
			total := batches * perBatch
			n := 0
			relays := []*relayProc{startRelay(t, env, fmt.Sprintf("r%d-%d", ri, n), rd.faults), startRelay(t, env, fmt.Sprintf("r%d-%d", ri, n+1), rd.faults)}
			n += 2
			var gone []*relayProc // stopped relays, for their counts
			replace := func(victim int, sig os.Signal) {
				_ = relays[victim].cmd.Process.Signal(sig)
				select {
				case err := <-relays[victim].done:
					if err != nil && sig != os.Kill {
						t.Errorf("a relay exited with %v after %v", err, sig)
					}
				case <-time.After(2 * time.Minute):
					t.Fatalf("a relay did not stop within 2 minutes of %v", sig)
				}
				gone = append(gone, relays[victim])
				relays[victim] = startRelay(t, env, fmt.Sprintf("r%d-%d", ri, n), rd.faults)
				n++
			}
			kills, stops := 0, 0
			rng := rand.New(rand.NewPCG(uint64(ri), 1))
			resetShard, resetRecords := "", []string(nil)
			for b := range batches {
				produce(t, kc, in, b*perBatch, (b+1)*perBatch)
				if rd.reshard && b == 2 {
					reshard(t, kc, in)
				}
				if kills < rd.kills && b >= 1 {
					time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond) // a random moment
					replace(rng.IntN(len(relays)), os.Kill)
					kills++
				}
				if stops < rd.sigterms && b >= 1 {
					time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
					replace(rng.IntN(len(relays)), syscall.SIGTERM)
					stops++
				}
				if rd.reset && b == 3 {
					resetShard, resetRecords = resetHeldShard(t, kc, dc, table, in)
				}
				if rd.outage > 0 && b == 2 {
					if err := os.WriteFile(outageFile, nil, 0o600); err != nil {
						t.Fatal(err)
					}
					time.Sleep(rd.outage)
					if err := os.Remove(outageFile); err != nil {
						t.Fatal(err)
					}
					for _, r := range relays {
						select {
						case err := <-r.done:
							t.Fatalf("a relay exited during a %v Kinesis outage: %v", rd.outage, err)
						default:
						}
					}
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
			faults, losses, late := 0, 0, 0
			for _, r := range append(gone, relays...) {
				faults += r.injected()
				losses += r.losses()
				late += r.lateHandoffs()
			}
			got = readAll(t, kc, out)
			distinct, dups, violations, missing := check(total, got)
			results = append(results, result{name: rd.name, faults: faults, kills: kills, stops: stops, in: total, out: len(got),
				distinct: distinct, dups: dups, orderViolations: violations, leaseLosses: losses})
			if len(missing) > 0 {
				t.Errorf("%d records lost, e.g. %v", len(missing), missing[:min(5, len(missing))])
			}
			if violations > 0 {
				t.Errorf("%d records arrived before an earlier record of their key", violations)
			}
			if rd.faults != faultsNone && faults == 0 {
				t.Errorf("no fault was injected")
			}
			// The documented window: records in flight or finished since
			// the last checkpoint (1s) when a relay was killed or lost a
			// lease, and PutRecords requests served but reset. Bound it
			// generously by what a shard can hold in flight.
			if limit := (kills+1)*4*1000 + 500*faults/4; dups > limit {
				t.Errorf("%d duplicates; more than the window allows (%d)", dups, limit)
			}
			// Graceful stops repeat nothing, unless a hand-over ran out of
			// HandoffTimeout (a loaded machine can make it), which the
			// relay logs: its records since the last checkpoint are read
			// again, as documented.
			quiet := rd.kills == 0 && rd.faults == faultsNone && !rd.reset && rd.outage == 0
			if (quiet || rd.noDups) && dups > 0 && late == 0 {
				t.Errorf("%d duplicates with only graceful stops and no fault that repeats a write; want none", dups)
			}
			if late > 0 {
				t.Logf("%d hand-overs ran out of HandoffTimeout; %d duplicates", late, dups)
			}
			switch {
			case (rd.faults == faultsLostWrites || rd.faults == faultsSlowLeases) && losses > 0 && late == 0:
				// The table still named the relay each time: its own
				// applied write, answered late or never, must not cost
				// it the lease. (A hand-over that ran out of
				// HandoffTimeout on a loaded machine gives its lease up
				// without the final save, and may log the refused save.)
				t.Errorf("%d lease losses logged; want none when only answers were lost or late", losses)
			case rd.reset:
				// Read again from the trim horizon: every record the shard
				// held at the reset arrives a second time.
				times := map[string]int{}
				for _, d := range got {
					times[d]++
				}
				once := 0
				for _, d := range resetRecords {
					if times[d] < 2 {
						once++
					}
				}
				if once > 0 || len(resetRecords) == 0 {
					t.Errorf("after shard %s was reset, %d of the %d records it held were not read again", resetShard, once, len(resetRecords))
				}
			}
		})
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-36s %7s %6s %6s %6s %6s %9s %6s %6s %7s\n", "round", "faults", "kills", "stops", "in", "out", "distinct", "dups", "order", "losses")
	for _, r := range results {
		fmt.Fprintf(&sb, "%-36s %7d %6d %6d %6d %6d %9d %6d %6d %7d\n", r.name, r.faults, r.kills, r.stops, r.in, r.out, r.distinct, r.dups, r.orderViolations, r.leaseLosses)
	}
	t.Log(sb.String())
	fmt.Print(sb.String())
}

// resetHeldShard resets the checkpoint of a shard that a relay holds and
// has checkpointed, as an operator would with `shardflow checkpoints reset`,
// and returns its id and the records it held then.
func resetHeldShard(t *testing.T, kc *kinesis.Client, dc *dynamodb.Client, table, stream string) (string, []string) {
	t.Helper()
	ls, err := kc.ListShards(t.Context(), &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, sh := range ls.Shards {
		ids = append(ids, aws.ToString(sh.ShardId))
	}
	store, err := dynamostore.New(dc, table, func(o *dynamostore.Options) { o.Owner = "operator" })
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		states, err := store.Shards(t.Context(), stream, ids)
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range states {
			if st.Owner != "" && st.HasCheckpoint {
				before := readShard(t, kc, stream, st.ShardID)
				if err := store.ResetCheckpoint(t.Context(), stream, st.ShardID); err != nil {
					t.Fatal(err)
				}
				return st.ShardID, before
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no shard of %s held and checkpointed within a minute: %+v", stream, states)
		}
		time.Sleep(200 * time.Millisecond)
	}
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
