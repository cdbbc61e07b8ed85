package memory_test

import (
	"context"
	"errors"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/checkpointtest"
	"github.com/shardflow/shardflow/checkpoint/memory"
)

func TestInstanceConformance(t *testing.T) {
	checkpointtest.Run(t, func(*testing.T) shardflow.CheckpointStore {
		in, err := memory.New().Instance("")
		if err != nil {
			t.Fatal(err)
		}
		return checkpointtest.Leasing(in)
	})
}

func TestInstanceLeaseConformance(t *testing.T) {
	checkpointtest.RunLeasesSynctest(t, func(t *testing.T) checkpointtest.NewInstance {
		store := memory.New()
		return func(t *testing.T, owner string) checkpointtest.LeaseStore {
			in, err := store.Instance(owner, func(o *memory.InstanceOptions) {
				o.LeaseDuration, o.HandoffTimeout = checkpointtest.LeaseDuration, 4*checkpointtest.LeaseDuration
			})
			if err != nil {
				t.Fatal(err)
			}
			return in
		}
	})
}

var shards8 = []string{"s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"}

// cluster runs instances of one memory store the way Kinesis sources do,
// without Kinesis: each syncs its leases every LeaseSyncInterval (each at
// its own phase), hands over the shards it no longer holds (final
// checkpoint, then release), "reads" one record of every shard it holds per
// sync and checkpoints it. After every step it checks that no shard is read
// by two live instances and that no shard's checkpoint ever went backwards.
type cluster struct {
	t      *testing.T
	store  *memory.Store
	stream string
	shards []string
	ctx    context.Context
	wg     sync.WaitGroup

	mu       sync.Mutex
	nodes    []*node
	saved    map[string]int // last checkpoint of each shard
	lostErrs int            // saves refused as lease lost
}

type node struct {
	name    string
	in      *memory.Instance
	reading map[string]int // shard -> records read, from its checkpoint
	stop    chan struct{}  // closed: shut down gracefully
	stalled bool           // stops syncing and saving, as a hung process
	dead    bool
}

func newCluster(t *testing.T, ctx context.Context, shards []string) *cluster {
	return &cluster{t: t, store: memory.New(), stream: "orders", shards: shards, ctx: ctx, saved: map[string]int{}}
}

func (c *cluster) start(name string) *node {
	in, err := c.store.Instance(name)
	if err != nil {
		c.t.Fatal(err)
	}
	n := &node{name: name, in: in, reading: map[string]int{}, stop: make(chan struct{})}
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	c.wg.Go(func() {
		// Start at a random phase, as separate processes do.
		time.Sleep(time.Duration(rand.Int64N(int64(in.LeaseSyncInterval()))))
		tick := time.NewTicker(in.LeaseSyncInterval())
		defer tick.Stop()
		for {
			c.mu.Lock()
			if !n.stalled {
				c.step(n)
			}
			c.mu.Unlock()
			select {
			case <-c.ctx.Done():
				return
			case <-n.stop:
				c.mu.Lock()
				for id := range n.reading {
					c.handOver(n, id)
				}
				if err := n.in.Leave(c.ctx); err != nil {
					c.t.Errorf("%s: Leave: %v", n.name, err)
				}
				n.dead = true
				c.mu.Unlock()
				return
			case <-tick.C:
			}
		}
	})
	return n
}

// step is one lease sync of n and the work it implies. Called with c.mu held.
func (c *cluster) step(n *node) {
	t := c.t
	held, err := n.in.SyncLeases(c.ctx, c.stream, c.shards)
	if err != nil {
		if c.ctx.Err() == nil {
			t.Errorf("%s: SyncLeases: %v", n.name, err)
		}
		return
	}
	for id := range n.reading {
		if !slices.Contains(held, id) {
			c.handOver(n, id)
		}
	}
	for _, id := range held {
		if _, ok := n.reading[id]; !ok {
			cp, _, err := n.in.Load(c.ctx, c.stream, id)
			if err != nil {
				t.Fatalf("%s: Load: %v", n.name, err)
			}
			pos, _ := strconv.Atoi(cp.SequenceNumber)
			n.reading[id] = pos
		}
	}
	for id := range n.reading {
		n.reading[id]++
		c.save(n, id)
	}
	c.check()
}

