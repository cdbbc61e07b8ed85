package dynamostore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"slices"
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
	ktypes "github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	"github.com/shardflow/shardflow/internal/awstest"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// relayEnv makes the test binary act as one relay instance instead of
// running tests (the re-exec pattern): see TestMain and runRelay.
const relayEnv = "SHARDFLOW_TEST_RELAY"

func TestMain(m *testing.M) { awstest.ChildMain(m, relayEnv, runRelay) }

// runRelay is one instance of a relay pipeline: Kinesis source (leases and
// checkpoints in DynamoDB) -> Map (tags each record with this instance and
// its input shard) -> Kinesis sink. It logs JSON to stderr and stops
// gracefully on SIGTERM.
func runRelay() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	owner := os.Getenv("RELAY_OWNER")
	kOpts, dOpts, err := awstest.ChildOptions()
	if err != nil {
		return err
	}
	kc := kinesis.New(kOpts)
	dc := &countingDDB{API: dynamodb.New(dOpts)}
	store, err := dynamostore.New(dc, os.Getenv("RELAY_TABLE"), func(o *dynamostore.Options) {
		o.Owner = owner
		o.Logger = log
	})
	if err != nil {
		return err
	}
	src, err := kinesissource.New(kc, os.Getenv("RELAY_IN"), func(o *kinesissource.Options) {
		o.Store = store
		o.InitialPosition = kinesissource.TrimHorizon()
		o.IdleInterval = 200 * time.Millisecond
		o.Logger = log
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
	go func() {
		for range time.Tick(time.Second) {
			log.Info("dynamodb calls", "counts", dc.counts())
		}
	}()
	return shardflow.Source(src, func(o *shardflow.Options) { o.Logger = log }).
		Map(func(_ context.Context, r shardflow.Record) (kinesissink.Entry, error) {
			return kinesissink.Entry{Data: fmt.Appendf(nil, "%s|%s|%s", owner, r.ShardID, r.Data), PartitionKey: r.PartitionKey}, nil
		}).
		Sink(sink).
		Run(ctx)
}

// countingDDB counts the DynamoDB calls of a relay.
type countingDDB struct {
	dynamostore.API
	get, put, update, batchGet, describe atomic.Int64
}

func (c *countingDDB) counts() map[string]int64 {
	return map[string]int64{"GetItem": c.get.Load(), "PutItem": c.put.Load(), "UpdateItem": c.update.Load(),
		"BatchGetItem": c.batchGet.Load(), "DescribeTable": c.describe.Load()}
}

func (c *countingDDB) GetItem(ctx context.Context, in *dynamodb.GetItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error) {
	c.get.Add(1)
	return c.API.GetItem(ctx, in, optFns...)
}

func (c *countingDDB) PutItem(ctx context.Context, in *dynamodb.PutItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.PutItemOutput, error) {
	c.put.Add(1)
	return c.API.PutItem(ctx, in, optFns...)
}

func (c *countingDDB) UpdateItem(ctx context.Context, in *dynamodb.UpdateItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error) {
	c.update.Add(1)
	return c.API.UpdateItem(ctx, in, optFns...)
}

func (c *countingDDB) BatchGetItem(ctx context.Context, in *dynamodb.BatchGetItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.BatchGetItemOutput, error) {
	c.batchGet.Add(1)
	return c.API.BatchGetItem(ctx, in, optFns...)
}

func (c *countingDDB) DescribeTable(ctx context.Context, in *dynamodb.DescribeTableInput, optFns ...func(*dynamodb.Options)) (*dynamodb.DescribeTableOutput, error) {
	c.describe.Add(1)
	return c.API.DescribeTable(ctx, in, optFns...)
}

// relay is a running relay process as the test sees it.
type relay struct {
	name   string
	cmd    *exec.Cmd
	exited <-chan error
}

// fleet starts relay processes and follows their logs: which shards each
// reads, every reading interval, and their DynamoDB call counts.
type fleet struct {
	t    *testing.T
	env  []string
	mu   sync.Mutex
	all  []*relay
	now  map[string]map[string]time.Time // relay -> shard -> reading since
	ivs  []interval                      // finished reading intervals
	ddb  map[string]ddbSample            // relay -> last call counts
	errs []string                        // error lines logged by relays
}

type interval struct {
	relay, shard string
	from, to     time.Time
}

type ddbSample struct {
	at     time.Time
	counts map[string]int64
}

func (f *fleet) start(name string) *relay {
	f.t.Helper()
	f.mu.Lock()
	f.now[name] = map[string]time.Time{}
	f.mu.Unlock()
	c := awstest.StartChild(f.t, relayEnv, append(slices.Clone(f.env), "RELAY_OWNER="+name),
		func(line string) { f.follow(name, line) })
	r := &relay{name: name, cmd: c.Cmd, exited: c.Exited()}
	f.mu.Lock()
	f.all = append(f.all, r)
	f.mu.Unlock()
	return r
}

// follow parses a line of a relay's JSON log.
func (f *fleet) follow(name string, line string) {
	var ev struct {
		Time    time.Time        `json:"time"`
		Level   string           `json:"level"`
		Msg     string           `json:"msg"`
		ShardID string           `json:"shard_id"`
		Counts  map[string]int64 `json:"counts"`
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if json.Unmarshal([]byte(line), &ev) != nil {
		f.errs = append(f.errs, name+": "+line)
		return
	}
	switch {
	case ev.Msg == "reading shard":
		f.now[name][ev.ShardID] = ev.Time
	case strings.HasPrefix(ev.Msg, "stopped reading shard"):
		if from, ok := f.now[name][ev.ShardID]; ok {
			f.ivs = append(f.ivs, interval{name, ev.ShardID, from, ev.Time})
			delete(f.now[name], ev.ShardID)
		}
	case ev.Msg == "dynamodb calls":
		f.ddb[name] = ddbSample{ev.Time, ev.Counts}
	case ev.Level == "ERROR":
		f.errs = append(f.errs, name+": "+line)
	}
}

// kill sends SIGKILL and ends the relay's reading intervals now.
func (f *fleet) kill(r *relay) time.Time {
	at := time.Now()
	_ = r.cmd.Process.Kill()
	<-r.exited
	f.mu.Lock()
	for shard, from := range f.now[r.name] {
		f.ivs = append(f.ivs, interval{r.name, shard, from, at})
	}
	f.now[r.name] = map[string]time.Time{}
	f.mu.Unlock()
	return at
}

// stop sends SIGTERM and waits for a clean exit.
func (f *fleet) stop(rs ...*relay) {
	f.t.Helper()
	for _, r := range rs {
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, r := range rs {
		select {
		case err := <-r.exited:
			if err != nil {
				f.t.Errorf("relay %s exited with %v after SIGTERM", r.name, err)
			}
		case <-time.After(time.Minute):
			f.t.Fatalf("relay %s did not stop within a minute of SIGTERM", r.name)
		}
		f.mu.Lock()
		if len(f.now[r.name]) > 0 {
			f.t.Errorf("relay %s exited while still reading %v", r.name, slices.Collect(maps.Keys(f.now[r.name])))
		}
		f.mu.Unlock()
	}
}

// holdings returns how many shards each running relay reads, and by whom
// each shard is read.
func (f *fleet) holdings() (map[string]int, map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	counts, by := map[string]int{}, map[string]string{}
	for name, shards := range f.now {
		counts[name] = len(shards)
		for s := range shards {
			by[s] = name
		}
	}
	return counts, by
}

// waitFor polls cond every 100ms for up to limit, and returns when it first
// held.
func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %v", what, limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Now()
}

// outputReader reads the output stream from its start, continuously.
type outputReader struct {
	mu   sync.Mutex
	recs []string // data, in output order
}

func (o *outputReader) run(ctx context.Context, t *testing.T, kc *kinesis.Client, stream string) {
	shards, err := kc.ListShards(ctx, &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil || len(shards.Shards) != 1 {
		t.Errorf("list output shards: %v", err)
		return
	}
	it, err := kc.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: aws.String(stream),
		ShardId: shards.Shards[0].ShardId, ShardIteratorType: ktypes.ShardIteratorTypeTrimHorizon})
	if err != nil {
		t.Errorf("output iterator: %v", err)
		return
	}
	iter := it.ShardIterator
	for ctx.Err() == nil {
		out, err := kc.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: iter})
		if err != nil {
			if ctx.Err() == nil {
				t.Errorf("read output: %v", err)
			}
			return
		}
		o.mu.Lock()
		for _, r := range out.Records {
			o.recs = append(o.recs, string(r.Data))
		}
		o.mu.Unlock()
		iter = out.NextShardIterator
		time.Sleep(250 * time.Millisecond)
	}
}

