package kinesissource_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/internal/awstest"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// group is what testInstancesShareSeveralStreams runs on: streams of a
// Kinesis API, and one leasing store per instance of one lease group.
type group struct {
	client  kinesissource.API
	put     putter
	streams []string       // their names
	shards  map[string]int // shards of each stream
	owners  []string       // of the instances, one per store
	stores  []shardflow.CheckpointStore
	// leases returns the owner of every lease of stream, by shard ("" for
	// a free lease).
	leases func(t *testing.T, stream string) map[string]string
	// opts are applied to every source, before the test's own.
	opts func(*kinesissource.Options)
	// bound is how long a wait may take before the test gives up: a
	// bound on a hang, not a speed claim.
	bound time.Duration
}

// member is one running instance of a group.
type member struct {
	cancel context.CancelFunc
	errc   chan error
	sink   *collector
}

func (g *group) start(t *testing.T, i int) *member {
	t.Helper()
	streams := make([]kinesissource.Stream, len(g.streams))
	for j, s := range g.streams {
		streams[j] = kinesissource.Stream{Name: s}
	}
	src := newStreamsSource(t, g.client, streams, g.opts, func(o *kinesissource.Options) {
		o.Store = g.stores[i]
		o.InitialPosition = kinesissource.TrimHorizon()
	})
	m := &member{errc: make(chan error, 1), sink: &collector{}}
	var ctx context.Context
	ctx, m.cancel = context.WithCancel(t.Context())
	go func() {
		m.errc <- shardflow.Source(src, func(o *shardflow.Options) { o.CheckpointInterval = 100 * time.Millisecond }).Sink(m.sink).Run(ctx)
	}()
	return m
}

// stop stops a member and checks that its Run returned nil.
func (m *member) stop(t *testing.T) {
	t.Helper()
	m.cancel()
	if err := <-m.errc; err != nil {
		t.Errorf("Run = %v", err)
	}
}

