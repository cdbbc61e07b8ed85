package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	dbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	"github.com/shardflow/shardflow/internal/awstest"
)

// TestStatusShowsLeasesCheckpointsLagAndWritesNothing sets up a stream of
// two shards, one split since (a closed parent with two children), with a
// lease and a checkpoint on the other, and checks what status prints, as
// JSON and as a table (the lease's expiry included), and that it called no
// API that writes.
func TestStatusShowsLeasesCheckpointsLagAndWritesNothing(t *testing.T) {
	emulatorEnv(t)
	kc, dc := awstest.KinesisClient(t), awstest.DynamoDBClient(t)
	stream := awstest.CreateStream(t, kc, 2)
	table := awstest.CreateTable(t, dc)
	ctx := t.Context()
	const shard0, shard1, child2, child3 = "shardId-000000000000", "shardId-000000000001", "shardId-000000000002", "shardId-000000000003"

	// Three records in shard 0 (the lowest hash keys), two in shard 1.
	listed, err := kc.ListShards(ctx, &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatal(err)
	}
	put := func(shard types.Shard, i int) string {
		out, err := kc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: aws.String(stream), Data: fmt.Appendf(nil, "r-%d", i),
			PartitionKey: aws.String("k"), ExplicitHashKey: shard.HashKeyRange.StartingHashKey})
		if err != nil {
			t.Fatal(err)
		}
		if got := aws.ToString(out.ShardId); got != aws.ToString(shard.ShardId) {
			t.Fatalf("record went to %s; want %s", got, aws.ToString(shard.ShardId))
		}
		return aws.ToString(out.SequenceNumber)
	}
	var seq0 []string
	for i := range 3 {
		seq0 = append(seq0, put(listed.Shards[0], i))
	}
	put(listed.Shards[1], 3)
	put(listed.Shards[1], 4)

	// Split shard 1: it closes, with children 2 and 3.
	r := listed.Shards[1].HashKeyRange
	lo, _ := new(big.Int).SetString(aws.ToString(r.StartingHashKey), 10)
	hi, _ := new(big.Int).SetString(aws.ToString(r.EndingHashKey), 10)
	mid := new(big.Int).Rsh(new(big.Int).Add(lo, hi), 1)
	if _, err := kc.SplitShard(ctx, &kinesis.SplitShardInput{StreamName: aws.String(stream), ShardToSplit: aws.String(shard1),
		NewStartingHashKey: aws.String(mid.String())}); err != nil {
		t.Fatal(err)
	}
	if err := kinesis.NewStreamExistsWaiter(kc).Wait(ctx, &kinesis.DescribeStreamInput{StreamName: aws.String(stream)}, hangBound,
		func(o *kinesis.StreamExistsWaiterOptions) { o.MinDelay, o.MaxDelay = 50*time.Millisecond, time.Second }); err != nil {
		t.Fatal(err)
	}

	// A relay instance holds shard 0 and checkpointed its first record.
	store, err := dynamostore.New(dc, table, func(o *dynamostore.Options) { o.Owner = "relay-a" })
	if err != nil {
		t.Fatal(err)
	}
	taking := time.Now()
	if held, err := store.SyncLeases(ctx, stream, []string{shard0}); err != nil || !slices.Equal(held, []string{shard0}) {
		t.Fatalf("SyncLeases = %v, %v", held, err)
	}
	taken := time.Now()
	if err := store.Save(ctx, stream, shard0, shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: seq0[0]}}); err != nil {
		t.Fatal(err)
	}
	tableBefore, streamBefore := scanTable(t, dc, table), readStream(t, kc, stream)

	kinesisProxy, dynamoProxy := newRecordingProxy(t, awstest.KinesisEndpoint(t)), newRecordingProxy(t, awstest.DynamoDBEndpoint(t))
	flags := []string{"--stream", stream, "--table", table, "--endpoint-url", kinesisProxy.url, "--dynamodb-endpoint-url", dynamoProxy.url}
	code, stdout, stderr := runCmd(ctx, t, "", append([]string{"status", "--json"}, flags...)...)
	if code != 0 {
		t.Fatalf("status --json exited %d: %s", code, stderr)
	}
	var got statusReport
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("status --json printed %q: %v", stdout, err)
	}
	for _, s := range got.Shards {
		if s.Lag != nil && (s.Lag.MillisBehindLatest == nil || s.Lag.Error != "") {
			t.Errorf("%s: no lag figure: %+v", s.ShardID, *s.Lag)
		}
	}
	ms := func(l *statusLag) *statusLag { // the figure varies: keep its presence
		if l != nil && l.MillisBehindLatest != nil {
			l.MillisBehindLatest = aws.Int64(0)
		}
		return l
	}
	zero := aws.Int64(0)
	var counter int64       // SyncLeases wrote it: any positive value
	var renewedAt time.Time // and its time, checked below
	if len(got.Shards) > 0 && got.Shards[0].Lease != nil {
		counter = got.Shards[0].Lease.Counter
		if r := got.Shards[0].Lease.RenewedAt; r != nil {
			renewedAt = *r
		}
	}
	// The default --lease-duration is the library's, 8s.
	expiresAt := renewedAt.Add(8 * time.Second)
	want := statusReport{
		Stream: stream, Table: table,
		Shards: []statusShard{
			{ShardID: shard0, State: "open", Lease: &statusLease{Owner: "relay-a", Counter: counter, RenewedAt: &renewedAt, ExpiresAt: &expiresAt},
				Checkpoint: &statusCheckpoint{SequenceNumber: seq0[0]},
				Lag:        &statusLag{MillisBehindLatest: zero, Iterator: types.ShardIteratorTypeAfterSequenceNumber}},
			{ShardID: shard1, State: "closed", ChildShardIDs: []string{child2, child3},
				Lag: &statusLag{MillisBehindLatest: zero, Iterator: types.ShardIteratorTypeTrimHorizon}, UnfinishedParent: true},
			{ShardID: child2, State: "open", ParentShardID: shard1,
				Lag: &statusLag{MillisBehindLatest: zero, Iterator: types.ShardIteratorTypeTrimHorizon}},
			{ShardID: child3, State: "open", ParentShardID: shard1,
				Lag: &statusLag{MillisBehindLatest: zero, Iterator: types.ShardIteratorTypeTrimHorizon}},
		},
		UnfinishedParents: []string{shard1},
	}
	for i := range got.Shards {
		ms(got.Shards[i].Lag)
	}
	// relay-a's heartbeat entry, written by its SyncLeases before it took
	// shard 0: as of that heartbeat it held nothing.
	var beatAt time.Time
	if len(got.Instances) == 1 {
		beatAt = got.Instances[0].RenewedAt
	}
	if beatAt.Before(taking.Truncate(time.Millisecond)) || beatAt.After(taken) {
		t.Errorf("relay-a's heartbeat at %v; want within its SyncLeases, [%v, %v]", beatAt, taking, taken)
	}
	want.Instances = []statusInstance{{Owner: "relay-a", RenewedAt: beatAt}}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(statusReport{}, "At")); diff != "" {
		t.Errorf("status --json mismatch (-want +got):\n%s", diff)
	}
	if counter < 1 {
		t.Errorf("shard 0's lease counter is %d; want the counter SyncLeases wrote", counter)
	}
	if renewedAt.Before(taking.Truncate(time.Millisecond)) || renewedAt.After(taken) {
		t.Errorf("shard 0's renewed_at = %v; want the time of the take, in [%v, %v]", renewedAt, taking, taken)
	}
	if time.Since(got.At) > hangBound || got.At.After(time.Now()) {
		t.Errorf("at = %v; want the time of the run", got.At)
	}

	// A longer --lease-duration moves the expiry. The table's EXPIRES is
	// "in 1h" while the run is less than half an hour after the take.
	code, stdout, stderr = runCmd(ctx, t, "", append([]string{"status", "--json", "--lease-duration", "90m"}, flags...)...)
	if code != 0 {
		t.Fatalf("status --json --lease-duration 90m exited %d: %s", code, stderr)
	}
	var longer statusReport
	if err := json.Unmarshal([]byte(stdout), &longer); err != nil {
		t.Fatalf("status --json --lease-duration 90m printed %q: %v", stdout, err)
	}
	if l := longer.Shards[0].Lease; l == nil || l.ExpiresAt == nil || !l.ExpiresAt.Equal(renewedAt.Add(90*time.Minute)) {
		t.Errorf("with --lease-duration 90m, shard 0's lease is %+v; want expires_at %v", l, renewedAt.Add(90*time.Minute))
	}
	code, stdout, stderr = runCmd(ctx, t, "", append([]string{"status", "--lease-duration", "90m"}, flags...)...)
	if code != 0 {
		t.Fatalf("status exited %d: %s", code, stderr)
	}
	rows := map[string][]string{}
	_, tableText, _ := strings.Cut(stdout, "SHARD ")
	tableText, _, _ = strings.Cut(tableText, "\n\n") // the notes follow a blank line
	for l := range strings.Lines(tableText) {
		if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], "shardId-") {
			rows[f[0]] = f
		}
	}
	wantRows := map[string][]string{
		shard0: {shard0, "open", "relay-a", fmt.Sprint(counter), "in", "1h", "…" + seq0[0][len(seq0[0])-seqDigits:], "LAG"},
		shard1: {shard1, "closed*", "-", "-", "-", "-", "LAG"},
		child2: {child2, "open", "-", "-", "-", "-", "LAG"},
		child3: {child3, "open", "-", "-", "-", "-", "LAG"},
	}
	for id, f := range rows {
		if n := len(f); n > 0 && strings.HasSuffix(f[n-1], "s") {
			f[n-1] = "LAG" // a duration, like 0s or 1.5s
		}
		rows[id] = f
	}
	if diff := cmp.Diff(wantRows, rows); diff != "" {
		t.Errorf("status table rows mismatch (-want +got):\n%s\n%s", diff, stdout)
	}
	if !strings.Contains(stdout, "\n* "+shard1+" is closed and not read to its end: its children "+child2+", "+child3+" wait for it") {
		t.Errorf("status does not name the unfinished parent:\n%s", stdout)
	}

	// Read-only: only reading calls, and nothing changed.
	readOnly := []string{"ListShards", "GetShardIterator", "GetRecords", "DescribeTable", "GetItem", "BatchGetItem"}
	for _, op := range append(kinesisProxy.ops(), dynamoProxy.ops()...) {
		if !slices.Contains(readOnly, op) {
			t.Errorf("status called %s", op)
		}
	}
	if !slices.Contains(kinesisProxy.ops(), "GetRecords") || !slices.Contains(dynamoProxy.ops(), "BatchGetItem") && !slices.Contains(dynamoProxy.ops(), "GetItem") {
		t.Errorf("the proxies saw %v and %v: status did not go through them", kinesisProxy.ops(), dynamoProxy.ops())
	}
	if diff := cmp.Diff(tableBefore, scanTable(t, dc, table)); diff != "" {
		t.Errorf("status changed the table (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(streamBefore, readStream(t, kc, stream)); diff != "" {
		t.Errorf("status changed the stream (-before +after):\n%s", diff)
	}
}

