// Command peers measures shardflow's aggregating producer
// (kinesissink.Producer with Options.Aggregate) next to a peer with the
// design of github.com/a8m/kinesis-producer, in one run, interleaved: the
// records per second each puts and has acknowledged, and the CPU time per
// record.
//
// It is a module of its own (bench/peers), so that what a peer needs never
// becomes a dependency of the library. The peer is a model of a8m's design
// written here (see shardBlind), because the Go module proxy does not serve
// github.com/a8m/kinesis-producer on this machine; where the model differs
// from a8m it does less work, so a ratio above 1 is not flattered.
//
// Two targets, each with streams of -shards shards:
//
//   - fake: an in-process HTTP endpoint on loopback that answers ListShards
//     and PutRecords at almost no cost, so the producers, not a server, are
//     measured; afterwards it decodes every entry it received and checks
//     that every record arrived, and counts the records stored in an
//     aggregate on a shard that does not hold their hash key (a KCL reader
//     drops such an aggregate whole; shardflow must have none);
//   - emulator: kinesis-local at -kinesis-endpoint (default
//     $SHARDFLOW_KINESIS_ENDPOINT), a fresh stream per run.
//
// Run it from the repository root, with the emulators started
// (scripts/emulators.sh start):
//
//	export GOTOOLCHAIN=go1.27.3
//	source .emulators/env
//	(cd bench/peers && go run . -records 200000 -reps 5)
//
// -target fake or -target emulator runs one target only. The endpoint must
// be an http URL on a loopback host; the program uses static fake
// credentials and no proxy. Neither endpoint enforces Kinesis' write
// limits, so the shardflow producer runs with Options.RateLimit -1 (no
// limit), as the peer has none.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"

	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
)

// phases: print the length of each run's put phase (-phases).
var phases bool

type config struct {
	endpoint string
	target   string
	records  int
	size     int
	shards   int
	reps     int
	profile  string
}

