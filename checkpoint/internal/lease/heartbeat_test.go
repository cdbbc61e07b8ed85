package lease_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint"
	"github.com/shardflow/shardflow/checkpoint/internal/lease"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/internal/retry"
)

// group runs Instances of one memory store as Kinesis sources drive them:
// each syncs every LeaseSyncInterval at its own phase, releases what it is
// no longer told it holds (after a final checkpoint), and feeds the load of
// the shards it reads (rate, in bytes per second by shard) to RecordLoad.
type group struct {
	t      *testing.T
	ctx    context.Context
	store  *memory.Store
	shards []string
	opts   func(*memory.InstanceOptions)

	mu    sync.Mutex
	nodes map[string]*gnode
	rate  map[string]float64 // bytes per second by shard
	moves int                // shards that changed reader
	wg    sync.WaitGroup
}

type gnode struct {
	in   *memory.Instance
	held []string
	stop chan struct{} // closed: stop; graceful: release and leave first
	kill bool
}

func newGroup(t *testing.T, shards int, opts func(*memory.InstanceOptions)) *group {
	ids := make([]string, shards)
	for i := range ids {
		ids[i] = fmt.Sprintf("shardId-%012d", i)
	}
	return &group{t: t, ctx: t.Context(), store: memory.New(), shards: ids, opts: opts,
		nodes: map[string]*gnode{}, rate: map[string]float64{}}
}

func (g *group) start(name string) *gnode {
	opts := []func(*memory.InstanceOptions){func(o *memory.InstanceOptions) {
		o.Logger = slog.New(slog.DiscardHandler)
	}}
	if g.opts != nil {
		opts = append(opts, g.opts)
	}
	in, err := g.store.Instance(name, opts...)
	if err != nil {
		g.t.Fatal(err)
	}
	n := &gnode{in: in, stop: make(chan struct{})}
	g.mu.Lock()
	g.nodes[name] = n
	g.mu.Unlock()
	g.wg.Go(func() {
		time.Sleep(time.Duration(rand.Int64N(int64(in.LeaseSyncInterval()))))
		tick := time.NewTicker(in.LeaseSyncInterval())
		defer tick.Stop()
		last := time.Now()
		for {
			now := time.Now()
			g.mu.Lock()
			for _, id := range n.held {
				in.RecordLoad("st", id, 1, int(g.rate[id]*now.Sub(last).Seconds()))
			}
			g.mu.Unlock()
			last = now
			held, err := in.SyncLeases(g.ctx, "st", g.shards)
			if err == nil {
				g.mu.Lock()
				old := n.held
				n.held = held
				g.mu.Unlock()
				for _, id := range old {
					if !slices.Contains(held, id) {
						_ = in.Save(g.ctx, "st", id, shardflow.Checkpoint{SequenceNumber: "1"})
						_ = in.ReleaseLease(g.ctx, "st", id)
						g.mu.Lock()
						g.moves++
						g.mu.Unlock()
					}
				}
			}
			select {
			case <-g.ctx.Done():
				return
			case <-n.stop:
				if !n.kill {
					g.mu.Lock()
					held := n.held
					n.held = nil
					g.mu.Unlock()
					for _, id := range held {
						_ = in.ReleaseLease(g.ctx, "st", id)
					}
					_ = in.Leave(g.ctx)
				} else {
					g.mu.Lock()
					n.held = nil
					g.mu.Unlock()
				}
				return
			case <-tick.C:
			}
		}
	})
	return n
}

func (g *group) stop(n *gnode, kill bool) {
	n.kill = kill
	close(n.stop)
}

// holdings returns what each running node reads, and checks that no shard
// is read by two.
func (g *group) holdings() map[string][]string {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[string][]string{}
	by := map[string]string{}
	for name, n := range g.nodes {
		out[name] = slices.Clone(n.held)
		for _, id := range n.held {
			if o, ok := by[id]; ok {
				g.t.Errorf("shard %s read by %s and %s", id, o, name)
			}
			by[id] = name
		}
	}
	return out
}

func (g *group) total() int {
	n := 0
	for _, h := range g.holdings() {
		n += len(h)
	}
	return n
}

// waitFor sleeps (on the bubble's clock) until cond holds, up to limit.
func (g *group) waitFor(what string, limit time.Duration, cond func() bool) time.Duration {
	g.t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			g.t.Fatalf("%s: not within %v: %v", what, limit, g.holdings())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start)
}

