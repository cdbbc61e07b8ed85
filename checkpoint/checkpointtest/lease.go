package checkpointtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint"
)

// LeaseStore is a checkpoint store that also leases shards to instances.
type LeaseStore interface {
	shardflow.CheckpointStore
	shardflow.Leaser
}

// Resetter is implemented by lease stores whose operators can reset a
// shard's checkpoint: delete it and free the lease, so that the shard is
// read again from the source's initial position. The conformance suite
// checks that a reset fences the holder.
type Resetter interface {
	ResetCheckpoint(ctx context.Context, stream, shardID string) error
}

// NewInstance returns a new instance named owner of the store the subtest
// shares between its instances. Instances must use LeaseDuration and a
// HandoffTimeout of a few lease durations, and no meter provider of their
// own: the suite checks the lease metrics (shardflow.lease.*) of an
// instance by handing it a provider through
// [shardflow.PipelineMeterProvider], as a source hands it the pipeline's.
type NewInstance func(t *testing.T, owner string) LeaseStore

// LeaseDuration is the lease duration stores must give the instances of
// RunLeases and RunLeasesSynctest: short, so that expiry is tested in
// seconds of real time by stores that cannot run in a synctest bubble.
const LeaseDuration = 1500 * time.Millisecond

// RunLeases runs the lease conformance suite in real time, a few lease
// durations per subtest, for stores that talk to a server over the network
// (a synctest bubble cannot wait for the network). Its bounds on how soon
// leases move are generous (ten lease durations and more), so a busy
// machine does not fail it. newStore returns, for each subtest, a
// NewInstance making instances of one fresh store (or one table the
// subtest's unique stream names keep apart).
func RunLeases(t *testing.T, newStore func(t *testing.T) NewInstance) {
	t.Helper()
	for _, tc := range slices.Concat(leaseCases, metricCases) {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, newStore(t), streamName(t))
		})
	}
}

// RunLeasesSynctest runs the lease conformance suite with each subtest in a
// testing/synctest bubble, for stores that keep their leases in process:
// the lease durations the suite waits for pass on the bubble's fake clock,
// at once and the same on any machine. newStore is called inside the
// bubble; the store must start no goroutine that outlives the subtest.
func RunLeasesSynctest(t *testing.T, newStore func(t *testing.T) NewInstance) {
	t.Helper()
	for _, tc := range slices.Concat(leaseCases, metricCases) {
		t.Run(tc.name, func(t *testing.T) {
			stream := streamName(t)
			synctest.Test(t, func(t *testing.T) {
				tc.run(t, newStore(t), stream)
			})
		})
	}
}

// Leasing adapts a leasing store to [Run]: before a shard's first Save it
// syncs the shard's lease (with every shard it has seen of the stream
// eligible), as a source does before it reads a shard. Give it a store
// instance that no other instance competes with.
func Leasing(s LeaseStore) shardflow.CheckpointStore {
	return &leasing{s: s, shards: map[string][]string{}, held: map[[2]string]bool{}}
}

type leasing struct {
	s      LeaseStore
	mu     sync.Mutex
	shards map[string][]string
	held   map[[2]string]bool
}

func (l *leasing) Load(ctx context.Context, stream, shardID string) (shardflow.Checkpoint, bool, error) {
	return l.s.Load(ctx, stream, shardID)
}

func (l *leasing) Save(ctx context.Context, stream, shardID string, cp shardflow.Checkpoint) error {
	if err := l.acquire(ctx, stream, shardID); err != nil {
		return err
	}
	return l.s.Save(ctx, stream, shardID, cp)
}

func (l *leasing) acquire(ctx context.Context, stream, shardID string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held[[2]string{stream, shardID}] {
		return nil
	}
	if !slices.Contains(l.shards[stream], shardID) {
		l.shards[stream] = append(l.shards[stream], shardID)
	}
	held, err := l.s.SyncLeases(ctx, stream, l.shards[stream])
	if err != nil {
		return err
	}
	for _, id := range held {
		l.held[[2]string{stream, id}] = true
	}
	if !l.held[[2]string{stream, shardID}] {
		return fmt.Errorf("checkpointtest: the only instance was not granted the lease of shard %s (holds %v)", shardID, held)
	}
	return nil
}

func seq(n int) shardflow.Checkpoint {
	return shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: strconv.Itoa(n)}}
}

// node drives one instance as a source would: sync, hand over what is no
// longer held (final checkpoint, release), checkpoint what is held.
type node struct {
	s       LeaseStore
	reading map[string]int
	lost    int
}