func main() {
	var c config
	flag.StringVar(&c.endpoint, "kinesis-endpoint", os.Getenv("SHARDFLOW_KINESIS_ENDPOINT"), "kinesis-local endpoint, a loopback http URL")
	flag.StringVar(&c.target, "target", "both", "fake, emulator or both")
	flag.IntVar(&c.records, "records", 200_000, "records per run")
	flag.IntVar(&c.size, "size", 100, "bytes of data per record")
	flag.IntVar(&c.shards, "shards", 4, "shards of each stream")
	flag.IntVar(&c.reps, "reps", 5, "runs of each producer per target, interleaved")
	flag.StringVar(&c.profile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.BoolVar(&phases, "phases", false, "print how long each run took to put its records, before the wait for their outcomes")
	flag.Parse()
	if c.profile != "" {
		f, err := os.Create(c.profile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	if c.records < 1 || c.size < 1 || c.shards < 1 || c.reps < 1 {
		log.Fatal("peers: -records, -size, -shards and -reps must be positive")
	}
	ctx := context.Background()
	fmt.Printf("%d records of %d bytes, %d shards, %d runs per producer, GOMAXPROCS %d, %s\n",
		c.records, c.size, c.shards, c.reps, runtime.GOMAXPROCS(0), runtime.Version())
	if c.target == "fake" || c.target == "both" {
		if err := runFake(ctx, c); err != nil {
			log.Printf("peers: fake endpoint: %v", err)
			return
		}
	}
	if c.target == "emulator" || c.target == "both" {
		if err := runEmulator(ctx, c); err != nil {
			log.Printf("peers: emulator: %v", err)
			return
		}
	}
}

// sample is one run of one producer.
type sample struct {
	recordsPerSec float64
	cpuPerRecord  time.Duration
}

// producer runs one producer over n records into stream and returns when
// every record has its outcome, with the number of records that failed.
type producer func(ctx context.Context, client *kinesis.Client, stream string, data []byte, keys []string) (failed int, err error)

func shardflowProducer(ctx context.Context, client *kinesis.Client, stream string, data []byte, keys []string) (int, error) {
	p, err := kinesissink.NewProducer(client, stream, func(o *kinesissink.Options) {
		o.Aggregate = true
		o.RateLimit = -1 // neither endpoint enforces Kinesis' limits, and the peer has none
		o.Logger = slog.New(slog.DiscardHandler)
	})
	if err != nil {
		return 0, err
	}
	failed := 0
	t0 := time.Now()
	for _, k := range keys {
		if err := p.PutEntry(ctx, kinesissink.Entry{Data: data, PartitionKey: k}, nil); err != nil {
			return 0, err
		}
	}
	if phases {
		fmt.Printf("    put phase %v\n", time.Since(t0))
	}
	if err := p.Close(ctx); err != nil {
		if be, ok := errors.AsType[*kinesissink.BatchError](err); ok {
			failed = be.Failed
		} else {
			return 0, err
		}
	}
	return failed, nil
}

func shardBlindProducer(_ context.Context, client *kinesis.Client, stream string, data []byte, keys []string) (int, error) {
	p := newShardBlind(client, stream)
	t0 := time.Now()
	for _, k := range keys {
		if err := p.Put(data, k); err != nil {
			return 0, err
		}
	}
	if phases {
		fmt.Printf("    put phase %v\n", time.Since(t0))
	}
	p.Stop()
	return int(p.failed.Load()), nil
}

// measure runs a producer once and returns its sample.
func measure(ctx context.Context, run producer, client *kinesis.Client, stream string, c config) (sample, error) {
	data := make([]byte, c.size)
	keys := make([]string, c.records)
	for i := range keys {
		keys[i] = "key-" + strconv.Itoa(i)
	}
	runtime.GC()
	cpu0, t0 := cpuTime(), time.Now()
	failed, err := run(ctx, client, stream, data, keys)
	took, cpu := time.Since(t0), cpuTime()-cpu0
	if err != nil {
		return sample{}, err
	}
	if failed > 0 {
		return sample{}, fmt.Errorf("%d records failed", failed)
	}
	return sample{recordsPerSec: float64(c.records) / took.Seconds(), cpuPerRecord: cpu / time.Duration(c.records)}, nil
}

var sides = []struct {
	name string
	run  producer
}{
	{"shardflow", shardflowProducer},
	{"a8m design", shardBlindProducer},
}

func newClient(endpoint string, conns int) *kinesis.Client {
	return kinesis.New(kinesis.Options{
		Region:                "us-east-1",
		Credentials:           credentials.NewStaticCredentialsProvider("fake", "fake", ""),
		BaseEndpoint:          aws.String(endpoint),
		Retryer:               aws.NopRetryer{},
		AccountIDEndpointMode: aws.AccountIDEndpointModeDisabled,
		HTTPClient: awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
			tr.Proxy = nil // HTTP(S)_PROXY must not route the traffic off the machine
			tr.MaxIdleConnsPerHost = conns
		}),
	})
}

func runFake(ctx context.Context, c config) error {
	ep, err := newEndpoint(c.shards)
	if err != nil {
		return err
	}
	defer ep.close()
	client := newClient(ep.url(), 32)
	samples := make([][]sample, len(sides))
	var misrouted []int
	for rep := range c.reps {
		for k := range sides {
			i := (k + rep) % len(sides) // interleaved: each goes first in turn
			stream := fmt.Sprintf("peers-%d-%d", rep, i)
			ep.reset(stream)
			s, err := measure(ctx, sides[i].run, client, stream, c)
			if err != nil {
				return fmt.Errorf("%s: %w", sides[i].name, err)
			}
			t, err := ep.check()
			if err != nil {
				return fmt.Errorf("%s: check what the endpoint received: %w", sides[i].name, err)
			}
			if t.records != c.records {
				return fmt.Errorf("%s: the endpoint received %d records, want %d", sides[i].name, t.records, c.records)
			}
			if i == 0 && t.misrouted > 0 {
				return fmt.Errorf("%s: %d records in aggregates on a shard not holding their hash key", sides[i].name, t.misrouted)
			}
			if i == 1 {
				misrouted = append(misrouted, t.misrouted)
			}
			samples[i] = append(samples[i], s)
			fmt.Printf("  fake %-10s run %d: %9.0f records/s  %5.2f µs CPU/record  (%d entries, %d aggregates, %d records in aggregates on another shard)\n",
				sides[i].name, rep+1, s.recordsPerSec, us(s.cpuPerRecord), t.entries, t.aggregates, t.misrouted)
		}
	}
	report("in-process endpoint (CPU includes the endpoint's, the same for both)", samples)
	fmt.Printf("  a8m design: %d of %d records per run in aggregates on a shard not holding their hash key (a KCL reader drops them)\n\n",
		median(toFloat(misrouted)), c.records)
	return nil
}

func runEmulator(ctx context.Context, c config) error {
	u, err := url.Parse(c.endpoint)
	if err != nil || u.Scheme != "http" || (u.Hostname() != "127.0.0.1" && u.Hostname() != "localhost" && u.Hostname() != "::1") {
		return fmt.Errorf("-kinesis-endpoint %q is not an http URL on a loopback host", c.endpoint)
	}
	client := newClient(c.endpoint, 32)
	samples := make([][]sample, len(sides))
	for rep := range c.reps {
		for k := range sides {
			i := (k + rep) % len(sides)
			stream := fmt.Sprintf("peers-%d-%d-%d", os.Getpid(), rep, i)
			if err := createStream(ctx, client, stream, c.shards); err != nil {
				return err
			}
			s, err := measure(ctx, sides[i].run, client, stream, c)
			deleteStream(ctx, client, stream)
			if err != nil {
				return fmt.Errorf("%s: %w", sides[i].name, err)
			}
			samples[i] = append(samples[i], s)
			fmt.Printf("  emulator %-10s run %d: %9.0f records/s  %5.2f µs CPU/record\n", sides[i].name, rep+1, s.recordsPerSec, us(s.cpuPerRecord))
		}
	}
	report("kinesis-local at "+c.endpoint+" (CPU is this process's: the producers and the SDK)", samples)
	return nil
}

func createStream(ctx context.Context, client *kinesis.Client, name string, shards int) error {
	if _, err := client.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(int32(shards)),
		StreamModeDetails: &types.StreamModeDetails{StreamMode: types.StreamModeProvisioned}}); err != nil {
		return fmt.Errorf("create stream %s: %w", name, err)
	}
	err := kinesis.NewStreamExistsWaiter(client).Wait(ctx, &kinesis.DescribeStreamInput{StreamName: aws.String(name)}, 30*time.Second,
		func(o *kinesis.StreamExistsWaiterOptions) {
			o.MinDelay, o.MaxDelay = 20*time.Millisecond, 250*time.Millisecond
		})
	if err != nil {
		return fmt.Errorf("wait for stream %s: %w", name, err)
	}
	return nil
}

