package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow/internal/awstest"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
)

// wireBench runs part 3 against kinesis-local.
type wireBench struct {
	endpoint string
	client   *kinesis.Client
	streams  int // streams created so far, for unique names
}

// newWireBench refuses an endpoint that is not a loopback URL, checks that
// something listens there, and builds a client that cannot reach anything
// else: static fake credentials, no AWS configuration, no proxy, no SDK
// retries (the library retries by itself; the raw loops re-send failed
// entries and stop on any other error).
func newWireBench(endpoint string) (*wireBench, error) {
	if err := awstest.CheckLoopback(endpoint); err != nil {
		return nil, fmt.Errorf("-kinesis-endpoint: %w", err)
	}
	u, _ := url.Parse(endpoint) // CheckLoopback parsed it
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(u.Hostname(), port), 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("kinesis-local at %s is not answering (start it with `scripts/emulators.sh start`): %w", endpoint, err)
	}
	conn.Close()
	client := kinesis.New(kinesis.Options{
		Region:                awstest.Region,
		Credentials:           credentials.NewStaticCredentialsProvider("fake", "fake", ""),
		BaseEndpoint:          aws.String(endpoint),
		Retryer:               aws.NopRetryer{},
		AccountIDEndpointMode: aws.AccountIDEndpointModeDisabled,
		HTTPClient: awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
			tr.Proxy = nil // HTTP(S)_PROXY must not route the traffic off the machine
		}),
	})
	return &wireBench{endpoint: endpoint, client: client}, nil
}

func (w *wireBench) run(ctx context.Context, t *table, c config) error {
	var created []string
	defer func() { w.deleteStreams(context.WithoutCancel(ctx), created) }()
	newStream := func() (string, error) {
		name, err := w.createStream(ctx)
		if err == nil {
			created = append(created, name)
		}
		return name, err
	}

	n := c.wireRecords
	var prodLib, prodRaw, relLib, relRaw []sample
	for rep := range c.wireReps {
		var names [4]string
		for i := range names {
			var err error
			if names[i], err = newStream(); err != nil {
				return err
			}
		}
		prodLibStream, prodRawStream, relLibStream, relRawStream := names[0], names[1], names[2], names[3]
		var want map[string]string // where the raw producer left each shard: the relays' input
		producers := []func() error{
			func() error {
				s, err := libProduce(ctx, w.client, prodLibStream, n)
				prodLib = append(prodLib, s)
				return err
			},
			func() error {
				s, last, err := rawProduce(ctx, w.client, prodRawStream, n)
				prodRaw, want = append(prodRaw, s), last
				return err
			},
		}
		relays := []func() error{
			func() error {
				r, err := libRelay(ctx, w.client, prodRawStream, relLibStream, n)
				if err == nil {
					err = checkRelay("shardflow relay over kinesis-local", r, want, n)
				}
				relLib = append(relLib, r.sample)
				return err
			},
			func() error {
				r, err := rawRelay(ctx, w.client, prodRawStream, relRawStream, n)
				if err == nil {
					err = checkRelay("raw relay over kinesis-local", r, want, n)
				}
				relRaw = append(relRaw, r.sample)
				return err
			},
		}
		if rep%2 == 1 {
			producers[0], producers[1] = producers[1], producers[0]
			relays[0], relays[1] = relays[1], relays[0]
		}
		for _, side := range append(producers, relays...) {
			if err := side(); err != nil {
				return err
			}
		}
		w.deleteStreams(ctx, names[:])
		created = created[:0]
	}
	t.add("producer", prodLib, prodRaw, recordsPerSec, cpuUsPerRecord)
	t.add("relay", relLib, relRaw, recordsPerSec, cpuUsPerRecord)
	t.note("the emulator (a Node.js process on the same cores) bounds these figures; the ratio is what they are for.")
	return nil
}

