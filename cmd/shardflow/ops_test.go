package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
)

// get fetches url and returns the status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return res.StatusCode, string(body)
}

func TestOpsServerAnswersHealthReadinessAndMetrics(t *testing.T) {
	mp, reg, err := promMeterProvider()
	if err != nil {
		t.Fatal(err)
	}
	defer mp.Shutdown(context.Background())
	ctr, err := mp.Meter("test").Int64Counter("shardflow.test.things", metric.WithUnit("{thing}"))
	if err != nil {
		t.Fatal(err)
	}
	ctr.Add(t.Context(), 7)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	o, err := startOps("127.0.0.1:0", reg, log)
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + o.addr.String()
	if want := `msg="metrics listening" addr=` + o.addr.String(); !strings.Contains(logs.String(), want) {
		t.Errorf("the log lacks %q:\n%s", want, logs.String())
	}
	if strings.Contains(logs.String(), "WARN") {
		t.Errorf("a loopback address was warned about:\n%s", logs.String())
	}

	for _, tc := range []struct {
		name     string
		ready    func() []string // nil: not set
		path     string
		wantCode int
		wantBody string
	}{
		{"healthz answers while the process runs", nil, "/healthz", 200, "ok\n"},
		{"readyz is not ready before the readiness check is set", nil, "/readyz", 503, "starting\n"},
		{"readyz gives one line per reason", func() []string { return []string{"a is wrong", "b is\nwrong too"} }, "/readyz", 503, "a is wrong\nb is wrong too\n"},
		{"readyz is ok with no reason", func() []string { return nil }, "/readyz", 200, "ok\n"},
		{"an unknown path is not found", nil, "/nope", 404, "404 page not found\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.ready != nil {
				o.setReady(tc.ready)
			}
			code, body := get(t, base+tc.path)
			if code != tc.wantCode || body != tc.wantBody {
				t.Errorf("GET %s = %d %q; want %d %q", tc.path, code, body, tc.wantCode, tc.wantBody)
			}
		})
	}
	code, body := get(t, base+"/metrics")
	if code != 200 || !strings.Contains(body, "shardflow_test_things_total{") || !strings.Contains(body, "} 7\n") {
		t.Errorf("GET /metrics = %d:\n%s", code, body)
	}
	res, err := http.Post(base+"/metrics", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics = %d; want 405", res.StatusCode)
	}

	if err := o.shutdown(t.Context()); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if err := o.shutdown(t.Context()); err != nil {
		t.Errorf("a second shutdown: %v", err)
	}
	if res, err := http.Get(base + "/healthz"); err == nil {
		res.Body.Close()
		t.Errorf("GET /healthz after shutdown answered %d", res.StatusCode)
	}
}

func TestOpsServerRefusesAnAddressInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, reg, err := promMeterProvider()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := startOps(ln.Addr().String(), reg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "--metrics-addr") {
		t.Errorf("startOps on a busy address = %v; want an error naming --metrics-addr", err)
	}
}

func TestIsLoopback(t *testing.T) {
	for _, tc := range []struct {
		ip   string
		want bool
	}{
		{"127.0.0.1", true}, {"127.3.4.5", true}, {"::1", true},
		{"0.0.0.0", false}, {"::", false}, {"10.0.0.1", false}, {"192.168.1.2", false},
	} {
		if got := isLoopback(&net.TCPAddr{IP: net.ParseIP(tc.ip)}); got != tc.want {
			t.Errorf("isLoopback(%s) = %v; want %v", tc.ip, got, tc.want)
		}
	}
}

// blockingPuts is the fake with a PutRecords that blocks until its call
// is cancelled, once block is set: a sink that never acknowledges.
type blockingPuts struct {
	*kinesisfake.Fake
	block atomic.Bool
}

func (b *blockingPuts) PutRecords(ctx context.Context, in *kinesis.PutRecordsInput, optFns ...func(*kinesis.Options)) (*kinesis.PutRecordsOutput, error) {
	if b.block.Load() {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return b.Fake.PutRecords(ctx, in, optFns...)
}

// TestRelayReadinessFollowsThePipeline checks what /readyz would say of a
// relay before it runs, while it runs, while a shard is stalled (its
// output never acknowledged), and after it stopped.
func TestRelayReadinessFollowsThePipeline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &blockingPuts{Fake: kinesisfake.New()}
		for name, shards := range map[string]int32{"in": 1, "out": 1} {
			if _, err := f.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(shards)}); err != nil {
				t.Fatal(err)
			}
		}
		c, err := parseRelayFlags([]string{"--from", "in", "--to", "out", "--log-level", "error", "--shutdown-timeout", "5s"}, io.Discard, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		r, err := newRelay(f, nil, c, &relayStats{})
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"the pipeline is not running"}
		if diff := cmp.Diff(want, r.notReady()); diff != "" {
			t.Errorf("before the run (-want +got):\n%s", diff)
		}

		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- r.run(ctx, c) }()
		waitUntil := func(what string, cond func([]string) bool) []string {
			t.Helper()
			for deadline := time.Now().Add(time.Hour); ; { // virtual time
				reasons := r.notReady()
				if cond(reasons) {
					return reasons
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: not within an hour; reasons: %q", what, reasons)
				}
				time.Sleep(time.Second)
			}
		}
		waitUntil("ready once running", func(reasons []string) bool { return len(reasons) == 0 })

		f.block.Store(true)
		if _, err := f.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String("in"), PartitionKey: aws.String("k"), Data: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		reasons := waitUntil("a stall reported", func(reasons []string) bool { return len(reasons) > 0 })
		if len(reasons) != 1 || !strings.HasPrefix(reasons[0], `shard shardId-000000000000 of stream "in" is stalled at stage `) {
			t.Errorf("while the sink never acknowledges: %q; want the stalled shard", reasons)
		}

		cancel()
		<-done // an error: the record was never written
		if got := r.notReady(); !slices.Contains(got, "the pipeline is not running") {
			t.Errorf("after the run: %q; want the pipeline not running", got)
		}
	})
}