func deleteStream(ctx context.Context, client *kinesis.Client, name string) {
	if _, err := client.DeleteStream(ctx, &kinesis.DeleteStreamInput{StreamName: aws.String(name)}); err != nil {
		fmt.Fprintf(os.Stderr, "peers: delete stream %s: %v\n", name, err)
	}
}

func report(title string, samples [][]sample) {
	fmt.Printf("\n%s: median (min–max) of %d runs\n", title, len(samples[0]))
	rates := make([][]float64, len(sides))
	cpus := make([][]float64, len(sides))
	for i, side := range sides {
		var cpu []float64
		for _, s := range samples[i] {
			rates[i] = append(rates[i], s.recordsPerSec)
			cpu = append(cpu, us(s.cpuPerRecord))
		}
		cpus[i] = cpu
		fmt.Printf("  %-10s %9.0f (%.0f–%.0f) records/s   %.2f (%.2f–%.2f) µs CPU/record\n", side.name,
			medianF(rates[i]), slices.Min(rates[i]), slices.Max(rates[i]), medianF(cpu), slices.Min(cpu), slices.Max(cpu))
	}
	// The ratio of each run to the peer's run of the same round, so that a
	// slow moment of the machine weighs on both.
	var ratios []float64
	for r := range rates[0] {
		ratios = append(ratios, rates[0][r]/rates[1][r])
	}
	fmt.Printf("  shardflow / a8m design: %.2f× (median of medians), per round %.2f (%.2f–%.2f)\n",
		medianF(rates[0])/medianF(rates[1]), medianF(ratios), slices.Min(ratios), slices.Max(ratios))
	// CPU per record likewise, round by round: below 1, shardflow spends
	// less CPU per record than the peer.
	var cpuRatios []float64
	for r := range cpus[0] {
		cpuRatios = append(cpuRatios, cpus[0][r]/cpus[1][r])
	}
	fmt.Printf("  CPU per record, shardflow / a8m design: per round %.2f (%.2f–%.2f)\n",
		medianF(cpuRatios), slices.Min(cpuRatios), slices.Max(cpuRatios))
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func medianF(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func toFloat(v []int) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

func median(v []float64) int { return int(medianF(v)) }

// cpuTime returns the user and system CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
