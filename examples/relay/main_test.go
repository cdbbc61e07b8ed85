package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, string(body)
}

// TestServeOps wires a relay as run does, on the in-memory fake, and reads
// its endpoint before, while and after it runs.
func TestServeOps(t *testing.T) {
	const n = 200
	f := kinesisfake.New()
	for _, name := range []string{"in", "out"} {
		if _, err := f.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(2)}); err != nil {
			t.Fatal(err)
		}
	}
	src, err := kinesissource.New(f, "in", func(o *kinesissource.Options) {
		o.InitialPosition = kinesissource.TrimHorizon()
		o.IdleInterval = 50 * time.Millisecond
	})
	if err != nil {
		t.Fatal(err)
	}
	sink, err := kinesissink.New(f, "out")
	if err != nil {
		t.Fatal(err)
	}
	mp, reg, err := prometheusMeterProvider()
	if err != nil {
		t.Fatal(err)
	}
	defer mp.Shutdown(context.Background())
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	pipeline := shardflow.Source(src, func(o *shardflow.Options) {
		o.Logger = log
		o.MeterProvider = mp
	}).Map(kinesissink.FromRecord).Sink(sink)

	stop, err := serveOps("127.0.0.1:0", reg, pipeline, log)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`msg="metrics listening" addr=(\S+)`).FindStringSubmatch(logs.String())
	if m == nil {
		t.Fatalf("no address logged:\n%s", logs.String())
	}
	base := "http://" + m[1]
	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("GET /healthz = %d %q; want 200 ok", code, body)
	}
	code, body := get(t, base+"/readyz")
	if want := "the pipeline is not running\n"; code != 503 || body != want {
		t.Errorf("GET /readyz before the run = %d %q; want 503 %q", code, body, want)
	}

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- pipeline.Run(ctx) }()
	for i := range n {
		if _, err := f.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String("in"), PartitionKey: aws.String(fmt.Sprint(i)),
			Data: fmt.Appendf(nil, "r-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	// Wait (a bound on a hang, polling as Prometheus and Kubernetes do)
	// for every record in /metrics, and for /readyz.
	want := fmt.Sprintf("shardflow_sink_records_total{otel_scope_name=%q,otel_scope_schema_url=\"\",otel_scope_version=\"\",stream=\"out\"} %d\n",
		"github.com/shardflow/shardflow", n)
	deadline := time.Now().Add(time.Minute)
	for {
		_, metrics := get(t, base+"/metrics")
		readyCode, readyBody := get(t, base+"/readyz")
		if strings.Contains(metrics, want) && readyCode == 200 && readyBody == "ok\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a minute: /readyz %d %q; /metrics lacks %q:\n%s", readyCode, readyBody, want, metrics)
		}
		time.Sleep(50 * time.Millisecond)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if code, body := get(t, base+"/readyz"); code != 503 {
		t.Errorf("GET /readyz after the run = %d %q; want 503", code, body)
	}
	stop()
	if res, err := http.Get(base + "/healthz"); err == nil {
		res.Body.Close()
		t.Errorf("the endpoint still answers after stop")
	}
}