// waitFor polls cond until it holds, failing the test with what describe
// says once g.bound passed. A member whose Run ends meanwhile fails it
// too.
func (g *group) waitFor(t *testing.T, what string, members []*member, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(g.bound)
	for !cond() {
		for _, m := range members {
			select {
			case err := <-m.errc:
				t.Fatalf("waiting for %s: a Run ended with %v", what, err)
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v: %s", what, g.bound, describe())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// holdings returns, by stream, how many leases each owner holds, and
// whether every lease of every stream is held.
func (g *group) holdings(t *testing.T) (map[string]map[string]int, bool) {
	out := map[string]map[string]int{}
	all := true
	for _, s := range g.streams {
		leases := g.leases(t, s)
		out[s] = map[string]int{}
		for _, o := range leases {
			out[s][o]++
		}
		all = all && len(leases) == g.shards[s] && out[s][""] == 0
	}
	return out, all
}

func (g *group) describeHoldings(t *testing.T) func() string {
	return func() string {
		h, _ := g.holdings(t)
		var b strings.Builder
		for _, s := range g.streams {
			fmt.Fprintf(&b, "%s (%d shards): leases by owner %v; ", s, g.shards[s], h[s])
		}
		return b.String()
	}
}

// seen returns the records the members read, as "stream/data".
func seen(members ...*member) map[string]bool {
	out := map[string]bool{}
	for _, m := range members {
		for s, data := range m.sink.byStream() {
			for _, d := range data {
				out[s+"/"+d] = true
			}
		}
	}
	return out
}

// missing returns how many of records [0, n) of every stream are not in
// got, and the first few missing.
func (g *group) missing(got map[string]bool, n int) (int, []string) {
	var miss []string
	for _, s := range g.streams {
		for i := range n {
			if k := fmt.Sprintf("%s/key-%d:%d", s, i%10, i); !got[k] {
				miss = append(miss, k)
			}
		}
	}
	return len(miss), miss[:min(len(miss), 5)]
}

// testInstancesShareSeveralStreams runs two instances of one lease group
// reading the same streams: they divide every stream's shards between
// them (per stream, counts differ by at most one), read every record at
// least once, and when one stops the other takes over its shards and
// reads on with nothing lost.
func testInstancesShareSeveralStreams(t *testing.T, g *group) {
	const perBatch = 60
	for _, s := range g.streams {
		put(t, g.put, s, 0, perBatch, 10)
	}
	a, b := g.start(t, 0), g.start(t, 1)
	both := []*member{a, b}
	defer func() {
		for _, m := range both {
			m.cancel()
		}
	}()
	g.waitFor(t, "balanced leases", both, func() bool {
		h, all := g.holdings(t)
		if !all {
			return false
		}
		for _, s := range g.streams {
			na, nb := h[s][g.owners[0]], h[s][g.owners[1]]
			if na+nb != g.shards[s] || na-nb > 1 || nb-na > 1 {
				return false
			}
		}
		return true
	}, g.describeHoldings(t))
	t.Logf("balanced: %s", g.describeHoldings(t)())
	// Records written now are read by the instance holding their shard:
	// both read some.
	for _, s := range g.streams {
		put(t, g.put, s, perBatch, 2*perBatch, 10)
	}
	g.waitFor(t, "the first two batches read", both, func() bool {
		n, _ := g.missing(seen(a, b), 2*perBatch)
		return n == 0
	}, func() string {
		n, first := g.missing(seen(a, b), 2*perBatch)
		return fmt.Sprintf("%d records missing, such as %v", n, first)
	})
	if a.sink.len() == 0 || b.sink.len() == 0 {
		t.Errorf("instance a read %d records, b %d; want both to read some", a.sink.len(), b.sink.len())
	}

	// Instance a stops while records come; b takes its shards over and
	// reads what a left, and what comes next.
	for _, s := range g.streams {
		put(t, g.put, s, 2*perBatch, 3*perBatch, 10)
	}
	a.stop(t)
	for _, s := range g.streams {
		put(t, g.put, s, 3*perBatch, 4*perBatch, 10)
	}
	g.waitFor(t, "take-over of every lease", []*member{b}, func() bool {
		h, all := g.holdings(t)
		if !all {
			return false
		}
		for _, s := range g.streams {
			if h[s][g.owners[1]] != g.shards[s] {
				return false
			}
		}
		return true
	}, g.describeHoldings(t))
	g.waitFor(t, "every record read", []*member{b}, func() bool {
		n, _ := g.missing(seen(a, b), 4*perBatch)
		return n == 0
	}, func() string {
		n, first := g.missing(seen(a, b), 4*perBatch)
		return fmt.Sprintf("%d records missing, such as %v", n, first)
	})
	t.Logf("after the take-over: %s", g.describeHoldings(t)())
	b.stop(t)
	got := seen(a, b)
	if n, first := g.missing(got, 4*perBatch); n != 0 {
		t.Errorf("%d records lost, such as %v", n, first)
	}
	if want := len(g.streams) * 4 * perBatch; len(got) != want {
		t.Errorf("%d distinct records read; want %d", len(got), want)
	}
	// Every record carries one of the streams (seen keys by it).
	for _, m := range both {
		m.sink.mu.Lock()
		for _, r := range m.sink.recs {
			if !slices.Contains(g.streams, r.Stream) {
				t.Errorf("record %q of stream %q; want one of %v", r.Data, r.Stream, g.streams)
			}
		}
		m.sink.mu.Unlock()
	}
}

func TestInstancesShareSeveralStreams(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, _ := createStreams(t)
		store := memory.New()
		g := &group{client: f, put: f, owners: []string{"a", "b"}, shards: map[string]int{}, bound: time.Hour,
			opts: func(*kinesissource.Options) {},
			leases: func(_ *testing.T, stream string) map[string]string {
				return store.LeaseOwners(stream)
			}}
		for _, s := range testStreams {
			g.streams = append(g.streams, s.name)
			g.shards[s.name] = int(s.shards)
		}
		for _, o := range g.owners {
			in, err := store.Instance(o)
			if err != nil {
				t.Fatal(err)
			}
			g.stores = append(g.stores, in)
		}
		testInstancesShareSeveralStreams(t, g)
		if t.Failed() {
			return
		}
		// Both left with their leases released.
		for _, s := range g.streams {
			if owners := slices.Collect(maps.Values(store.LeaseOwners(s))); slices.ContainsFunc(owners, func(o string) bool { return o != "" }) {
				t.Errorf("stream %s: leases held after both stopped: %v", s, store.LeaseOwners(s))
			}
		}
	})
}

// Two instances, each a Source of three streams with its own DynamoDB
// store (one table, distinct owners), on the emulators.
func TestEmulatorInstancesShareSeveralStreams(t *testing.T) {
	kc := awstest.KinesisClient(t, awstest.KinesisNoRetries)
	dc := awstest.DynamoDBClient(t)
	table := awstest.CreateTable(t, dc)
	g := &group{client: kc, put: kc, owners: []string{"instance-a", "instance-b"}, shards: map[string]int{},
		bound: 3 * time.Minute,
		opts: func(o *kinesissource.Options) {
			o.IdleInterval = 50 * time.Millisecond
			o.DiscoveryInterval = time.Second
		}}
	for _, n := range []int{4, 3, 2} {
		s := awstest.CreateStream(t, kc, int32(n))
		g.streams = append(g.streams, s)
		g.shards[s] = n
	}
	var stores []*dynamostore.Store
	for _, o := range g.owners {
		s, err := dynamostore.New(dc, table, func(so *dynamostore.Options) {
			so.Owner = o
			so.LeaseDuration = 6 * time.Second
		})
		if err != nil {
			t.Fatal(err)
		}
		stores = append(stores, s)
		g.stores = append(g.stores, s)
	}
	g.leases = func(t *testing.T, stream string) map[string]string {
		ids := make([]string, g.shards[stream])
		for i := range ids {
			ids[i] = fmt.Sprintf("shardId-%012d", i)
		}
		states, err := stores[0].Shards(t.Context(), stream, ids)
		if err != nil {
			t.Fatalf("read the leases of stream %s: %v", stream, err)
		}
		out := map[string]string{}
		for _, s := range states {
			out[s.ShardID] = s.Owner
		}
		return out
	}
	testInstancesShareSeveralStreams(t, g)
}