func (o *outputReader) distinct() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	seen := map[string]bool{}
	for _, r := range o.recs {
		if parts := strings.SplitN(r, "|", 3); len(parts) == 3 {
			seen[parts[2]] = true
		}
	}
	return len(seen)
}

const (
	relayKeys    = 32 // producer partition keys
	relayBatches = 75 // one record per key per batch: 2,400 records
)

// TestRelayProcessesShareAStreamFailOverAndResume runs relay processes on
// one 8-shard stream while a producer writes: three start at once on a new
// table, one is killed with SIGKILL, the survivors take its shards, all are
// stopped and two new ones finish. The output must hold every input record
// at least once, in order per key, with duplicates only from shards the
// killed relay held.
func TestRelayProcessesShareAStreamFailOverAndResume(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: about a minute")
	}
	kc := awstest.KinesisClient(t)
	dc := awstest.DynamoDBClient(t)
	in, out := awstest.CreateStream(t, kc, 8), awstest.CreateStream(t, kc, 1)
	table := awstest.CreateTable(t, dc)
	f := &fleet{t: t, now: map[string]map[string]time.Time{}, ddb: map[string]ddbSample{}, env: []string{
		awstest.KinesisEndpointEnv + "=" + awstest.KinesisEndpoint(t),
		awstest.DynamoDBEndpointEnv + "=" + awstest.DynamoDBEndpoint(t),
		"RELAY_IN=" + in, "RELAY_OUT=" + out, "RELAY_TABLE=" + table,
	}}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	output := &outputReader{}
	var bg sync.WaitGroup
	defer bg.Wait()
	defer cancel()
	bg.Go(func() { output.run(ctx, t, kc, out) })

	// The producer: one record per key per batch, so that PutRecords keeps
	// each key's order; 75 batches over about 56 seconds, so that it still
	// writes when the relays are stopped and restarted.
	produced := make(chan struct{})
	bg.Go(func() {
		defer close(produced)
		for b := 1; b <= relayBatches && ctx.Err() == nil; b++ {
			entries := make([]ktypes.PutRecordsRequestEntry, relayKeys)
			for k := range relayKeys {
				entries[k] = ktypes.PutRecordsRequestEntry{PartitionKey: aws.String(fmt.Sprintf("k%02d", k)),
					Data: fmt.Appendf(nil, "k%02d:%d", k, b)}
			}
			res, err := kc.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String(in), Records: entries})
			if err != nil || aws.ToInt32(res.FailedRecordCount) != 0 {
				t.Errorf("produce batch %d: %v", b, err)
				return
			}
			time.Sleep(750 * time.Millisecond)
		}
	})

	start := time.Now()
	a, b, c := f.start("a"), f.start("b"), f.start("c")
	balanced := func() bool {
		counts, by := f.holdings()
		for _, r := range []*relay{a, b, c} {
			if counts[r.name] < 2 || counts[r.name] > 3 {
				return false
			}
		}
		return len(by) == 8
	}
	converged := waitFor(t, "three relays balanced", time.Minute, balanced)
	counts, _ := f.holdings()
	t.Logf("3 relays started at once on a new table: balanced %v after %v", counts, converged.Sub(start).Round(time.Millisecond))

	// Steady state: measure DynamoDB calls over a window.
	f.mu.Lock()
	before := maps.Clone(f.ddb)
	f.mu.Unlock()
	time.Sleep(20 * time.Second)
	f.mu.Lock()
	after := maps.Clone(f.ddb)
	f.mu.Unlock()
	var total float64
	perOp := map[string]float64{}
	for name, s1 := range after {
		s0 := before[name]
		mins := s1.at.Sub(s0.at).Minutes()
		for op, n := range s1.counts {
			rate := float64(n-s0.counts[op]) / mins
			perOp[op] += rate / 8
			total += rate / 8
		}
	}
	t.Logf("steady state, 3 relays on 8 shards: %.1f DynamoDB calls per shard per minute (%v)", total, roundMap(perOp))

	victim := a
	counts, by := f.holdings()
	for _, r := range []*relay{b, c} {
		if counts[r.name] > counts[victim.name] {
			victim = r
		}
	}
	var orphans []string
	for s, owner := range by {
		if owner == victim.name {
			orphans = append(orphans, s)
		}
	}
	killed := f.kill(victim)
	t.Logf("killed relay %s (kill -9) reading %v", victim.name, orphans)
	tookAll := waitFor(t, "survivors take the killed relay's shards", time.Minute, func() bool {
		_, by := f.holdings()
		for _, s := range orphans {
			if by[s] == "" || by[s] == victim.name {
				return false
			}
		}
		return true
	})
	var firstTaken time.Time
	f.mu.Lock()
	for _, shards := range f.now {
		for _, s := range orphans {
			if at, ok := shards[s]; ok && (firstTaken.IsZero() || at.Before(firstTaken)) {
				firstTaken = at
			}
		}
	}
	f.mu.Unlock()
	t.Logf("failover after kill -9: first shard resumed after %v, all %d after %v",
		firstTaken.Sub(killed).Round(time.Millisecond), len(orphans), tookAll.Sub(killed).Round(100*time.Millisecond))
	// The failover time is a figure to read in the log, not to assert: on a
	// loaded machine the relays' own timers run late. waitFor bounds a hang.
	survivors := []*relay{a, b, c}
	survivors = slices.DeleteFunc(survivors, func(r *relay) bool { return r == victim })
	rebalanced := waitFor(t, "two relays balanced", time.Minute, func() bool {
		counts, by := f.holdings()
		return len(by) == 8 && counts[survivors[0].name] == 4 && counts[survivors[1].name] == 4
	})
	t.Logf("two survivors balanced 4/4 %v after the kill", rebalanced.Sub(killed).Round(time.Millisecond))

	// Stop everything while the producer is still writing, then restart.
	f.stop(survivors...)
	select {
	case <-produced:
		t.Logf("the producer finished before the relays were stopped: the restart only rereads")
	default:
	}
	t.Logf("survivors stopped gracefully; %d distinct records out so far", output.distinct())
	d, e := f.start("d"), f.start("e")
	<-produced
	waitFor(t, "every record relayed after the restart", 2*time.Minute, func() bool {
		return output.distinct() == relayKeys*relayBatches
	})
	time.Sleep(2 * time.Second) // let stragglers (duplicates) arrive
	f.stop(d, e)
	cancel()
	bg.Wait()

	verifyRelayOutput(t, output.recs, victim.name, orphans)
	f.mu.Lock()
	defer f.mu.Unlock()
	checkNoShardReadTwice(t, f.ivs)
	for _, e := range f.errs {
		t.Errorf("relay logged: %s", e)
	}
}

