package lease_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint"
	"github.com/shardflow/shardflow/checkpoint/internal/lease"
	"github.com/shardflow/shardflow/internal/retry"
)

// table is an in-memory lease.Table whose calls can be made to fail.
type table struct {
	mu    sync.Mutex
	items map[string]*lease.Lease
	cps   map[string]shardflow.Checkpoint
	// fail, if set, decides the fate of each call: nil passes; an error
	// fails the call; lost applies it and then fails (the answer is lost).
	fail func(op string) (err error, lost bool)
	hb   lease.Heartbeats
}

func (t *table) Beat(ctx context.Context, m lease.Member, takeover bool) ([]lease.Member, error) {
	t.mu.Lock()
	err, lost := t.fate("Beat")
	t.mu.Unlock()
	if err != nil && !lost {
		return nil, err
	}
	ms, berr := t.hb.Beat(ctx, m, takeover)
	if berr != nil {
		return nil, berr
	}
	return ms, err
}

func (t *table) Members(ctx context.Context) ([]lease.Member, error) {
	t.mu.Lock()
	err, _ := t.fate("Members")
	t.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return t.hb.Members(ctx)
}

func (t *table) Remove(ctx context.Context, owner, inc string, beat int64) error {
	t.mu.Lock()
	err, _ := t.fate("Remove")
	t.mu.Unlock()
	if err != nil {
		return err
	}
	return t.hb.Remove(ctx, owner, inc, beat)
}

var errDown = errors.New("injected: connection reset")

func newTable() *table {
	return &table{items: map[string]*lease.Lease{}, cps: map[string]shardflow.Checkpoint{}}
}

func (t *table) fate(op string) (error, bool) {
	if t.fail == nil {
		return nil, false
	}
	return t.fail(op)
}

func (t *table) Leases(ctx context.Context, stream string, ids []string) ([]lease.Lease, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err, _ := t.fate("Leases"); err != nil {
		return nil, err
	}
	var out []lease.Lease
	for _, id := range ids {
		if l := t.items[stream+"/"+id]; l != nil {
			out = append(out, *l)
		}
	}
	return out, nil
}

func (t *table) Create(ctx context.Context, stream, id, owner string, renewedAt time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	err, lost := t.fate("Create")
	if err != nil && !lost {
		return err
	}
	if t.items[stream+"/"+id] != nil {
		return lease.ErrConflict
	}
	t.items[stream+"/"+id] = &lease.Lease{ShardID: id, Owner: owner, Counter: 1, RenewedAt: renewedAt}
	return err
}

func (t *table) Update(ctx context.Context, stream, id string, cond lease.Cond, ch lease.Change) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	err, lost := t.fate("Update")
	if err != nil && !lost {
		return err
	}
	l := t.items[stream+"/"+id]
	if l == nil || l.Owner != cond.Owner || l.Counter != cond.Counter || cond.Want != nil && l.Want != *cond.Want {
		return lease.ErrConflict
	}
	if ch.Owner != nil {
		l.Owner = *ch.Owner
	}
	switch {
	case l.Owner == "":
		l.RenewedAt = time.Time{}
	case !ch.RenewedAt.IsZero():
		l.RenewedAt = ch.RenewedAt
	}
	if ch.Bump {
		l.Counter++
	}
	if ch.Want != nil {
		l.Want = *ch.Want
	}
	if ch.Checkpoint != nil {
		t.cps[stream+"/"+id] = *ch.Checkpoint
	}
	return err
}