func (g *group) countsBalanced() bool {
	h := g.holdings()
	lo, hi, sum := math.MaxInt, 0, 0
	for _, ids := range h {
		lo, hi, sum = min(lo, len(ids)), max(hi, len(ids)), sum+len(ids)
	}
	return sum == len(g.shards) && hi-lo <= 1
}

func (g *group) end() {
	g.mu.Lock()
	for _, n := range g.nodes {
		select {
		case <-n.stop:
		default:
			n.kill = true
			close(n.stop)
		}
	}
	g.mu.Unlock()
	g.wg.Wait()
}

// The lease upkeep of an idle group is one heartbeat per instance per
// RenewInterval and one read of every lease item per instance per 3 ×
// LeaseDuration: with 64 shards and 4 instances, well under 2 calls per
// shard per minute.
func TestAnIdleGroupCallsTheTableOnlyForHeartbeatsAndTheSafetyNetRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, 64, nil)
		for i := range 4 {
			g.start(fmt.Sprintf("i%d", i))
		}
		g.waitFor("balanced", 5*time.Minute, g.countsBalanced)
		time.Sleep(time.Minute) // settled: no request outstanding
		g.store.ResetCalls()
		g.mu.Lock()
		moves := g.moves
		g.mu.Unlock()
		const rounds = 45 // RenewIntervals: 2 minutes
		o := g.nodes["i0"].in
		ri := o.LeaseSyncInterval() * 2
		ld := o.LeaseDuration()
		d := rounds * ri
		time.Sleep(d)
		calls := g.store.Calls()
		sum := int64(0)
		for _, n := range calls {
			sum += n
		}
		// Per instance: a heartbeat per RenewInterval, one BatchGetItem of
		// the 64 items per 3 × LeaseDuration (each bound rounded up).
		beats := int64(4 * (rounds + 1))
		reads := int64(4 * (int(d/(3*ld)) + 1))
		if calls["UpdateItem"] > beats || calls["BatchGetItem"] > reads || sum != calls["UpdateItem"]+calls["BatchGetItem"] {
			t.Errorf("calls over %v of an idle group = %v; want at most %d UpdateItem (heartbeats), %d BatchGetItem and nothing else",
				d, calls, beats, reads)
		}
		perShardMinute := float64(sum) / 64 / d.Minutes()
		t.Logf("idle: %v over %v: %.2f calls per shard per minute", calls, d, perShardMinute)
		if perShardMinute > 2 {
			t.Errorf("%.2f calls per shard per minute; want at most 2", perShardMinute)
		}
		g.mu.Lock()
		if g.moves != moves {
			t.Errorf("%d leases moved in an idle, balanced group", g.moves-moves)
		}
		g.mu.Unlock()
		g.end()
	})
}

// A member that stops (kill -9: no release, no leave) has its leases taken
// once its heartbeat did not change for the lease duration, and not
// before; its stale checkpoints are refused.
func TestAMemberThatStopsBeatingLosesItsLeasesAfterTheLeaseDurationAndIsFenced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, 8, nil)
		a, b := g.start("a"), g.start("b")
		g.waitFor("balanced", time.Minute, g.countsBalanced)
		victim := g.holdings()["a"]
		g.stop(a, true)
		took := g.waitFor("failover", time.Minute, func() bool { return len(g.holdings()["b"]) == 8 })
		ld, si := b.in.LeaseDuration(), b.in.LeaseSyncInterval()
		t.Logf("failover after %v (lease duration %v)", took, ld)
		// a's last heartbeat was at most a renew interval before the kill;
		// b notices within a renew interval and a sync interval after the
		// lease duration.
		if took < ld-2*si || took > ld+4*si {
			t.Errorf("failover %v after the kill; want within [LeaseDuration-RenewInterval, LeaseDuration+RenewInterval*2]", took)
		}
		for _, id := range victim {
			err := a.in.Save(t.Context(), "st", id, shardflow.Checkpoint{SequenceNumber: "999"})
			if !errors.Is(err, shardflow.ErrLeaseLost) {
				t.Errorf("stale owner's Save of %s = %v; want ErrLeaseLost", id, err)
			}
		}
		g.end()
	})
}