// recordingProxy forwards requests to an AWS endpoint and records the
// operation of each (from its X-Amz-Target header).
type recordingProxy struct {
	url  string
	mu   sync.Mutex
	seen []string
}

func newRecordingProxy(t *testing.T, target string) *recordingProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &recordingProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{Proxy: nil}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, op, _ := strings.Cut(r.Header.Get("X-Amz-Target"), ".")
		p.mu.Lock()
		p.seen = append(p.seen, op)
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.url = srv.URL
	return p
}

func (p *recordingProxy) ops() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.seen)
}

// scanTable returns every item of the table, as text, sorted.
func scanTable(t *testing.T, dc *dynamodb.Client, table string) []string {
	t.Helper()
	var items []string
	p := dynamodb.NewScanPaginator(dc, &dynamodb.ScanInput{TableName: aws.String(table), ConsistentRead: aws.Bool(true)})
	for p.HasMorePages() {
		out, err := p.NextPage(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range out.Items {
			var attrs []string
			for _, k := range slices.Sorted(maps.Keys(it)) {
				var v any
				switch a := it[k].(type) {
				case *dbtypes.AttributeValueMemberS:
					v = a.Value
				case *dbtypes.AttributeValueMemberN:
					v = a.Value
				case *dbtypes.AttributeValueMemberBOOL:
					v = a.Value
				default:
					v = fmt.Sprintf("%T", a)
				}
				attrs = append(attrs, fmt.Sprintf("%s=%v", k, v))
			}
			items = append(items, strings.Join(attrs, " "))
		}
	}
	slices.Sort(items)
	return items
}

// readStream returns every record of every shard of the stream, by shard.
func readStream(t *testing.T, kc *kinesis.Client, stream string) map[string][]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), hangBound)
	defer cancel()
	out, err := kc.ListShards(ctx, &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, sh := range out.Shards {
		it, err := kc.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: aws.String(stream), ShardId: sh.ShardId,
			ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
		if err != nil {
			t.Fatal(err)
		}
		recs := []string{}
		for iter := it.ShardIterator; iter != nil; {
			res, err := kc.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: iter})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res.Records {
				recs = append(recs, aws.ToString(r.SequenceNumber)+" "+string(r.Data))
			}
			if len(res.Records) == 0 && aws.ToInt64(res.MillisBehindLatest) == 0 {
				break
			}
			iter = res.NextShardIterator
		}
		got[aws.ToString(sh.ShardId)] = recs
	}
	return got
}