func newManager(t *testing.T, tb lease.Table, owner string) *lease.Manager {
	t.Helper()
	m, err := lease.New(tb, lease.Options{Owner: owner})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// syncEvery syncs m every SyncInterval until ctx ends, releases what it is
// no longer told it holds (as the source does) and records what it holds.
func syncEvery(ctx context.Context, m *lease.Manager, shards []string, got *[]string, mu *sync.Mutex) {
	var last []string
	for ctx.Err() == nil {
		held, err := m.Sync(ctx, "st", shards)
		if err == nil {
			// Not under mu: a goroutine blocked on a mutex would keep
			// synctest's clock from moving.
			for _, id := range last {
				if !slices.Contains(held, id) {
					_ = m.Release(ctx, "st", id)
				}
			}
			last = held
			mu.Lock()
			*got = held
			mu.Unlock()
		}
		select {
		case <-ctx.Done():
		case <-time.After(m.SyncInterval()):
		}
	}
}

func TestLeasesSurviveAnOutageOfTheirOwnerShorterThanTheirValidity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		shared := newTable()
		var down sync.Mutex
		outage := false
		// a sees the table through a link that goes down; b does not.
		aTable := &faulty{table: shared, down: func() bool { down.Lock(); defer down.Unlock(); return outage }}
		a, b := newManager(t, aTable, "a"), newManager(t, shared, "b")
		shards := []string{"s0", "s1", "s2", "s3"}
		ctx, cancel := context.WithCancel(t.Context())
		var mu sync.Mutex
		var ha, hb []string
		var wg sync.WaitGroup
		wg.Go(func() { syncEvery(ctx, a, shards, &ha, &mu) })
		time.Sleep(time.Second)
		wg.Go(func() { syncEvery(ctx, b, shards, &hb, &mu) })
		time.Sleep(30 * time.Second)
		mu.Lock()
		before := slices.Clone(ha)
		mu.Unlock()
		if len(before) != 2 {
			t.Fatalf("a holds %v; want 2 of 4 after balancing", before)
		}
		down.Lock()
		outage = true
		down.Unlock()
		// An instance keeps its leases for the lease duration less one
		// renew interval after its last heartbeat, which may be up to one
		// renew interval old when the outage starts: an outage shorter
		// than LeaseDuration - 2 × RenewInterval (8s - 2 × 2.67s) costs
		// nothing.
		time.Sleep(2500 * time.Millisecond)
		down.Lock()
		outage = false
		down.Unlock()
		for range 20 {
			time.Sleep(time.Second)
			mu.Lock()
			if !slices.Equal(ha, before) || slices.ContainsFunc(hb, func(s string) bool { return slices.Contains(before, s) }) {
				t.Errorf("after a 2.5s outage: a holds %v, b %v; want a to keep %v", ha, hb, before)
			}
			mu.Unlock()
		}
		cancel()
		wg.Wait()
	})
}

// faulty fails every call while down() says so.
type faulty struct {
	*table
	down func() bool
}

func (f *faulty) Leases(ctx context.Context, stream string, ids []string) ([]lease.Lease, error) {
	if f.down() {
		return nil, errDown
	}
	return f.table.Leases(ctx, stream, ids)
}

func (f *faulty) Create(ctx context.Context, stream, id, owner string, renewedAt time.Time) error {
	if f.down() {
		return errDown
	}
	return f.table.Create(ctx, stream, id, owner, renewedAt)
}

func (f *faulty) Update(ctx context.Context, stream, id string, cond lease.Cond, ch lease.Change) error {
	if f.down() {
		return errDown
	}
	return f.table.Update(ctx, stream, id, cond, ch)
}

func TestWritesWhoseAnswerWasLostAreRecognisedAsDone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := newTable()
		n := 0
		tb.fail = func(op string) (error, bool) {
			if op == "Leases" {
				return nil, false
			}
			n++
			if n%2 == 1 {
				return errDown, true // every other write lands but reports failure
			}
			return nil, false
		}
		m := newManager(t, tb, "a")
		shards := []string{"s0", "s1"}
		for range 30 {
			held, err := m.Sync(t.Context(), "st", shards)
			if err != nil || !slices.Equal(held, shards) {
				t.Fatalf("Sync = %v, %v; want both shards held throughout", held, err)
			}
			if err := m.Checkpoint(t.Context(), "st", "s0", shardflow.Checkpoint{ShardEnd: true}); err != nil {
				t.Fatalf("Checkpoint: %v", err)
			}
			time.Sleep(m.SyncInterval())
		}
		if err := m.Release(t.Context(), "st", "s1"); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if l := tb.items["st/s1"]; l.Owner != "" {
			t.Errorf("released lease still owned by %q", l.Owner)
		}
	})
}

func TestPermanentErrorsAreReturnedNotRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := newTable()
		calls := 0
		gone := errors.New("table deleted")
		tb.fail = func(string) (error, bool) { calls++; return retry.Permanent(gone), false }
		m := newManager(t, tb, "a")
		start := time.Now()
		_, err := m.Sync(t.Context(), "st", []string{"s0"})
		if !errors.Is(err, gone) || calls != 1 || time.Since(start) != 0 {
			t.Errorf("Sync = %v after %d calls and %v; want the permanent error at once", err, calls, time.Since(start))
		}
	})
}