// A process restarting with the owner id of a live one takes its leases at
// its first sync; the older process's checkpoints are refused, and its
// next sync fails for good with the owner conflict, instead of the two
// trading the leases.
func TestARestartWithTheSameOwnerReclaimsAtOnceAndTheOldIncarnationFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		store := memory.New()
		shards := []string{"s0", "s1", "s2"}
		old, _ := store.Instance("pod-1")
		if held, err := old.SyncLeases(ctx, "st", shards); err != nil || len(held) != 3 {
			t.Fatalf("old.SyncLeases = %v, %v", held, err)
		}
		if err := old.Save(ctx, "st", "s0", shardflow.Checkpoint{SequenceNumber: "5"}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		renewed, _ := store.Instance("pod-1")
		held, err := renewed.SyncLeases(ctx, "st", shards)
		if err != nil || !slices.Equal(held, shards) {
			t.Fatalf("first SyncLeases of the restarted process = %v, %v; want every shard at once", held, err)
		}
		if err := old.Save(ctx, "st", "s0", shardflow.Checkpoint{SequenceNumber: "6"}); !errors.Is(err, shardflow.ErrLeaseLost) {
			t.Errorf("old incarnation's Save = %v; want ErrLeaseLost", err)
		}
		if cp, _ := store.Checkpoint("st", "s0"); cp.SequenceNumber != "5" {
			t.Errorf("checkpoint %q; want 5, the old process's refused", cp.SequenceNumber)
		}
		time.Sleep(old.LeaseSyncInterval() * 2) // the old process's heartbeat is due
		for range 3 {
			// The restarted process syncs as a source does, every
			// LeaseSyncInterval.
			if held, err := renewed.SyncLeases(ctx, "st", shards); err != nil || !slices.Equal(held, shards) {
				t.Errorf("restarted process's SyncLeases = %v, %v; want every shard kept", held, err)
			}
			held, err := old.SyncLeases(ctx, "st", shards)
			var oc *checkpoint.OwnerConflictError
			if !errors.Is(err, checkpoint.ErrOwnerTaken) || !errors.As(err, &oc) || oc.Owner != "pod-1" || !retry.IsPermanent(err) || len(held) != 0 {
				t.Errorf("old incarnation's SyncLeases = %v, %v; want a permanent *OwnerConflictError for pod-1", held, err)
			}
			time.Sleep(old.LeaseSyncInterval())
		}
		for range 6 {
			if held, err := renewed.SyncLeases(ctx, "st", shards); err != nil || !slices.Equal(held, shards) {
				t.Errorf("restarted process's SyncLeases = %v, %v; want every shard kept", held, err)
			}
			time.Sleep(renewed.LeaseSyncInterval())
		}
		if err := renewed.Save(ctx, "st", "s0", shardflow.Checkpoint{SequenceNumber: "7"}); err != nil {
			t.Errorf("restarted process's Save = %v", err)
		}
	})
}

// Members that hold nothing are seen (they beat), so a group whose first
// instance took every shard balances by count, and stays put.
func TestInstancesThatHoldNothingGetTheirShareByCountAndLeasesThenStayPut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, 10, nil)
		g.start("a")
		g.waitFor("a holds every shard", time.Minute, func() bool { return len(g.holdings()["a"]) == 10 })
		g.start("b")
		g.start("c")
		took := g.waitFor("balanced 4/3/3", 2*time.Minute, g.countsBalanced)
		t.Logf("balanced after %v", took)
		g.mu.Lock()
		moves := g.moves
		g.mu.Unlock()
		time.Sleep(2 * time.Minute)
		g.mu.Lock()
		if g.moves != moves {
			t.Errorf("%d leases moved after the group balanced", g.moves-moves)
		}
		g.mu.Unlock()
		if !g.countsBalanced() {
			t.Errorf("no longer balanced: %v", g.holdings())
		}
		g.end()
	})
}

// loads returns each node's load (bytes per second of the shards it reads)
// and their mean.
func (g *group) loads() (map[string]float64, float64) {
	h := g.holdings()
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[string]float64{}
	total := 0.0
	for name, ids := range h {
		for _, id := range ids {
			out[name] += g.rate[id]
			total += g.rate[id]
		}
	}
	return out, total / float64(len(h))
}

