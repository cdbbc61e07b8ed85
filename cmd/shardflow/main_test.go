package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/google/go-cmp/cmp"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	"github.com/shardflow/shardflow/internal/awstest"
)

// endpointFlags are the flags that point commands at the emulators.
type endpointFlags struct {
	kinesis, dynamo, both []string
}

// emulatorEnv points the default AWS chain at fake credentials, as a user
// of the emulators would, and returns the endpoint flags.
func emulatorEnv(t *testing.T) endpointFlags {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", "fake")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "fake")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	k := []string{"--endpoint-url", awstest.KinesisEndpoint(t)}
	d := []string{"--dynamodb-endpoint-url", awstest.DynamoDBEndpoint(t)}
	return endpointFlags{kinesis: k, dynamo: d, both: append(slices.Clip(k), d...)}
}

func runCmd(ctx context.Context, t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(ctx, args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func lines(n int, prefix string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%03d", prefix, i)
	}
	return out
}

func TestPutThenTailReturnsEveryLine(t *testing.T) {
	endpoints := emulatorEnv(t)
	stream := awstest.CreateStream(t, awstest.KinesisClient(t), 2)
	want := lines(150, "line")
	code, _, stderr := runCmd(t.Context(), t, strings.Join(want, "\n")+"\n", append([]string{"put", "--stream", stream}, endpoints.kinesis...)...)
	if code != 0 {
		t.Fatalf("put exited %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "150 records written, 0 failed") {
		t.Errorf("put summary: %q", stderr)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute) // a bound on a hang, not a speed claim
	defer cancel()
	code, stdout, stderr := runCmd(ctx, t, "", append([]string{"tail", "--stream", stream, "--from", "trim-horizon", "--max", "150", "--format", "json"}, endpoints.kinesis...)...)
	if code != 0 {
		t.Fatalf("tail exited %d: %s", code, stderr)
	}
	var got []string
	for l := range strings.Lines(stdout) {
		var r tailRecord
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("tail printed %q: %v", l, err)
		}
		if r.Data == nil || r.ShardID == "" || r.SequenceNumber == "" || r.PartitionKey == "" {
			t.Errorf("incomplete record %+v", r)
			continue
		}
		got = append(got, *r.Data)
	}
	slices.Sort(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("tail mismatch (-want +got):\n%s", diff)
	}
}

func TestRelayCopiesAStreamWithDynamoDBCheckpoints(t *testing.T) {
	endpoints := emulatorEnv(t)
	kc := awstest.KinesisClient(t)
	in, out := awstest.CreateStream(t, kc, 2), awstest.CreateStream(t, kc, 1)
	table := awstest.CreateTable(t, awstest.DynamoDBClient(t))
	want := lines(80, "relayed")
	if code, _, stderr := runCmd(t.Context(), t, strings.Join(want, "\n"), append([]string{"put", "--stream", in, "--partition-key", "k"}, endpoints.kinesis...)...); code != 0 {
		t.Fatalf("put exited %d: %s", code, stderr)
	}
	ctx, cancel := context.WithCancel(t.Context())
	relayDone := make(chan string, 1)
	go func() {
		code, _, stderr := runCmd(ctx, t, "", append([]string{"relay", "--from", in, "--to", out, "--table", table}, endpoints.both...)...)
		relayDone <- fmt.Sprintf("exit %d: %s", code, stderr)
	}()
	tctx, tcancel := context.WithTimeout(t.Context(), 3*time.Minute) // a bound on a hang
	defer tcancel()
	code, stdout, stderr := runCmd(tctx, t, "", append([]string{"tail", "--stream", out, "--from", "trim-horizon", "--max", "80"}, endpoints.kinesis...)...)
	cancel()
	if code != 0 {
		t.Fatalf("tail exited %d: %s", code, stderr)
	}
	if r := <-relayDone; !strings.HasPrefix(r, "exit 0") {
		t.Fatalf("relay: %s", r)
	}
	got := strings.Split(strings.TrimSpace(stdout), "\n")
	if diff := cmp.Diff(want, got); diff != "" { // one key, ordered: the order is kept
		t.Errorf("relayed records mismatch (-want +got):\n%s", diff)
	}

	// The relay stopped: its leases are free and its checkpoints saved.
	code, stdout, stderr = runCmd(t.Context(), t, "", append([]string{"checkpoints", "--table", table, "--stream", in}, endpoints.both...)...)
	if code != 0 {
		t.Fatalf("checkpoints exited %d: %s", code, stderr)
	}
	rows := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(rows) != 3 || !strings.HasPrefix(rows[0], "SHARD") {
		t.Fatalf("checkpoints printed:\n%s", stdout)
	}
	withCheckpoint := 0
	for _, r := range rows[1:] {
		f := strings.Fields(r)
		if len(f) != 5 || f[1] != "-" || f[4] != "free" {
			t.Errorf("row %q: want a free lease", r)
		}
		if f[3] != "-" {
			withCheckpoint++
		}
	}
	if withCheckpoint != 1 { // one partition key: one shard got every record
		t.Errorf("%d shards with a checkpoint; want 1:\n%s", withCheckpoint, stdout)
	}
	shard := strings.Fields(rows[1])[0]
	if strings.Fields(rows[1])[3] == "-" {
		shard = strings.Fields(rows[2])[0]
	}
	if code, _, stderr := runCmd(t.Context(), t, "", append([]string{"checkpoints", "--table", table, "--stream", in, "--reset", shard}, endpoints.both...)...); code != 0 {
		t.Fatalf("checkpoints --reset exited %d: %s", code, stderr)
	}
	_, stdout, _ = runCmd(t.Context(), t, "", append([]string{"checkpoints", "--table", table, "--stream", in}, endpoints.both...)...)
	for _, r := range strings.Split(strings.TrimSpace(stdout), "\n")[1:] {
		if f := strings.Fields(r); f[0] == shard && f[3] != "-" {
			t.Errorf("after --reset, %s still has checkpoint %s", shard, f[3])
		}
	}
}

func TestCreateStreamAndTableForLocalUse(t *testing.T) {
	endpoints := emulatorEnv(t)
	kc, dc := awstest.KinesisClient(t), awstest.DynamoDBClient(t)
	stream, table := awstest.UniqueName(t, "cli-stream"), awstest.UniqueName(t, "cli-table")
	t.Cleanup(func() {
		_, _ = kc.DeleteStream(context.WithoutCancel(t.Context()), &kinesis.DeleteStreamInput{StreamName: aws.String(stream)})
		_, _ = dc.DeleteTable(context.WithoutCancel(t.Context()), &dynamodb.DeleteTableInput{TableName: aws.String(table)})
	})

	// The name comes before the flags, as users type it.
	if code, _, stderr := runCmd(t.Context(), t, "", append([]string{"create-stream", stream, "--shards", "3"}, endpoints.kinesis...)...); code != 0 {
		t.Fatalf("create-stream exited %d: %s", code, stderr)
	}
	sum, err := kc.DescribeStreamSummary(t.Context(), &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatal(err)
	}
	if d := sum.StreamDescriptionSummary; d.StreamStatus != "ACTIVE" || aws.ToInt32(d.OpenShardCount) != 3 {
		t.Errorf("stream is %s with %d open shards; want ACTIVE with 3", d.StreamStatus, aws.ToInt32(d.OpenShardCount))
	}
	code, _, stderr := runCmd(t.Context(), t, "", append([]string{"create-stream", stream}, endpoints.kinesis...)...)
	if code != 1 || !strings.Contains(stderr, "shardflow create-stream: create stream") {
		t.Errorf("creating it again exited %d: %s; want 1 with the error", code, stderr)
	}

	if code, _, stderr := runCmd(t.Context(), t, "", append([]string{"create-table", table}, endpoints.dynamo...)...); code != 0 {
		t.Fatalf("create-table exited %d: %s", code, stderr)
	}
	store, err := dynamostore.New(dc, table)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Check(t.Context()); err != nil {
		t.Errorf("the table is not a usable checkpoint table: %v", err)
	}
	// A relay can use both at once.
	if code, _, stderr := runCmd(t.Context(), t, "", append([]string{"checkpoints", "--table", table, "--stream", stream}, endpoints.both...)...); code != 0 {
		t.Errorf("checkpoints on the new stream and table exited %d: %s", code, stderr)
	}
}