// handOver is what the source does with a shard it no longer holds: final
// checkpoint, then release. Called with c.mu held.
func (c *cluster) handOver(n *node, id string) {
	if c.save(n, id) {
		if err := n.in.ReleaseLease(c.ctx, c.stream, id); err != nil {
			c.t.Errorf("%s: ReleaseLease(%s): %v", n.name, id, err)
		}
	}
	delete(n.reading, id)
}

// save checkpoints what n read of shard id and reports whether the store took
// it. Called with c.mu held.
func (c *cluster) save(n *node, id string) bool {
	pos := n.reading[id]
	err := n.in.Save(c.ctx, c.stream, id, shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: strconv.Itoa(pos)}})
	switch {
	case errors.Is(err, shardflow.ErrLeaseLost):
		c.lostErrs++
		delete(n.reading, id)
		return false
	case err != nil:
		c.t.Errorf("%s: Save(%s): %v", n.name, id, err)
		return false
	}
	if pos < c.saved[id] {
		c.t.Errorf("%s: checkpoint of %s went back from %d to %d: two instances wrote it", n.name, id, c.saved[id], pos)
	}
	c.saved[id] = pos
	return true
}

// check fails the test if two live instances read one shard. Called with
// c.mu held.
func (c *cluster) check() {
	readers := map[string]string{}
	for _, n := range c.nodes {
		if n.stalled || n.dead {
			continue
		}
		for id := range n.reading {
			if other, ok := readers[id]; ok {
				c.t.Errorf("shard %s read by %s and %s at once", id, other, n.name)
			}
			readers[id] = n.name
		}
	}
}

// counts returns how many shards each live instance reads.
func (c *cluster) counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for _, n := range c.nodes {
		if !n.dead && !n.stalled {
			out[n.name] = len(n.reading)
		}
	}
	return out
}

// balanced reports whether every shard is read and the live instances read
// ceil(shards/instances) or one less each.
func (c *cluster) balanced() bool {
	counts := c.counts()
	sum, lo, hi := 0, len(c.shards), 0
	for _, n := range counts {
		sum, lo, hi = sum+n, min(lo, n), max(hi, n)
	}
	return sum == len(c.shards) && hi-lo <= 1
}

// waitBalanced waits until the cluster is balanced and stays so for two
// lease durations, and returns how long it took to balance.
func (c *cluster) waitBalanced(limit time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	var since time.Time
	for time.Since(start) < limit {
		time.Sleep(100 * time.Millisecond)
		switch {
		case !c.balanced():
			since = time.Time{}
		case since.IsZero():
			since = time.Now()
		case time.Since(since) >= 20*time.Second:
			return since.Sub(start)
		}
	}
	c.t.Fatalf("not balanced after %v: %v", limit, c.counts())
	return 0
}

func TestInstancesConvergeToBalancedOwnershipAsInstancesComeAndGo(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		c := newCluster(t, ctx, shards8)
		c.start("a")
		took := c.waitBalanced(time.Minute)
		t.Logf("1 instance: %v after %v", c.counts(), took)
		if got := c.counts()["a"]; got != 8 {
			t.Errorf("a alone reads %d shards; want 8", got)
		}
		c.start("b")
		cNode := c.start("c")
		took = c.waitBalanced(2 * time.Minute)
		t.Logf("3 instances: %v after %v (virtual time)", c.counts(), took)
		if diff := cmp.Diff([]int{2, 3, 3}, slices.Sorted(maps.Values(c.counts()))); diff != "" {
			t.Errorf("shards per instance mismatch (-want +got):\n%s", diff)
		}
		close(cNode.stop)
		took = c.waitBalanced(2 * time.Minute)
		t.Logf("2 instances after c shut down: %v after %v", c.counts(), took)
		if diff := cmp.Diff(map[string]int{"a": 4, "b": 4}, c.counts()); diff != "" {
			t.Errorf("shards per instance mismatch (-want +got):\n%s", diff)
		}
		cancel()
		c.wg.Wait()
		if c.lostErrs != 0 {
			t.Errorf("%d checkpoints refused as lease lost; graceful handoffs should lose none", c.lostErrs)
		}
	})
}