// libProduce puts n 100-byte records with a kinesissink.Producer and closes
// it: Close returns when every record is written.
func libProduce(ctx context.Context, client relayAPI, stream string, n int) (sample, error) {
	cc := newCountingClient(client, n)
	p, err := kinesissink.NewProducer(cc, stream, func(o *kinesissink.Options) { o.Logger = slog.New(slog.DiscardHandler) })
	if err != nil {
		return sample{}, err
	}
	data := make([]byte, 100)
	keys := make([]string, n)
	for i := range keys {
		keys[i] = strconv.Itoa(i)
	}
	var m meter
	m.begin(n)
	for _, key := range keys {
		if err := p.Put(ctx, data, key); err != nil {
			p.Close(context.WithoutCancel(ctx))
			return sample{}, fmt.Errorf("producer: put: %w", err)
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	err = p.Close(cctx)
	m.finish()
	if err != nil {
		return sample{}, fmt.Errorf("producer: close: %w", err)
	}
	if got := cc.written.Load(); got != int64(n) {
		return sample{}, fmt.Errorf("producer: wrote %d records; want %d", got, n)
	}
	return m.sample(), nil
}

// rawProduce is the producer's floor: n 100-byte records in 500-entry
// PutRecords calls, one after another. It returns the last sequence number
// written to each shard.
func rawProduce(ctx context.Context, client putter, stream string, n int) (sample, map[string]string, error) {
	data := make([]byte, 100)
	last := map[string]string{}
	written := 0
	record := func(r types.PutRecordsResultEntry) {
		written++
		shard, seq := aws.ToString(r.ShardId), aws.ToString(r.SequenceNumber)
		if prev, ok := last[shard]; !ok || seqLess(prev, seq) {
			last[shard] = seq
		}
	}
	var m meter
	m.begin(n)
	entries := make([]types.PutRecordsRequestEntry, 0, 500)
	for i := range n {
		entries = append(entries, types.PutRecordsRequestEntry{Data: data, PartitionKey: aws.String(strconv.Itoa(i))})
		if len(entries) == cap(entries) || i == n-1 {
			if err := putAll(ctx, client, stream, entries, record); err != nil {
				return sample{}, nil, fmt.Errorf("raw producer: %w", err)
			}
			entries = entries[:0]
		}
	}
	m.finish()
	if written != n {
		return sample{}, nil, fmt.Errorf("raw producer: wrote %d records; want %d", written, n)
	}
	return m.sample(), last, nil
}

// seqLess compares sequence numbers as the big decimals they are.
func seqLess(a, b string) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

// createStream creates a 4-shard stream with a name of its own and waits
// until it is active.
func (w *wireBench) createStream(ctx context.Context) (string, error) {
	w.streams++
	name := fmt.Sprintf("shardflow-bench-%d-%d-%d", os.Getpid(), time.Now().Unix(), w.streams)
	if _, err := w.client.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(4),
		StreamModeDetails: &types.StreamModeDetails{StreamMode: types.StreamModeProvisioned}}); err != nil {
		return "", fmt.Errorf("create stream %s: %w", name, err)
	}
	err := kinesis.NewStreamExistsWaiter(w.client).Wait(ctx, &kinesis.DescribeStreamInput{StreamName: aws.String(name)}, 30*time.Second,
		func(o *kinesis.StreamExistsWaiterOptions) {
			o.MinDelay, o.MaxDelay = 20*time.Millisecond, 250*time.Millisecond
		})
	if err != nil {
		return "", fmt.Errorf("wait for stream %s: %w", name, err)
	}
	return name, nil
}

// deleteStreams deletes the streams, so repeated runs do not fill the
// emulator's memory; a failure is reported on stderr and does not stop the
// run.
func (w *wireBench) deleteStreams(ctx context.Context, names []string) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, name := range names {
		_, err := w.client.DeleteStream(ctx, &kinesis.DeleteStreamInput{StreamName: aws.String(name), EnforceConsumerDeletion: aws.Bool(true)})
		var notFound *types.ResourceNotFoundException
		if err != nil && !errors.As(err, &notFound) {
			fmt.Fprintf(os.Stderr, "shardflow-bench: delete stream %s: %v\n", name, err)
		}
	}
}