// TestStatusTablePrintsEachCase prints a report with every case the table
// shows: a free lease, leases expiring and expired, one whose renewal time
// is unknown, a hand-over, a partial checkpoint, SHARD_END, a lag that could
// not be read, and an unfinished parent.
func TestStatusTablePrintsEachCase(t *testing.T) {
	lag := func(ms int64) *statusLag { return &statusLag{MillisBehindLatest: aws.Int64(ms)} }
	at := time.Date(2026, 12, 1, 9, 14, 3, 0, time.UTC)
	expires := func(d time.Duration) *time.Time { e := at.Add(d); return &e }
	rep := &statusReport{Stream: "orders", Table: "relay-state", At: at,
		Shards: []statusShard{
			{ShardID: "shardId-0", State: "closed", Lease: &statusLease{Counter: 12}, Checkpoint: &statusCheckpoint{ShardEnd: true}},
			{ShardID: "shardId-1", State: "closed", Lease: &statusLease{Owner: "web-2", Counter: 7, ExpiresAt: expires(-3*time.Minute - 12*time.Second)},
				Checkpoint: &statusCheckpoint{SequenceNumber: "49680721690560636694664281732086203610698382124866113554", SubSequenceNumber: 3, Partial: true},
				Lag:        lag(192000), UnfinishedParent: true, ChildShardIDs: []string{"shardId-3", "shardId-4"}},
			{ShardID: "shardId-2", State: "open", Lease: &statusLease{Owner: "web-1", Counter: 1288, WantedBy: "web-3", ExpiresAt: expires(7250 * time.Millisecond)},
				Checkpoint: &statusCheckpoint{SequenceNumber: "12345"}, Lag: lag(310)},
			{ShardID: "shardId-3", State: "open", ParentShardID: "shardId-1",
				Lag: &statusLag{Iterator: "TRIM_HORIZON", Error: "get records: throttled"}},
			{ShardID: "shardId-4", State: "open", ParentShardID: "shardId-1", Lease: &statusLease{Owner: "web-3", Counter: 2}, Lag: lag(1240)},
		}, UnfinishedParents: []string{"shardId-1"},
		Instances: []statusInstance{
			{Owner: "web-1", RenewedAt: at.Add(-1200 * time.Millisecond), Held: 1, BytesPerSecond: 52000},
			{Owner: "web-2", RenewedAt: at.Add(-3*time.Minute - 20*time.Second), Held: 1, Dead: true},
			{Owner: "web-3", RenewedAt: at.Add(-2 * time.Second), Held: 1, BytesPerSecond: 800},
		}}
	var b strings.Builder
	if err := printStatus(&b, rep); err != nil {
		t.Fatal(err)
	}
	want := `stream orders, table relay-state: 5 shards (3 open) at 2026-12-01T09:14:03Z

SHARD      STATE    OWNER  COUNTER  EXPIRES         CHECKPOINT                 LAG
shardId-0  closed   -      12       -               SHARD_END                  -
shardId-1  closed*  web-2  7        expired 3m ago  …124866113554/3 (partial)  3m12s
shardId-2  open     web-1  1288     in 7s           12345                      310ms
shardId-3  open     -      -        -               -                          ?
shardId-4  open     web-3  2        ?               -                          1.24s

shardId-2: web-3 asked for the lease (a hand-over is under way)
shardId-3: lag not read: get records: throttled
* shardId-1 is closed and not read to its end: its children shardId-3, shardId-4 wait for it

INSTANCE  HEARTBEAT      HELD  BYTES/S
web-1     1s ago         1     52000
web-2     3m ago (dead)  1     0
web-3     2s ago         1     800
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("status table mismatch (-want +got):\n%s", diff)
	}
}

// TestStatusExpiresCellRoundsToOneUnit checks the EXPIRES cell around each
// unit's bounds.
func TestStatusExpiresCellRoundsToOneUnit(t *testing.T) {
	at := time.Date(2026, 12, 1, 9, 14, 3, 0, time.UTC)
	owned := func(d time.Duration) *statusLease { e := at.Add(d); return &statusLease{Owner: "web-1", ExpiresAt: &e} }
	for _, tc := range []struct {
		name  string
		lease *statusLease
		want  string
	}{
		{"no item", nil, "-"},
		{"a free lease", &statusLease{Counter: 3}, "-"},
		{"an owned lease with no renewal time", &statusLease{Owner: "web-1", Counter: 3}, "?"},
		{"expiring now", owned(0), "in 0s"},
		{"expiring in under half a second", owned(400 * time.Millisecond), "in 0s"},
		{"expiring in 9.6s", owned(9600 * time.Millisecond), "in 10s"},
		{"expiring in 59.6s, which rounds to a minute", owned(59600 * time.Millisecond), "in 1m"},
		{"expired 1.5s ago", owned(-1500 * time.Millisecond), "expired 2s ago"},
		{"expired 3m59s ago", owned(-3*time.Minute - 59*time.Second), "expired 3m ago"},
		{"expired 90m ago", owned(-90 * time.Minute), "expired 1h ago"},
		{"expired 23h59m ago", owned(-23*time.Hour - 59*time.Minute), "expired 23h ago"},
		{"expired 50h ago", owned(-50 * time.Hour), "expired 2d ago"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := expiresCell(tc.lease, at); got != tc.want {
				t.Errorf("expiresCell = %q; want %q", got, tc.want)
			}
		})
	}
}

// TestStatusTableFitsIn100Columns prints a report with real shard ids, an
// owner id of the default form (host, process id, random bits; a longer
// host name widens the table), a lease counter of a month of renewals, an
// unfinished parent, a lease expired long ago, a checkpoint within a KPL
// aggregate and a lag of minutes, and checks that no line of the table is
// wider than 100 columns. (A partial checkpoint adds 10.)
func TestStatusTableFitsIn100Columns(t *testing.T) {
	at := time.Date(2026, 12, 1, 9, 14, 3, 0, time.UTC)
	expired := at.Add(-59 * time.Minute)
	rep := &statusReport{Stream: "orders", Table: "relay-state", At: at,
		Shards: []statusShard{
			{ShardID: "shardId-000000000001", State: "closed", UnfinishedParent: true, ChildShardIDs: []string{"shardId-000000000002"},
				Lease:      &statusLease{Owner: "web-3-4711-9f2c01ab", Counter: 777777, ExpiresAt: &expired},
				Checkpoint: &statusCheckpoint{SequenceNumber: "49680721690560636694664281732086203610698382124866113554", SubSequenceNumber: 3},
				Lag:        &statusLag{MillisBehindLatest: aws.Int64(192000)}},
			{ShardID: "shardId-000000000002", State: "open", ParentShardID: "shardId-000000000001"},
		}, UnfinishedParents: []string{"shardId-000000000001"}}
	var b strings.Builder
	if err := printStatus(&b, rep); err != nil {
		t.Fatal(err)
	}
	_, table, _ := strings.Cut(b.String(), "\n\n")
	table, _, _ = strings.Cut(table, "\n\n")
	for l := range strings.Lines(table) {
		if n := utf8.RuneCountInString(strings.TrimSuffix(l, "\n")); n > 100 {
			t.Errorf("a line of %d columns; want at most 100:\n%s", n, b.String())
		}
	}
}