func TestACrashedInstanceShardsAreTakenWithinLeaseDurationPlusRenewInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		c := newCluster(t, ctx, shards8)
		c.start("a")
		c.start("b")
		c.waitBalanced(2 * time.Minute)
		c.mu.Lock()
		var victim *node
		for _, n := range c.nodes {
			if n.name == "b" {
				victim = n
			}
		}
		victim.stalled = true // kill -9: no release, no more renewals
		orphans := slices.Collect(maps.Keys(victim.reading))
		c.mu.Unlock()
		killed := time.Now()
		for {
			time.Sleep(100 * time.Millisecond)
			c.mu.Lock()
			taken := 0
			for _, id := range orphans {
				if _, ok := c.nodes[0].reading[id]; ok {
					taken++
				}
			}
			c.mu.Unlock()
			if taken == len(orphans) {
				break
			}
			if time.Since(killed) > time.Minute {
				t.Fatalf("a took %d of %d shards of the dead instance in a minute", taken, len(orphans))
			}
		}
		failover := time.Since(killed)
		t.Logf("failover after a crash: %v (virtual time)", failover)
		if bound := 10*time.Second + 10*time.Second/3; failover > bound {
			t.Errorf("failover took %v; want at most LeaseDuration + RenewInterval = %v", failover, bound)
		}
		// The hung instance wakes up: its checkpoints are refused and it no
		// longer gets its shards.
		c.mu.Lock()
		for _, id := range orphans {
			before := c.saved[id]
			err := victim.in.Save(ctx, c.stream, id, shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: "1"}})
			if !errors.Is(err, shardflow.ErrLeaseLost) {
				t.Errorf("stale owner's Save(%s) = %v; want ErrLeaseLost", id, err)
			}
			if got, _ := c.store.Checkpoint(c.stream, id); got.SequenceNumber != strconv.Itoa(before) {
				t.Errorf("stale Save changed the checkpoint of %s to %s", id, got.SequenceNumber)
			}
		}
		held, err := victim.in.SyncLeases(ctx, c.stream, c.shards)
		c.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range held {
			if slices.Contains(orphans, id) {
				t.Errorf("the stale owner still gets shard %s after waking up", id)
			}
		}
		cancel()
		c.wg.Wait()
	})
}

func TestStalledOwnerLosesItsLeaseAndStaleCheckpointsAreFenced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		store := memory.New()
		a, _ := store.Instance("a")
		b, _ := store.Instance("b")
		shards := []string{"s0"}
		held, err := a.SyncLeases(ctx, "st", shards)
		if err != nil || !slices.Equal(held, shards) {
			t.Fatalf("a.SyncLeases = %v, %v; want [s0]", held, err)
		}
		cp := func(seq string) shardflow.Checkpoint {
			return shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: seq}}
		}
		if err := a.Save(ctx, "st", "s0", cp("10")); err != nil {
			t.Fatal(err)
		}
		if err := b.Save(ctx, "st", "s0", cp("99")); !errors.Is(err, shardflow.ErrLeaseLost) {
			t.Errorf("Save by an instance that never held the lease = %v; want ErrLeaseLost", err)
		}
		// b syncs on; a stalls. b must not take a's lease before it expired.
		deadline := time.Now().Add(time.Minute)
		var took time.Duration
		start := time.Now()
		for time.Now().Before(deadline) {
			held, err := b.SyncLeases(ctx, "st", shards)
			if err != nil {
				t.Fatal(err)
			}
			if len(held) == 1 {
				took = time.Since(start)
				break
			}
			time.Sleep(b.LeaseSyncInterval())
		}
		// a holds its lease for the lease duration less a renew interval
		// after its last heartbeat (at the start); b waits as long after
		// it first saw that heartbeat, and notices within a sync interval.
		if ld, si := b.LeaseDuration(), b.LeaseSyncInterval(); took < ld-2*si || took > ld+si {
			t.Errorf("b took the stalled lease after %v; want the lease duration %v less a renew interval, to it + one sync interval", took, ld)
		}
		if err := a.Save(ctx, "st", "s0", cp("11")); !errors.Is(err, shardflow.ErrLeaseLost) {
			t.Errorf("stale owner's Save = %v; want ErrLeaseLost", err)
		}
		if got, _ := store.Checkpoint("st", "s0"); got.SequenceNumber != "10" {
			t.Errorf("checkpoint = %q after a stale Save; want 10", got.SequenceNumber)
		}
		if err := b.Save(ctx, "st", "s0", cp("12")); err != nil {
			t.Errorf("new owner's Save: %v", err)
		}
		if held, err := a.SyncLeases(ctx, "st", shards); err != nil || len(held) != 0 {
			t.Errorf("stale owner's SyncLeases = %v, %v; want none", held, err)
		}
		// Releasing a lease that is no longer ours changes nothing.
		if err := a.ReleaseLease(ctx, "st", "s0"); err != nil {
			t.Errorf("ReleaseLease of a lost lease: %v", err)
		}
		if diff := cmp.Diff(map[string]string{"s0": "b"}, store.LeaseOwners("st")); diff != "" {
			t.Errorf("owners mismatch (-want +got):\n%s", diff)
		}
	})
}