func TestOptionsAreChecked(t *testing.T) {
	for _, o := range []lease.Options{
		{LeaseOptions: checkpoint.LeaseOptions{LeaseDuration: -1}},
		{LeaseOptions: checkpoint.LeaseOptions{LeaseDuration: 10 * time.Second, RenewInterval: 6 * time.Second}},
		{LeaseOptions: checkpoint.LeaseOptions{HandoffTimeout: -time.Second}},
		{LeaseOptions: checkpoint.LeaseOptions{MaxLeasesPerInstance: -1}},
	} {
		_, err := lease.New(newTable(), o)
		if _, ok := errors.AsType[*shardflow.ConfigError](err); !ok {
			t.Errorf("New(%+v) = %v; want a *shardflow.ConfigError", o, err)
		}
	}
	m := newManager(t, newTable(), "")
	o := m.Options()
	if o.Owner == "" || o.LeaseDuration != 8*time.Second || o.RenewInterval != o.LeaseDuration/3 || m.SyncInterval() != o.RenewInterval/2 {
		t.Errorf("defaults = %+v", o)
	}
}

// logs collects the messages of a logger, for tests of what was logged.
type logs struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, r.Message)
	return nil
}
func (l *logs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logs) WithGroup(string) slog.Handler      { return l }

func (l *logs) has(msg string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Contains(l.msgs, msg)
}

func newLoggedManager(t *testing.T, tb lease.Table, owner string) (*lease.Manager, *logs) {
	t.Helper()
	l := &logs{}
	m, err := lease.New(tb, lease.Options{Owner: owner, Logger: slog.New(l)})
	if err != nil {
		t.Fatal(err)
	}
	return m, l
}

// A write that the table applied but whose answer was lost, re-sent by
// someone else's retry (the SDK's retryer), fails its condition: the item
// already shows the change. That is no lost lease.
func TestAWriteThatLandedButWhoseResendFailedItsConditionKeepsTheLease(t *testing.T) {
	for _, op := range []string{"Create", "Update"} {
		t.Run(op, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tb := newTable()
				m, log := newLoggedManager(t, tb, "a")
				shards := []string{"s0"}
				if op == "Update" {
					// A free item: the take is an Update.
					tb.items["st/s0"] = &lease.Lease{ShardID: "s0", Counter: 5}
				}
				tb.fail = func(o string) (error, bool) {
					if o == op {
						tb.fail = nil
						return lease.ErrConflict, true // applied, then the re-send's answer
					}
					return nil, false
				}
				held, err := m.Sync(t.Context(), "st", shards)
				if err != nil || !slices.Equal(held, shards) {
					t.Fatalf("Sync = %v, %v; want s0 held", held, err)
				}
				if log.has("lease lost") {
					t.Errorf("logged \"lease lost\" although the table names this instance")
				}
				if err := m.Checkpoint(t.Context(), "st", "s0", shardflow.Checkpoint{SequenceNumber: "7"}); err != nil {
					t.Errorf("Checkpoint = %v; want it saved", err)
				}
			})
		})
	}
}

// A take that the table applied after its caller gave up on it (the
// context was cancelled) leaves an item naming this instance that it does
// not know it holds. The next Sync takes it back at once (bumping the
// counter), and the checkpoint and release work from there.
func TestATakeCancelledButAppliedIsTakenBackAtTheNextSync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := newTable()
		m, log := newLoggedManager(t, tb, "a")
		ctx, cancel := context.WithCancel(t.Context())
		tb.fail = func(op string) (error, bool) {
			if op == "Create" {
				cancel() // SIGTERM while the take is on the wire
				return context.Canceled, true
			}
			return nil, false
		}
		_, _ = m.Sync(ctx, "st", []string{"s0"})
		tb.fail = nil
		if l := tb.items["st/s0"]; l == nil || l.Owner != "a" || l.Counter != 1 {
			t.Fatalf("item = %+v after the cancelled take; the test needs it applied", l)
		}
		if held, err := m.Sync(t.Context(), "st", []string{"s0"}); err != nil || !slices.Equal(held, []string{"s0"}) {
			t.Fatalf("next Sync = %v, %v; want s0 taken back", held, err)
		}
		cp := shardflow.Checkpoint{SequenceNumber: "42"}
		if err := m.Checkpoint(t.Context(), "st", "s0", cp); err != nil {
			t.Errorf("Checkpoint = %v; want it saved", err)
		}
		if got := tb.cps["st/s0"]; got != cp {
			t.Errorf("checkpoint = %+v; want %+v", got, cp)
		}
		if err := m.Release(t.Context(), "st", "s0"); err != nil {
			t.Errorf("Release = %v", err)
		}
		if o := tb.items["st/s0"].Owner; o != "" {
			t.Errorf("lease still owned by %q after Release", o)
		}
		if log.has("lease lost") || !log.has("lease released") {
			t.Errorf("want \"lease released\" logged and no \"lease lost\"")
		}
	})
}