func (n *node) step(t *testing.T, stream string, shards []string) {
	t.Helper()
	held, err := n.s.SyncLeases(t.Context(), stream, shards)
	if err != nil {
		t.Fatalf("SyncLeases: %v", err)
	}
	for id := range n.reading {
		if slices.Contains(held, id) {
			continue
		}
		err := n.s.Save(t.Context(), stream, id, seq(n.reading[id]))
		if err == nil {
			err = n.s.ReleaseLease(t.Context(), stream, id)
		}
		if errors.Is(err, shardflow.ErrLeaseLost) {
			n.lost++
		} else if err != nil {
			t.Fatalf("hand over %s: %v", id, err)
		}
		delete(n.reading, id)
	}
	for _, id := range held {
		if _, ok := n.reading[id]; !ok {
			cp, _, err := n.s.Load(t.Context(), stream, id)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			pos, _ := strconv.Atoi(cp.SequenceNumber)
			n.reading[id] = pos
		}
	}
	for id := range n.reading {
		n.reading[id]++
		if err := n.s.Save(t.Context(), stream, id, seq(n.reading[id])); err != nil {
			if errors.Is(err, shardflow.ErrLeaseLost) {
				n.lost++
				delete(n.reading, id)
				continue
			}
			t.Fatalf("Save: %v", err)
		}
	}
}

func overlap(a, b *node) []string {
	var out []string
	for id := range a.reading {
		if _, ok := b.reading[id]; ok {
			out = append(out, id)
		}
	}
	return out
}

func shardIDs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("shardId-%012d", i)
	}
	return out
}

func sleep(t *testing.T, d time.Duration) {
	select {
	case <-t.Context().Done():
	case <-time.After(d):
	}
}