func TestHandoffLetsTheOwnerCheckpointAndReleaseBeforeTheThiefReads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		store := memory.New()
		a, _ := store.Instance("a")
		b, _ := store.Instance("b")
		shards := []string{"s0", "s1"}
		if held, _ := a.SyncLeases(ctx, "st", shards); len(held) != 2 {
			t.Fatalf("a holds %v; want both shards", held)
		}
		// b is below target (1 of 2) and a above: b asks for one lease
		// instead of taking it.
		held, err := b.SyncLeases(ctx, "st", shards)
		if err != nil || len(held) != 0 {
			t.Fatalf("b.SyncLeases = %v, %v; want nothing yet", held, err)
		}
		// b asks once it sees a's leases in a's heartbeat; a learns of the
		// request at its next heartbeat, within a renew interval.
		var heldA []string
		for start := time.Now(); ; {
			time.Sleep(a.LeaseSyncInterval())
			if held, err := b.SyncLeases(ctx, "st", shards); err != nil || len(held) != 0 {
				t.Fatalf("b.SyncLeases = %v, %v; want nothing before a released", held, err)
			}
			heldA, err = a.SyncLeases(ctx, "st", shards)
			if err != nil {
				t.Fatal(err)
			}
			if len(heldA) == 1 {
				break
			}
			if time.Since(start) > 4*a.LeaseSyncInterval()+a.LeaseSyncInterval() {
				t.Fatalf("a.SyncLeases %v after b asked = %v; want one shard left", time.Since(start), heldA)
			}
		}
		given := "s0"
		if heldA[0] == "s0" {
			given = "s1"
		}
		// Until a releases it, b does not get it, and a can still save its
		// final checkpoint.
		if held, _ := b.SyncLeases(ctx, "st", shards); len(held) != 0 {
			t.Fatalf("b got %v before a released it", held)
		}
		final := shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: "42"}}
		if err := a.Save(ctx, "st", given, final); err != nil {
			t.Fatalf("a's final checkpoint of %s: %v", given, err)
		}
		if err := a.ReleaseLease(ctx, "st", given); err != nil {
			t.Fatal(err)
		}
		held, err = b.SyncLeases(ctx, "st", shards)
		if err != nil || !slices.Equal(held, []string{given}) {
			t.Fatalf("b.SyncLeases after the release = %v, %v; want [%s]", held, err, given)
		}
		if got, _, _ := b.Load(ctx, "st", given); got != final {
			t.Errorf("b resumes %s from %+v; want a's final checkpoint %+v", given, got, final)
		}
		if err := a.Save(ctx, "st", given, final); !errors.Is(err, shardflow.ErrLeaseLost) {
			t.Errorf("a's Save after the handoff = %v; want ErrLeaseLost", err)
		}
	})
}

func TestAnUnresponsiveOwnerOfARequestedLeaseLosesItByExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		store := memory.New()
		a, _ := store.Instance("a")
		b, _ := store.Instance("b")
		shards := []string{"s0", "s1"}
		a.SyncLeases(ctx, "st", shards)
		start := time.Now()
		for time.Since(start) < time.Minute {
			held, err := b.SyncLeases(ctx, "st", shards)
			if err != nil {
				t.Fatal(err)
			}
			if len(held) == 2 {
				break
			}
			time.Sleep(b.LeaseSyncInterval())
		}
		if took := time.Since(start); took > 10*time.Second+b.LeaseSyncInterval() {
			t.Errorf("b got a's leases after %v; want about the lease duration", took)
		}
	})
}