// With one shard ten times as busy as the others, leases move by load: the
// hot shard stays put, its owner reads fewer other shards, and every
// instance ends within ±20% of the mean bytes per second; then no lease
// moves for several more minutes.
func TestAHotShardIsBalancedByLoadWithinTwentyPercentAndLeasesThenStayPut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, 40, nil)
		for _, id := range g.shards {
			g.rate[id] = 10_000
		}
		hot := g.shards[7]
		g.rate[hot] = 100_000
		for i := range 4 {
			g.start(fmt.Sprintf("i%d", i))
		}
		within := func() bool {
			l, mean := g.loads()
			if g.total() != 40 {
				return false
			}
			for _, v := range l {
				if math.Abs(v-mean) > 0.2*mean {
					return false
				}
			}
			return true
		}
		took := g.waitFor("within ±20% of the mean load", 15*time.Minute, within)
		l, mean := g.loads()
		t.Logf("within ±20%% of the mean after %v: %v (mean %.0f)", took, l, mean)
		// Moves within the hysteresis may go on a little; then none.
		quiet := time.Now()
		g.mu.Lock()
		moves := g.moves
		g.mu.Unlock()
		g.waitFor("no lease moved for 2 minutes", 15*time.Minute, func() bool {
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.moves != moves {
				moves, quiet = g.moves, time.Now()
			}
			return time.Since(quiet) >= 2*time.Minute
		})
		l, mean = g.loads()
		t.Logf("settled (no move for 2 minutes): %v (mean %.0f)", l, mean)
		var hotOwner string
		for name, ids := range g.holdings() {
			if slices.Contains(ids, hot) {
				hotOwner = name
			}
		}
		h := g.holdings()
		for name, ids := range h {
			if name != hotOwner && len(ids) <= len(h[hotOwner]) {
				t.Errorf("%s reads %d shards, the hot shard's owner %s %d; want the hot owner to read fewer", name, len(ids), hotOwner, len(h[hotOwner]))
			}
		}
		time.Sleep(5 * time.Minute)
		g.mu.Lock()
		if g.moves != moves {
			t.Errorf("%d leases moved once settled by load; want none (hysteresis)", g.moves-moves)
		}
		g.mu.Unlock()
		if !within() {
			l, mean := g.loads()
			t.Errorf("no longer within ±20%%: %v (mean %.0f)", l, mean)
		}
		g.end()
	})
}

// MaxLeasesPerInstance caps what each instance takes and asks for; the
// rest of the shards stay unread, and a warning says so once.
func TestMaxLeasesPerInstanceCapsEachInstanceAndWarnsOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := &logs{}
		g := newGroup(t, 10, func(o *memory.InstanceOptions) {
			o.MaxLeasesPerInstance = 3
			o.Logger = slog.New(l)
		})
		g.start("a")
		g.start("b")
		g.waitFor("3 each", time.Minute, func() bool {
			h := g.holdings()
			return len(h["a"]) == 3 && len(h["b"]) == 3
		})
		time.Sleep(time.Minute)
		h := g.holdings()
		if len(h["a"]) != 3 || len(h["b"]) != 3 {
			t.Errorf("holdings %v; want 3 each, never more", h)
		}
		n := 0
		l.mu.Lock()
		for _, m := range l.msgs {
			if m == "MaxLeasesPerInstance leaves shards unread: live instances × the cap is less than the shards" {
				n++
			}
		}
		l.mu.Unlock()
		if n != 2 { // once per instance
			t.Errorf("warned %d times; want once per instance (2)", n)
		}
		g.end()
	})
}

// An instance that leaves (releasing its leases, then Leave) has its shards
// taken within about a renew interval, not after the lease duration.
func TestALeavingInstanceShardsAreTakenWithoutWaitingForExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, 8, nil)
		a, b := g.start("a"), g.start("b")
		g.waitFor("balanced", time.Minute, g.countsBalanced)
		g.stop(a, false)
		took := g.waitFor("b takes every shard", time.Minute, func() bool { return len(g.holdings()["b"]) == 8 })
		t.Logf("taken %v after the leave", took)
		if ld := b.in.LeaseDuration(); took >= ld {
			t.Errorf("shards of a leaving instance taken after %v; want less than the lease duration %v", took, ld)
		}
		members := 0
		for range maps.Keys(g.store.LeaseOwners("st")) {
			members++
		}
		if members != 8 {
			t.Errorf("%d lease items; want 8", members)
		}
		g.end()
	})
}