var leaseCases = []struct {
	name string
	run  func(t *testing.T, newInstance NewInstance, stream string)
}{
	{"one instance takes every eligible shard and keeps them across syncs", func(t *testing.T, newInstance NewInstance, stream string) {
		a := newInstance(t, "a")
		shards := shardIDs(3)
		for range 4 {
			held, err := a.SyncLeases(t.Context(), stream, shards)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(shards, held); diff != "" {
				t.Fatalf("held shards mismatch (-want +got):\n%s", diff)
			}
			sleep(t, a.LeaseSyncInterval())
		}
	}},
	{"only the lease holder's checkpoints are saved; others get ErrLeaseLost", func(t *testing.T, newInstance NewInstance, stream string) {
		a, b := newInstance(t, "a"), newInstance(t, "b")
		shards := shardIDs(1)
		if held, err := a.SyncLeases(t.Context(), stream, shards); err != nil || len(held) != 1 {
			t.Fatalf("a.SyncLeases = %v, %v", held, err)
		}
		if err := a.Save(t.Context(), stream, shards[0], seq(5)); err != nil {
			t.Fatal(err)
		}
		if err := b.Save(t.Context(), stream, shards[0], seq(9)); !errors.Is(err, shardflow.ErrLeaseLost) {
			t.Errorf("Save by a non-holder = %v; want an error wrapping ErrLeaseLost", err)
		}
		got, ok, err := b.Load(t.Context(), stream, shards[0])
		if err != nil || !ok || got != seq(5) {
			t.Errorf("Load by another instance = %+v, %v, %v; want the holder's checkpoint 5", got, ok, err)
		}
	}},
	{"a released lease goes to another instance once the releaser left, checkpoint included", func(t *testing.T, newInstance NewInstance, stream string) {
		a, b := newInstance(t, "a"), newInstance(t, "b")
		shards := shardIDs(1)
		a.SyncLeases(t.Context(), stream, shards)
		if held, _ := b.SyncLeases(t.Context(), stream, shards); len(held) != 0 {
			t.Fatalf("b got %v while a holds it", held)
		}
		if err := a.Save(t.Context(), stream, shards[0], seq(7)); err != nil {
			t.Fatal(err)
		}
		if err := a.ReleaseLease(t.Context(), stream, shards[0]); err != nil {
			t.Fatal(err)
		}
		if err := a.ReleaseLease(t.Context(), stream, shards[0]); err != nil {
			t.Errorf("second ReleaseLease: %v; releasing a lease not held is not an error", err)
		}
		// a stops, as a source does at shutdown: it leaves the group if it
		// can, so that b need not wait for its heartbeat to expire.
		if l, ok := a.(shardflow.LeaseLeaver); ok {
			if err := l.Leave(t.Context()); err != nil {
				t.Fatalf("Leave: %v", err)
			}
		}
		start := time.Now()
		for {
			held, err := b.SyncLeases(t.Context(), stream, shards)
			if err != nil {
				t.Fatal(err)
			}
			if len(held) == 1 {
				break
			}
			if time.Since(start) > 10*LeaseDuration {
				t.Fatalf("b.SyncLeases %v after the release = %v; want the shard", time.Since(start), held)
			}
			sleep(t, b.LeaseSyncInterval())
		}
		if got, _, _ := b.Load(t.Context(), stream, shards[0]); got != seq(7) {
			t.Errorf("checkpoint after the handoff = %+v; want 7", got)
		}
		if err := a.Save(t.Context(), stream, shards[0], seq(8)); !errors.Is(err, shardflow.ErrLeaseLost) {
			t.Errorf("Save after release = %v; want ErrLeaseLost", err)
		}
	}},
	{"releasing a lease never held is not an error", func(t *testing.T, newInstance NewInstance, stream string) {
		if err := newInstance(t, "a").ReleaseLease(t.Context(), stream, "shardId-000000000009"); err != nil {
			t.Errorf("ReleaseLease = %v", err)
		}
	}},
	{"two instances balance four shards two and two, handing over without losing a checkpoint", func(t *testing.T, newInstance NewInstance, stream string) {
		a := &node{s: newInstance(t, "a"), reading: map[string]int{}}
		b := &node{s: newInstance(t, "b"), reading: map[string]int{}}
		shards := shardIDs(4)
		a.step(t, stream, shards)
		if len(a.reading) != 4 {
			t.Fatalf("a alone holds %d shards; want 4", len(a.reading))
		}
		deadline := time.Now().Add(20 * LeaseDuration)
		for len(a.reading) != 2 || len(b.reading) != 2 {
			if time.Now().After(deadline) {
				t.Fatalf("not balanced: a %v, b %v", a.reading, b.reading)
			}
			b.step(t, stream, shards)
			if o := overlap(a, b); len(o) > 0 {
				t.Fatalf("both instances hold %v", o)
			}
			a.step(t, stream, shards)
			if o := overlap(a, b); len(o) > 0 {
				t.Fatalf("both instances hold %v", o)
			}
			sleep(t, a.s.LeaseSyncInterval())
		}
		if a.lost+b.lost != 0 {
			t.Errorf("%d checkpoints refused during a graceful rebalance; want none", a.lost+b.lost)
		}
	}},
	{"an instance that stops syncing loses its leases after about the lease duration", func(t *testing.T, newInstance NewInstance, stream string) {
		a, b := newInstance(t, "a"), newInstance(t, "b")
		shards := shardIDs(2)
		if held, _ := a.SyncLeases(t.Context(), stream, shards); len(held) != 2 {
			t.Fatalf("a holds %v; want both", held)
		}
		if err := a.Save(t.Context(), stream, shards[0], seq(3)); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for {
			held, err := b.SyncLeases(t.Context(), stream, shards)
			if err != nil {
				t.Fatal(err)
			}
			if len(held) == 2 {
				break
			}
			if time.Since(start) > 10*LeaseDuration {
				t.Fatalf("b holds %v after %v", held, time.Since(start))
			}
			sleep(t, b.LeaseSyncInterval())
		}
		// An instance holds its leases for the lease duration less one
		// renew interval (two sync intervals) after its last heartbeat or
		// renewal, and others wait at least that long after they last saw
		// one.
		if took, least := time.Since(start), LeaseDuration-2*b.LeaseSyncInterval(); took < least {
			t.Errorf("b took the leases after %v, before the lease duration less a renew interval %v", took, least)
		}
		if err := a.Save(t.Context(), stream, shards[0], seq(4)); !errors.Is(err, shardflow.ErrLeaseLost) {
			t.Errorf("stale owner's Save = %v; want ErrLeaseLost", err)
		}
		if got, _, _ := b.Load(t.Context(), stream, shards[0]); got != seq(3) {
			t.Errorf("checkpoint = %+v after a fenced Save; want 3", got)
		}
		if held, err := a.SyncLeases(t.Context(), stream, shards); err != nil || len(held) != 0 {
			t.Errorf("stale owner's next SyncLeases = %v, %v; want nothing", held, err)
		}
	}},
	{"two instances starting at once on a fresh stream never hold one shard together", func(t *testing.T, newInstance NewInstance, stream string) {
		a, b := newInstance(t, "a"), newInstance(t, "b")
		shards := shardIDs(8)
		var ha, hb []string
		var ea, eb error
		var wg sync.WaitGroup
		wg.Go(func() { ha, ea = a.SyncLeases(t.Context(), stream, shards) })
		wg.Go(func() { hb, eb = b.SyncLeases(t.Context(), stream, shards) })
		wg.Wait()
		if ea != nil || eb != nil {
			t.Fatalf("SyncLeases: %v, %v", ea, eb)
		}
		for _, id := range ha {
			if slices.Contains(hb, id) {
				t.Errorf("shard %s held by both (a %v, b %v)", id, ha, hb)
			}
		}
		if len(ha)+len(hb) != len(shards) {
			t.Errorf("a holds %v and b %v; want every shard held by one of them", ha, hb)
		}
	}},
	{"a reset checkpoint fences its holder, which gets the shard back from no checkpoint only after a sync without it", func(t *testing.T, newInstance NewInstance, stream string) {
		a := newInstance(t, "a")
		r, ok := a.(Resetter)
		if !ok {
			t.Fatalf("%T has no ResetCheckpoint", a)
		}
		shards := shardIDs(1)
		if held, err := a.SyncLeases(t.Context(), stream, shards); err != nil || len(held) != 1 {
			t.Fatalf("SyncLeases = %v, %v", held, err)
		}
		if err := a.Save(t.Context(), stream, shards[0], seq(5)); err != nil {
			t.Fatal(err)
		}
		if err := r.ResetCheckpoint(t.Context(), stream, shards[0]); err != nil {
			t.Fatal(err)
		}
		if err := a.Save(t.Context(), stream, shards[0], seq(6)); !errors.Is(err, shardflow.ErrLeaseLost) {
			t.Errorf("holder's Save after the reset = %v; want ErrLeaseLost", err)
		}
		// The holder's reader still has its old position: the store must
		// not hand the shard back before the source stopped that reader.
		if held, err := a.SyncLeases(t.Context(), stream, shards); err != nil || len(held) != 0 {
			t.Errorf("SyncLeases after the reset = %v, %v; want the shard not returned, so that its reader stops", held, err)
		}
		if held, err := a.SyncLeases(t.Context(), stream, shards); err != nil || len(held) != 1 {
			t.Errorf("next SyncLeases = %v, %v; want the shard taken again", held, err)
		}
		if cp, ok, err := a.Load(t.Context(), stream, shards[0]); err != nil || ok {
			t.Errorf("Load after the reset = %+v, %v, %v; want no checkpoint", cp, ok, err)
		}
	}},
	{"a second instance with the owner id of a running one takes its leases at once, and the first one fails for good", func(t *testing.T, newInstance NewInstance, stream string) {
		first := newInstance(t, "a")
		shards := shardIDs(2)
		if held, err := first.SyncLeases(t.Context(), stream, shards); err != nil || len(held) != 2 {
			t.Fatalf("first SyncLeases = %v, %v", held, err)
		}
		if err := first.Save(t.Context(), stream, shards[0], seq(5)); err != nil {
			t.Fatal(err)
		}
		second := newInstance(t, "a") // a restart with a stable owner id
		if held, err := second.SyncLeases(t.Context(), stream, shards); err != nil || !slices.Equal(held, shards) {
			t.Fatalf("second SyncLeases = %v, %v; want every shard at its first sync", held, err)
		}
		if err := first.Save(t.Context(), stream, shards[0], seq(6)); !errors.Is(err, shardflow.ErrLeaseLost) {
			t.Errorf("first instance's Save = %v; want ErrLeaseLost", err)
		}
		sleep(t, 2*first.LeaseSyncInterval()) // its heartbeat is due
		for range 2 {
			_, err := first.SyncLeases(t.Context(), stream, shards)
			var oc *checkpoint.OwnerConflictError
			if !errors.As(err, &oc) || !errors.Is(err, checkpoint.ErrOwnerTaken) {
				t.Errorf("first instance's SyncLeases = %v; want an *OwnerConflictError", err)
			}
		}
		if held, err := second.SyncLeases(t.Context(), stream, shards); err != nil || !slices.Equal(held, shards) {
			t.Errorf("second SyncLeases = %v, %v; want every shard kept", held, err)
		}
		if got, _, _ := second.Load(t.Context(), stream, shards[0]); got != seq(5) {
			t.Errorf("checkpoint = %+v; want 5, the first instance's later Save refused", got)
		}
	}},
	{"a cancelled context fails SyncLeases", func(t *testing.T, newInstance NewInstance, stream string) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := newInstance(t, "a").SyncLeases(ctx, stream, shardIDs(1)); err == nil {
			t.Errorf("SyncLeases with a cancelled context succeeded")
		}
	}},
}
