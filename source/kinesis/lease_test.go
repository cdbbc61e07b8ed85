package kinesissource_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// leaseBoard is a test double of a lease table: the test says which
// instance should own each shard; an instance gets a shard once its previous
// owner released it. Each instance sees it through its own leaseView. The
// board is of one stream: every instance holds all the shards of the
// conformance cases' side stream, which is not the board's.
type leaseBoard struct {
	mu    sync.Mutex
	store *memory.Store
	want  map[string]string // shard -> instance the test wants
	owner map[string]string // shard -> instance holding the lease ("" free)
}

type leaseView struct {
	b  *leaseBoard
	me string
}

func (v leaseView) SyncLeases(_ context.Context, stream string, eligible []string) ([]string, error) {
	if stream == sideStream {
		return eligible, nil
	}
	v.b.mu.Lock()
	defer v.b.mu.Unlock()
	var held []string
	for _, id := range eligible {
		if v.b.want[id] != v.me {
			continue // the test wants another instance to have it: hand over
		}
		if o := v.b.owner[id]; o == "" || o == v.me {
			v.b.owner[id] = v.me
			held = append(held, id)
		}
	}
	return held, nil
}

func (v leaseView) ReleaseLease(_ context.Context, stream string, id string) error {
	if stream == sideStream {
		return nil
	}
	v.b.mu.Lock()
	defer v.b.mu.Unlock()
	if v.b.owner[id] == v.me {
		v.b.owner[id] = ""
	}
	return nil
}

func (v leaseView) LeaseSyncInterval() time.Duration { return time.Second }
func (v leaseView) LeaseDuration() time.Duration     { return 10 * time.Second }

func (v leaseView) Load(ctx context.Context, stream, shard string) (shardflow.Checkpoint, bool, error) {
	return v.b.store.Load(ctx, stream, shard)
}

// Save is fenced: only the lease holder may save.
func (v leaseView) Save(ctx context.Context, stream, shard string, cp shardflow.Checkpoint) error {
	if stream == sideStream {
		return v.b.store.Save(ctx, stream, shard, cp)
	}
	v.b.mu.Lock()
	owner := v.b.owner[shard]
	v.b.mu.Unlock()
	if owner != v.me {
		return fmt.Errorf("shard %s is leased by %q: %w", shard, owner, shardflow.ErrLeaseLost)
	}
	return v.b.store.Save(ctx, stream, shard, cp)
}

var _ shardflow.Leaser = leaseView{}