// A release that finds the lease taken by another instance says so; it does
// not claim to have released it.
func TestAReleaseOfALeaseTakenMeanwhileIsNotLoggedAsReleased(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := newTable()
		m, log := newLoggedManager(t, tb, "a")
		if held, err := m.Sync(t.Context(), "st", []string{"s0"}); err != nil || len(held) != 1 {
			t.Fatalf("first Sync = %v, %v", held, err)
		}
		tb.items["st/s0"].Owner, tb.items["st/s0"].Counter = "b", 9
		if err := m.Release(t.Context(), "st", "s0"); err != nil {
			t.Errorf("Release = %v; want nil: the lease is not this instance's", err)
		}
		if log.has("lease released") {
			t.Errorf("logged \"lease released\" for a lease b holds")
		}
		if o := tb.items["st/s0"].Owner; o != "b" {
			t.Errorf("owner = %q; want b's lease untouched", o)
		}
	})
}

// balanced reports whether the counts differ by at most one, and every
// shard is held.
func balanced(total int, held ...[]string) bool {
	lo, hi, sum := total, 0, 0
	for _, h := range held {
		lo, hi, sum = min(lo, len(h)), max(hi, len(h)), sum+len(h)
	}
	return sum == total && hi-lo <= 1
}

func TestAnInstanceThatLostEveryLeaseGetsItsShareBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		shared := newTable()
		var down sync.Mutex
		outage := false
		cTable := &faulty{table: shared, down: func() bool { down.Lock(); defer down.Unlock(); return outage }}
		a, b, c := newManager(t, shared, "a"), newManager(t, shared, "b"), newManager(t, cTable, "c")
		shards := []string{"s0", "s1", "s2", "s3"}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var mu sync.Mutex
		var ha, hb, hc []string
		var wg sync.WaitGroup
		wg.Go(func() { syncEvery(ctx, a, shards, &ha, &mu) })
		wg.Go(func() { syncEvery(ctx, b, shards, &hb, &mu) })
		wg.Go(func() { syncEvery(ctx, c, shards, &hc, &mu) })
		waitFor := func(what string, cond func() bool) {
			t.Helper()
			for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(time.Second) {
				mu.Lock()
				ok := cond()
				got := [][]string{ha, hb, hc}
				mu.Unlock()
				if ok {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: not within 5 minutes; a, b, c hold %v", what, got)
				}
			}
		}
		waitFor("balanced at start", func() bool { return balanced(4, ha, hb, hc) })
		down.Lock()
		outage = true
		down.Unlock()
		waitFor("c cut off loses every lease", func() bool { return len(hc) == 0 && len(ha)+len(hb) == 4 })
		time.Sleep(30 * time.Second)
		down.Lock()
		outage = false
		down.Unlock()
		waitFor("balanced after c is back", func() bool { return balanced(4, ha, hb, hc) })
		cancel()
		wg.Wait()
	})
}

// A release whose answer was lost, of a lease another instance took as soon
// as it was free, did what it was for: it is logged as released, not lost.
func TestAReleaseThatLandedUnheardIsNotALostLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := newTable()
		m, log := newLoggedManager(t, tb, "a")
		if held, err := m.Sync(t.Context(), "st", []string{"s0"}); err != nil || len(held) != 1 {
			t.Fatalf("first Sync = %v, %v", held, err)
		}
		lostOnce := errors.New("connection reset after the request was served")
		tb.fail = func(op string) (error, bool) {
			if op != "Update" {
				return nil, false
			}
			tb.fail = nil
			// The release lands and its answer is lost; b takes the free
			// lease before a's retry.
			go func() {
				tb.mu.Lock()
				defer tb.mu.Unlock()
				tb.items["st/s0"].Owner, tb.items["st/s0"].Counter = "b", tb.items["st/s0"].Counter+1
			}()
			return lostOnce, true
		}
		if err := m.Release(t.Context(), "st", "s0"); err != nil {
			t.Errorf("Release = %v; want nil", err)
		}
		if log.has("lease lost") {
			t.Errorf("logged \"lease lost\" for a release that landed")
		}
		if !log.has("lease released") {
			t.Errorf("did not log the release; logged %v", log.msgs)
		}
	})
}