func roundMap(m map[string]float64) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = strconv.FormatFloat(v, 'f', 1, 64)
	}
	return out
}

// verifyRelayOutput checks the output records: every input record at least
// once; per key, first occurrences in order with no gaps; duplicates only
// of records of shards the killed relay was reading.
func verifyRelayOutput(t *testing.T, recs []string, victim string, orphans []string) {
	t.Helper()
	next := map[string]int{}  // key -> next record number expected first
	count := map[string]int{} // key:n -> occurrences
	dupShards := map[string]int{}
	for _, r := range recs {
		parts := strings.SplitN(r, "|", 3)
		if len(parts) != 3 {
			t.Fatalf("bad output record %q", r)
		}
		shard, payload := parts[1], parts[2]
		key, nstr, _ := strings.Cut(payload, ":")
		n, _ := strconv.Atoi(nstr)
		count[payload]++
		if count[payload] > 1 {
			dupShards[shard]++
			continue
		}
		if next[key] == 0 {
			next[key] = 1
		}
		if n != next[key] {
			t.Errorf("key %s: record %d came out before %d (order broken)", key, n, next[key])
		}
		next[key] = n + 1
	}
	for k := range relayKeys {
		key := fmt.Sprintf("k%02d", k)
		if next[key] != relayBatches+1 {
			t.Errorf("key %s: records up to %d out; want all %d", key, next[key]-1, relayBatches)
		}
	}
	dups := 0
	for shard, n := range dupShards {
		dups += n
		if !slices.Contains(orphans, shard) {
			t.Errorf("%d duplicates from shard %s, which the killed relay %s was not reading", n, shard, victim)
		}
	}
	t.Logf("output: %d records, %d distinct, %d duplicates (from shards %v of the killed relay)",
		len(recs), len(count), dups, slices.Sorted(maps.Keys(dupShards)))
}

// checkNoShardReadTwice fails if two relays' reading intervals of one shard
// overlap.
func checkNoShardReadTwice(t *testing.T, ivs []interval) {
	t.Helper()
	by := map[string][]interval{}
	for _, iv := range ivs {
		by[iv.shard] = append(by[iv.shard], iv)
	}
	for shard, list := range by {
		slices.SortFunc(list, func(a, b interval) int { return a.from.Compare(b.from) })
		for i := 1; i < len(list); i++ {
			if list[i].from.Before(list[i-1].to) {
				t.Errorf("shard %s read by %s (%v to %v) and %s (from %v) at once", shard,
					list[i-1].relay, list[i-1].from.Format(time.StampMilli), list[i-1].to.Format(time.StampMilli),
					list[i].relay, list[i].from.Format(time.StampMilli))
			}
		}
	}
}