func testHandingAShardToAnotherInstanceLosesAndRepeatsNothing(t *testing.T, m readMode) {
	synctest.Test(t, func(t *testing.T) {
		f := newStream(t, "in", 2)
		put(t, f, "in", 0, 400, 20)
		b := &leaseBoard{store: memory.New(), owner: map[string]string{},
			want: map[string]string{"shardId-000000000000": "a", "shardId-000000000001": "a"}}
		run := func(ctx context.Context, me string, sink *collector) <-chan error {
			src := m.newSource(t, f, "in", func(o *kinesissource.Options) {
				o.Store = leaseView{b, me}
				o.InitialPosition = kinesissource.TrimHorizon()
				o.Limit = 10
			})
			errc := make(chan error, 1)
			go func() {
				errc <- shardflow.Source(src, func(o *shardflow.Options) { o.CheckpointInterval = time.Hour }).
					Tap(func(context.Context, shardflow.Record) error {
						time.Sleep(10 * time.Millisecond) // records are in flight at the hand-over
						return nil
					}).Sink(sink).Run(ctx)
			}()
			return errc
		}
		ctx, cancel := context.WithCancel(t.Context())
		sa, sb := &collector{}, &collector{}
		ea, eb := run(ctx, "a", sa), run(ctx, "b", sb)
		time.Sleep(2 * time.Second)
		if sa.len() == 0 || sa.len() >= 400 {
			t.Fatalf("instance a read %d records before the hand-over; the test needs some but not all", sa.len())
		}
		b.mu.Lock()
		b.want["shardId-000000000001"] = "b"
		b.mu.Unlock()
		// Records written once b holds the shard are b's to read, however
		// far a had read (a subscription pushes a whole backlog at once).
		deadline := time.Now().Add(10 * time.Minute)
		for {
			b.mu.Lock()
			moved := b.owner["shardId-000000000001"] == "b"
			b.mu.Unlock()
			if moved || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		put(t, f, "in", 400, 600, 20)
		for sa.len()+sb.len() < 600 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(5 * time.Second)
		cancel()
		if err := <-ea; err != nil {
			t.Fatal(err)
		}
		if err := <-eb; err != nil {
			t.Fatal(err)
		}
		if sb.len() == 0 {
			t.Fatalf("instance b read nothing after the hand-over")
		}
		checkExactlyOnceInOrder(t, 600, append(sa.data(), sb.data()...))
		// Both leases were released at shutdown.
		b.mu.Lock()
		defer b.mu.Unlock()
		for id, o := range b.owner {
			if o != "" {
				t.Errorf("shard %s still leased by %q after shutdown", id, o)
			}
		}
		ids := slices.Sorted(func(yield func(string) bool) {
			for id := range b.store.Checkpoints("in") {
				if !yield(id) {
					return
				}
			}
		})
		if len(ids) != 2 {
			t.Errorf("checkpoints of %v; want both shards", ids)
		}
	})
}

// A hand-over whose records cannot drain in time (the sink is stuck, say
// Kinesis is unreachable) still releases the lease at the end of
// HandoffTimeout, without a final checkpoint: the next owner reads from the
// last checkpoint at once instead of waiting for the lease to expire.
func testAHandOverThatTimesOutStillReleasesTheLease(t *testing.T, m readMode) {
	synctest.Test(t, func(t *testing.T) {
		const shard = "shardId-000000000000"
		f := newStream(t, "in", 1)
		put(t, f, "in", 0, 50, 5)
		b := &leaseBoard{store: memory.New(), owner: map[string]string{}, want: map[string]string{shard: "a"}}
		unblock := make(chan struct{})
		run := func(ctx context.Context, me string, handler func(context.Context, shardflow.Record) error, sink *collector) <-chan error {
			src := m.newSource(t, f, "in", func(o *kinesissource.Options) {
				o.Store = leaseView{b, me}
				o.InitialPosition = kinesissource.TrimHorizon()
				o.HandoffTimeout = 5 * time.Second
			})
			errc := make(chan error, 1)
			go func() {
				errc <- shardflow.Source(src, func(o *shardflow.Options) { o.DrainTimeout = time.Second }).Tap(handler).Sink(sink).Run(ctx)
			}()
			return errc
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		sa, sb := &collector{}, &collector{}
		stuck := func(ctx context.Context, _ shardflow.Record) error {
			select {
			case <-unblock:
			case <-ctx.Done():
			}
			return nil
		}
		ea := run(ctx, "a", stuck, sa)
		time.Sleep(2 * time.Second) // a holds the shard, its first record stuck
		b.mu.Lock()
		if b.owner[shard] != "a" {
			t.Fatalf("shard owned by %q; want a", b.owner[shard])
		}
		b.want[shard] = "b"
		b.mu.Unlock()
		eb := run(ctx, "b", func(context.Context, shardflow.Record) error { return nil }, sb)
		deadline := time.Now().Add(10 * time.Minute)
		for sb.len() < 50 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if sb.len() < 50 {
			b.mu.Lock()
			t.Errorf("b read %d of 50 records in 10 minutes; the shard is owned by %q", sb.len(), b.owner[shard])
			b.mu.Unlock()
		}
		close(unblock)
		cancel()
		<-ea
		if err := <-eb; err != nil {
			t.Fatal(err)
		}
	})
}