func (f *faulty) Beat(ctx context.Context, m lease.Member, takeover bool) ([]lease.Member, error) {
	if f.down() {
		return nil, errDown
	}
	return f.table.Beat(ctx, m, takeover)
}

func (f *faulty) Members(ctx context.Context) ([]lease.Member, error) {
	if f.down() {
		return nil, errDown
	}
	return f.table.Members(ctx)
}

func (f *faulty) Remove(ctx context.Context, owner, inc string, beat int64) error {
	if f.down() {
		return errDown
	}
	return f.table.Remove(ctx, owner, inc, beat)
}

// slowTable takes 5ms (on the bubble's clock) for each lease it creates.
type slowTable struct{ *table }

func (t slowTable) Create(ctx context.Context, stream, id, owner string, renewedAt time.Time) error {
	time.Sleep(5 * time.Millisecond)
	return t.table.Create(ctx, stream, id, owner, renewedAt)
}

// A sync that takes many leases (here 2,000 at 5ms each: 10s, longer than
// the leases' validity) keeps the instance's heartbeat going, so that the
// others do not call it dead and take the leases it holds and reads.
func TestALongSyncKeepsTheHeartbeatGoing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		tb := slowTable{newTable()}
		a, b := newManager(t, tb, "a"), newManager(t, tb, "b")
		if held, err := a.Sync(ctx, "orders", []string{"o0"}); err != nil || len(held) != 1 {
			t.Fatalf("a.Sync(orders) = %v, %v", held, err)
		}
		var mu sync.Mutex
		var bHeld []string
		took := false
		done := make(chan struct{})
		go func() {
			defer close(done)
			for ctx.Err() == nil {
				held, _ := b.Sync(ctx, "orders", []string{"o0"})
				mu.Lock()
				bHeld = held
				took = took || slices.Contains(held, "o0")
				mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(b.SyncInterval()):
				}
			}
		}()
		clicks := make([]string, 2000)
		for i := range clicks {
			clicks[i] = fmt.Sprintf("c%04d", i)
		}
		start := time.Now()
		if held, err := a.Sync(ctx, "clicks", clicks); err != nil || len(held) == 0 {
			t.Fatalf("a.Sync(clicks) = %d shards, %v", len(held), err)
		}
		t.Logf("a's first sync of 2,000 shards took %v (virtual)", time.Since(start))
		// a still holds o0 (b may ask for it, to balance counts, but a
		// hands it over only at its next sync of orders).
		if err := a.Checkpoint(ctx, "orders", "o0", shardflow.Checkpoint{SequenceNumber: "9"}); err != nil {
			t.Errorf("a's checkpoint of o0 after its long sync: %v", err)
		}
		mu.Lock()
		if took {
			t.Errorf("b took o0 while a held and read it (b holds %v): a's heartbeat stopped during its long sync", bHeld)
		}
		mu.Unlock()
		cancel()
		<-done
	})
}

// Two live processes with one owner id never share a lease: once the newer
// took it over (bumping its counter), the older one's checkpoints are
// refused, also when its next sync comes before its refused heartbeat.
func TestAnOlderProcessWithTheSameOwnerIdNeverSharesALease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		tb := newTable()
		p1 := newManager(t, tb, "x")
		if held, err := p1.Sync(ctx, "st", []string{"a"}); err != nil || len(held) != 1 {
			t.Fatalf("p1.Sync = %v, %v", held, err)
		}
		if err := p1.Checkpoint(ctx, "st", "a", shardflow.Checkpoint{SequenceNumber: "1"}); err != nil {
			t.Fatal(err)
		}
		p2 := newManager(t, tb, "x")
		if held, err := p2.Sync(ctx, "st", []string{"a"}); err != nil || len(held) != 1 {
			t.Fatalf("p2.Sync = %v, %v", held, err)
		}
		// p1 syncs again (a shard was discovered) before its heartbeat is
		// due: it must not adopt p2's counter nor take the lease back.
		held, _ := p1.Sync(ctx, "st", []string{"a", "b"})
		if slices.Contains(held, "a") {
			t.Errorf("p1.Sync = %v after p2 took a over; want a gone", held)
		}
		if err := p1.Checkpoint(ctx, "st", "a", shardflow.Checkpoint{SequenceNumber: "5"}); !errors.Is(err, shardflow.ErrLeaseLost) {
			t.Errorf("p1's checkpoint after p2 took the lease over = %v; want ErrLeaseLost", err)
		}
		if err := p2.Checkpoint(ctx, "st", "a", shardflow.Checkpoint{SequenceNumber: "2"}); err != nil {
			t.Errorf("p2's checkpoint: %v", err)
		}
		if cp := tb.cps["st/a"]; cp.SequenceNumber != "2" {
			t.Errorf("checkpoint %q; want p2's 2", cp.SequenceNumber)
		}
	})
}

