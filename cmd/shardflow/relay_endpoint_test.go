package main

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/shardflow/shardflow/internal/awstest"
)

// metricsRelay is a relay child process with --metrics-addr 127.0.0.1:0
// on the emulators, from a stream of two shards to one of one, with a
// table.
type metricsRelay struct {
	*child
	in, out string
	base    string // http://127.0.0.1:port
}

func startMetricsRelay(t *testing.T, logLevel string) *metricsRelay {
	t.Helper()
	endpoints := emulatorEnv(t)
	kc := awstest.KinesisClient(t)
	r := &metricsRelay{in: awstest.CreateStream(t, kc, 2), out: awstest.CreateStream(t, kc, 1)}
	table := awstest.CreateTable(t, awstest.DynamoDBClient(t))
	r.child = startChild(t, append([]string{"relay", "--from", r.in, "--to", r.out, "--table", table,
		"--metrics-addr", "127.0.0.1:0", "--log-level", logLevel}, endpoints.both...)...)
	line := r.stderr.waitFor(t, `msg="metrics listening"`, "addr=")
	m := regexp.MustCompile(`addr=(127\.0\.0\.1:\d+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no loopback address in %q", line)
	}
	r.base = "http://" + m[1]
	return r
}

// put writes n records to the relay's input stream, with data and
// partition keys made by data(i) and key(i).
func (r *metricsRelay) put(t *testing.T, n int, data, key func(i int) string) {
	t.Helper()
	kc := awstest.KinesisClient(t)
	for start := 0; start < n; start += 500 {
		var entries []types.PutRecordsRequestEntry
		for i := start; i < min(n, start+500); i++ {
			entries = append(entries, types.PutRecordsRequestEntry{Data: []byte(data(i)), PartitionKey: aws.String(key(i))})
		}
		out, err := kc.PutRecords(t.Context(), &kinesis.PutRecordsInput{StreamName: aws.String(r.in), Records: entries})
		if err != nil || aws.ToInt32(out.FailedRecordCount) != 0 {
			t.Fatalf("put the input records: %v (%d failed)", err, aws.ToInt32(out.FailedRecordCount))
		}
	}
}

// scrape fetches /metrics and parses it.
func (r *metricsRelay) scrape(t *testing.T) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	code, body := get(t, r.base+"/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics = %d: %s", code, body)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	families, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return families, body
}

// waitMetrics scrapes until cond holds, at most hangBound.
func (r *metricsRelay) waitMetrics(t *testing.T, what string, cond func(map[string]*dto.MetricFamily) bool) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	deadline := time.Now().Add(hangBound)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		families, body := r.scrape(t)
		if cond(families) {
			return families, body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; /metrics:\n%s\nstderr:\n%s", what, hangBound, body, r.stderr)
		}
		select {
		case <-tick.C:
		case <-r.exited:
			t.Fatalf("the relay exited while waiting for %s; stderr:\n%s", what, r.stderr)
		}
	}
}

// sum adds up the values of a counter or gauge family over its series;
// -1 when the family is missing.
func sum(families map[string]*dto.MetricFamily, name string) float64 {
	f, ok := families[name]
	if !ok {
		return -1
	}
	var v float64
	for _, m := range f.GetMetric() {
		switch {
		case m.Counter != nil:
			v += m.GetCounter().GetValue()
		case m.Gauge != nil:
			v += m.GetGauge().GetValue()
		}
	}
	return v
}

// TestRelayServesMetricsHealthAndReadinessOnTheEmulators runs the relay as
// a process of its own with --metrics-addr, relays N records, and reads
// its endpoint as Prometheus and a Kubernetes probe would.
func TestRelayServesMetricsHealthAndReadinessOnTheEmulators(t *testing.T) {
	const n = 300
	r := startMetricsRelay(t, "info")
	if code, body := get(t, r.base+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("GET /healthz = %d %q; want 200 ok", code, body)
	}
	r.put(t, n, func(i int) string { return fmt.Sprintf("record-%d", i) }, func(i int) string { return fmt.Sprintf("key-%d", i%50) })
	families, body := r.waitMetrics(t, "every record written, a checkpoint saved and both shards held", func(f map[string]*dto.MetricFamily) bool {
		return sum(f, "shardflow_sink_records_total") >= n && sum(f, "shardflow_checkpoint_saves_total") > 0 &&
			sum(f, "shardflow_source_shards_held") == 2 && sum(f, "shardflow_lease_held") == 2
	})
	for name, want := range map[string]float64{
		"shardflow_source_records_total":           n,
		"shardflow_sink_records_total":             n,
		"shardflow_stage_records_in_total":         2 * n, // the map stage and the sink stage
		"shardflow_stage_records_out_total":        2 * n,
		"shardflow_source_shards_held":             2,
		"shardflow_lease_held":                     2,
		"shardflow_lease_taken_total":              2,
		"shardflow_sink_failed_entries_total":      -1, // never counted: no series
		"shardflow_source_getrecords_errors_total": -1,
	} {
		if got := sum(families, name); got != want {
			t.Errorf("%s = %v; want %v", name, got, want)
		}
	}
	if got := sum(families, "shardflow_lease_taken_total"); got < 2 {
		t.Errorf("shardflow_lease_taken_total = %v; want at least the 2 leases held", got)
	}
	for _, name := range []string{"shardflow_source_getrecords_calls_total", "shardflow_source_bytes_total", "shardflow_sink_bytes_total",
		"shardflow_shard_in_flight", "shardflow_shard_checkpoint_lag_seconds", "shardflow_source_behind_latest_milliseconds"} {
		if sum(families, name) < 0 {
			t.Errorf("no %s family", name)
		}
	}
	if h := families["shardflow_sink_putrecords_duration_seconds"]; h.GetType() != dto.MetricType_HISTOGRAM || h.GetMetric()[0].GetHistogram().GetSampleCount() == 0 {
		t.Errorf("shardflow_sink_putrecords_duration_seconds is not a histogram with samples: %v", h)
	}
	for _, m := range families["shardflow_source_records_total"].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["stream"] != r.in || !strings.HasPrefix(labels["shard"], "shardId-") {
			t.Errorf("shardflow_source_records_total series with labels %v; want stream %s and a shard", labels, r.in)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}

	deadline := time.Now().Add(hangBound)
	for code, body := get(t, r.base+"/readyz"); code != 200 || body != "ok\n"; code, body = get(t, r.base+"/readyz") {
		if time.Now().After(deadline) {
			t.Fatalf("GET /readyz = %d %q after %v; want 200 ok", code, body, hangBound)
		}
		time.Sleep(100 * time.Millisecond) // polling a probe, as Kubernetes does
	}

	r.signal(t, syscall.SIGTERM)
	if code := r.exitCode(t); code != 0 {
		t.Errorf("exit status %d; want 0; stderr:\n%s", code, r.stderr)
	}
	r.stderr.waitFor(t, fmt.Sprintf("relay %s -> %s: %d records read, %d written", r.in, r.out, n, n))
	if res, err := http.Get(r.base + "/healthz"); err == nil {
		res.Body.Close()
		t.Errorf("the endpoint still answers after the relay exited")
	}
}

// TestRelayNeverShowsRecordDataOrKeys relays records with recognisable
// data and partition keys at --log-level debug: neither appears in the
// relay's output, its logs or its metrics.
func TestRelayNeverShowsRecordDataOrKeys(t *testing.T) {
	const n, payload, key = 50, "SECRET-PAYLOAD-123", "SECRET-KEY-456"
	r := startMetricsRelay(t, "debug")
	r.put(t, n, func(i int) string { return fmt.Sprintf("%s-%d", payload, i) }, func(i int) string { return fmt.Sprintf("%s-%d", key, i%5) })
	_, body := r.waitMetrics(t, "every record written", func(f map[string]*dto.MetricFamily) bool {
		return sum(f, "shardflow_sink_records_total") >= n
	})
	r.signal(t, syscall.SIGTERM)
	if code := r.exitCode(t); code != 0 {
		t.Errorf("exit status %d; want 0; stderr:\n%s", code, r.stderr)
	}
	logs := r.stderr.String()
	if !strings.Contains(logs, "level=DEBUG") {
		t.Fatalf("no DEBUG line: the test would not see what debug logging shows:\n%s", logs)
	}
	for _, secret := range []string{"SECRET", payload, key} {
		for what, text := range map[string]string{"stderr": logs, "stdout": r.stdout.String(), "/metrics": body} {
			if strings.Contains(text, secret) {
				t.Errorf("%s shows %q:\n%s", what, secret, text)
			}
		}
	}
}