// A lease owned by an instance with no heartbeat entry (an older shardflow
// version) is judged by the old rule: expired once its item did not change
// for the lease duration. While its counter keeps changing it is left to
// its owner, and a warning names that owner, once.
func TestALeaseOfAnOlderVersionIsJudgedByItsItemAndItsOwnerIsNamedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := newTable()
		tb.items["st/s0"] = &lease.Lease{ShardID: "s0", Owner: "old", Counter: 1}
		m, log := newLoggedManager(t, tb, "a")
		ld := m.LeaseDuration()
		for i := range 4 { // the old owner renews every lease duration / 3
			if held, err := m.Sync(t.Context(), "st", []string{"s0"}); err != nil || len(held) != 0 {
				t.Fatalf("Sync %d = %v, %v; want nothing: old renews s0", i, held, err)
			}
			time.Sleep(3 * ld)
			tb.mu.Lock()
			tb.items["st/s0"].Counter++
			tb.mu.Unlock()
		}
		n := 0
		log.mu.Lock()
		for _, msg := range log.msgs {
			if strings.HasPrefix(msg, "a lease owner that is not a member keeps renewing") {
				n++
			}
		}
		log.mu.Unlock()
		if n != 1 {
			t.Errorf("warned %d times about the older owner; want once", n)
		}
		// The old owner stops: its lease expires a lease duration after
		// this instance last saw it change.
		start := time.Now()
		for {
			held, err := m.Sync(t.Context(), "st", []string{"s0"})
			if err != nil {
				t.Fatal(err)
			}
			if len(held) == 1 {
				break
			}
			if time.Since(start) > 5*ld {
				t.Fatalf("the older owner's lease not taken %v after it stopped", time.Since(start))
			}
			time.Sleep(m.SyncInterval())
		}
		if took := time.Since(start); took < ld {
			t.Errorf("taken %v after the older owner stopped; want at least the lease duration %v", took, ld)
		}
	})
}

// Instances started at once find one of them holding every shard (it saw
// no other when it synced first). The others then ask it for their shares
// in one round: each for a window of its shards of its own, so that no two
// requests name the same shard and none waits for a request to lapse.
func TestAColdStartOfManyInstancesIsBalancedWithinAFewHeartbeats(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, 400, nil)
		for i := range 16 {
			g.start(fmt.Sprintf("i%02d", i))
		}
		took := g.waitFor("balanced", 10*time.Minute, g.countsBalanced)
		t.Logf("16 instances on 400 shards balanced %v after a cold start", took)
		if limit := 6 * lease.DefaultLeaseDuration / 3; took > limit {
			t.Errorf("balanced after %v (virtual); want within six heartbeat intervals (%v)", took, limit)
		}
		g.end()
	})
}

// A hot shard's owner above the mean by more than the hysteresis is
// relieved even when every other instance is below the mean by less than
// it (its excess spread over four others is small for each).
func TestAHotShardsOwnerIsRelievedWhenTheOthersAreOnlySlightlyBelowTheMean(t *testing.T) {
	for run := range 5 {
		t.Run(fmt.Sprint(run), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g := newGroup(t, 100, nil)
				for _, id := range g.shards {
					g.rate[id] = 1_000
				}
				g.rate[g.shards[3]] = 10_000
				for i := range 5 {
					g.start(fmt.Sprintf("i%d", i))
				}
				within := func() bool {
					l, mean := g.loads()
					if g.total() != 100 {
						return false
					}
					for _, v := range l {
						if math.Abs(v-mean) > 0.2*mean {
							return false
						}
					}
					return true
				}
				took := g.waitFor("within ±20% of the mean load", 15*time.Minute, within)
				l, mean := g.loads()
				t.Logf("within ±20%% of the mean after %v: %v (mean %.0f)", took, l, mean)
				g.end()
			})
		})
	}
}

// A reader's goroutine releases its lease (and saves checkpoints) while the
// source's coordinator syncs: the two must not race on the lease cache.
// (Run with -race.)
func TestReleasesAndCheckpointsDoNotRaceWithSyncs(t *testing.T) {
	store := memory.New()
	ctx := t.Context()
	shards := make([]string, 64)
	for i := range shards {
		shards[i] = fmt.Sprintf("shardId-%012d", i)
	}
	in, err := store.Instance("a", func(o *memory.InstanceOptions) { o.Logger = slog.New(slog.DiscardHandler) })
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		held, err := in.SyncLeases(ctx, "st", shards)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			for range 5 {
				if _, err := in.SyncLeases(ctx, "st", shards); err != nil {
					t.Error(err)
				}
			}
		})
		for _, id := range held {
			wg.Go(func() {
				_ = in.Save(ctx, "st", id, shardflow.Checkpoint{SequenceNumber: "1"})
				_ = in.ReleaseLease(ctx, "st", id)
			})
		}
		wg.Wait()
	}
}