// syncStreams syncs m on every stream every SyncInterval until ctx ends,
// releasing what it is no longer told it holds (as the source does), and
// records how many leases it holds in all and how often one moved.
func syncStreams(ctx context.Context, m *lease.Manager, streams map[string][]string, mu *sync.Mutex, total *int, moves *int) {
	last := map[string][]string{}
	for ctx.Err() == nil {
		n := 0
		for stream, shards := range streams {
			held, err := m.Sync(ctx, stream, shards)
			if err != nil {
				held = last[stream]
			}
			for _, id := range last[stream] {
				if !slices.Contains(held, id) {
					_ = m.Release(ctx, stream, id)
					mu.Lock()
					*moves++
					mu.Unlock()
				}
			}
			last[stream] = held
			n += len(held)
		}
		mu.Lock()
		*total = n
		mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(m.SyncInterval()):
		}
	}
}

// Many small streams (here six of one shard) are divided between the
// instances too, though no stream alone has enough shards to move one;
// then no lease moves.
func TestCountsAreBalancedAcrossStreamsOfOneShard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		tb := newTable()
		streams := map[string][]string{}
		for i := range 6 {
			streams[fmt.Sprintf("s%d", i)] = []string{"shardId-0"}
		}
		var mu sync.Mutex
		totals, moves := make([]int, 3), 0
		var wg sync.WaitGroup
		for i := range 3 {
			m := newManager(t, tb, fmt.Sprintf("i%d", i))
			wg.Go(func() { syncStreams(ctx, m, streams, &mu, &totals[i], &moves) })
			if i == 0 {
				time.Sleep(time.Second) // i0 takes every stream's shard first
			}
		}
		balanced := func() bool {
			mu.Lock()
			defer mu.Unlock()
			return totals[0] == 2 && totals[1] == 2 && totals[2] == 2
		}
		start := time.Now()
		for !balanced() {
			if time.Since(start) > 5*time.Minute {
				mu.Lock()
				t.Fatalf("leases held by the three instances %v after 5 minutes; want 2 each", totals)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("balanced 2/2/2 across six 1-shard streams %v after the first instance took them all", time.Since(start))
		// Requests under way when it first balanced may still move a
		// lease or two; then none moves.
		mu.Lock()
		before, quiet := moves, time.Now()
		mu.Unlock()
		for time.Since(quiet) < time.Minute {
			if time.Since(start) > 10*time.Minute {
				t.Fatal("leases still moving 10 minutes after the start")
			}
			time.Sleep(100 * time.Millisecond)
			mu.Lock()
			if moves != before {
				before, quiet = moves, time.Now()
			}
			mu.Unlock()
		}
		time.Sleep(2 * time.Minute)
		mu.Lock()
		if moves != before || !(totals[0] == 2 && totals[1] == 2 && totals[2] == 2) {
			t.Errorf("after balancing: %d more moves, holdings %v; want none and 2 each", moves-before, totals)
		}
		mu.Unlock()
		cancel()
		wg.Wait()
	})
}

// MaxLeasesPerInstance caps what an instance holds in all streams.
func TestMaxLeasesPerInstanceCountsEveryStream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		tb := newTable()
		m, err := lease.New(tb, lease.Options{Owner: "a", LeaseOptions: checkpoint.LeaseOptions{MaxLeasesPerInstance: 2},
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		streams := map[string][]string{"s0": {"a", "b"}, "s1": {"a", "b"}, "s2": {"a", "b"}}
		var mu sync.Mutex
		total, moves := 0, 0
		done := make(chan struct{})
		go func() { defer close(done); syncStreams(ctx, m, streams, &mu, &total, &moves) }()
		time.Sleep(time.Minute)
		mu.Lock()
		if total != 2 {
			t.Errorf("the instance holds %d leases of three streams; want MaxLeasesPerInstance = 2", total)
		}
		mu.Unlock()
		cancel()
		<-done
	})
}
