package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/retry"
	"golang.org/x/sync/errgroup"
)

// Manager runs the lease algorithm for one instance. It is safe for
// concurrent use; Sync calls are serialized.
type Manager struct {
	t   Table
	o   Options
	me  string
	log atomic.Pointer[slog.Logger]

	syncMu sync.Mutex // one Sync at a time

	mu    sync.Mutex
	held  map[key]*held   // leases this instance holds (or is handing over)
	seen  map[key]seen    // what each lease looked like when it last changed
	wants map[string]want // by stream: the one lease this instance asked for
	// lost are the leases lost since the last Sync. Sync does not take
	// them back at once: it first returns without them, so that the
	// caller stops the shard's reader (whose position may be stale: the
	// checkpoint was reset, or another instance read on) before a new
	// reader starts from the table's checkpoint.
	lost map[key]bool
	// attrs are the metric attributes of each stream synced, made once.
	attrs map[string]streamAttrs

	meters meters // the lease metrics; has its own lock
}

type key struct{ stream, shard string }

// seen is when this instance, on its own monotonic clock, last saw a lease's
// owner or counter change.
type seen struct {
	owner   string
	counter int64
	at      time.Time
}

// want is this instance's outstanding request for a lease.
type want struct {
	shard string
	at    time.Time
}

// held is a lease this instance holds. io orders the writes of the lease
// (renew, checkpoint, release), so a checkpoint always carries the counter
// of the last renew; it guards every field.
type held struct {
	io      sync.Mutex
	counter int64     // the counter this instance last wrote
	renewed time.Time // when the last write proving the lease ours was sent
	gone    bool      // released or lost: no more writes
	// givingUp is when this instance stopped returning the lease (asked to
	// hand it over, shard no longer eligible, or not renewed in time); zero
	// while the lease is read.
	givingUp time.Time
	noRenew  bool // let it expire: not renewed any more
	// handingOver is set once another instance asked for the lease and
	// this one started to hand it over (counted as handed over); then a
	// later loss is not counted as lost.
	handingOver bool
	lossCounted bool // counted as lost: count it once
	// renewing is !gone && !noRenew, for the held gauge, which must not
	// wait for io (a write may hold it for a while).
	renewing atomic.Bool
}

// New returns the Manager of one instance. It fills in the defaults of o
// and checks it (see [Resolve]); a bad value is a *shardflow.ConfigError.
func New(t Table, o Options) (*Manager, error) {
	if err := o.resolve(); err != nil {
		return nil, err
	}
	m := &Manager{
		t: t, o: o, me: o.Owner,
		held:  make(map[key]*held),
		seen:  make(map[key]seen),
		wants: make(map[string]want),
		lost:  make(map[key]bool),
		attrs: make(map[string]streamAttrs),
	}
	m.meters.mp = o.MeterProvider
	m.log.Store(o.Logger)
	return m, nil
}

// SetLogger makes l the logger of lease changes and retried failures from
// now on. The store calls it when a pipeline hands it its logger.
func (m *Manager) SetLogger(l *slog.Logger) { m.log.Store(l) }

func (m *Manager) logger() *slog.Logger { return m.log.Load() }

// Owner returns this instance's owner id.
func (m *Manager) Owner() string { return m.me }

// Options returns the resolved options.
func (m *Manager) Options() Options { return m.o }

// SyncInterval is how often Sync must be called: half the renew interval, so
// that leases are renewed every RenewInterval and dead owners are noticed
// soon.
func (m *Manager) SyncInterval() time.Duration { return m.o.RenewInterval / 2 }

// LeaseDuration is how long a lease may go unrenewed before others take it.
func (m *Manager) LeaseDuration() time.Duration { return m.o.LeaseDuration }

// Sync renews this instance's leases of stream, takes free and expired
// ones, balances with other instances, and returns the eligible shards this
// instance holds and should read, sorted. See the package documentation.
//
// Transient table errors are retried within the call while this instance's
// leases are still valid. When the table cannot be read, Sync returns the
// error, unless a held lease went unrenewed for LeaseDuration: then it
// returns the leases still valid and a nil error, so that the caller stops
// reading the others.
func (m *Manager) Sync(ctx context.Context, stream string, eligible []string) ([]string, error) {
	m.syncMu.Lock()
	defer m.syncMu.Unlock()
	m.mu.Lock()
	m.attrsLocked(stream) // the held gauge reports every stream synced
	m.mu.Unlock()
	m.metrics()

	eligible = slices.Compact(slices.Sorted(slices.Values(eligible)))
	isEligible := make(map[string]bool, len(eligible))
	for _, id := range eligible {
		isEligible[id] = true
	}
	mine := m.heldOf(stream)
	fetch := slices.Clone(eligible)
	for id := range mine {
		if !isEligible[id] {
			fetch = append(fetch, id)
		}
	}

	until := time.Now().Add(m.SyncInterval())
	for _, h := range mine {
		h.io.Lock()
		if !h.gone && !h.noRenew {
			if v := h.renewed.Add(m.o.LeaseDuration); v.Before(until) {
				until = v
			}
		}
		h.io.Unlock()
	}
	due := m.due(mine) // renewals this sync must make
	var leases []Lease
	err := m.retryUntil(ctx, until, "read leases", func(ctx context.Context) error {
		var err error
		leases, err = m.t.Leases(ctx, stream, fetch)
		return err
	})
	if err != nil {
		if ctx.Err() == nil {
			m.count(ctx, stream, cRenewFailures, int64(due))
		}
		if ctx.Err() == nil && m.lapse(ctx, stream, mine, time.Now()) > 0 {
			m.logger().Warn("cannot read leases; giving up those not renewed for the lease duration",
				"stream", stream, "err", err)
			return m.active(mine, isEligible), nil
		}
		return nil, fmt.Errorf("read leases of stream %q: %w", stream, err)
	}
	now := time.Now()
	byShard := make(map[string]Lease, len(leases))
	for _, l := range leases {
		byShard[l.ShardID] = l
	}
	m.observe(stream, byShard, now)
	m.reconcile(ctx, stream, mine, byShard, isEligible, now)
	if err := m.renew(ctx, stream, mine); err != nil {
		return nil, err
	}
	m.lapse(ctx, stream, mine, time.Now())
	if err := m.balance(ctx, stream, eligible, byShard, m.takeLost(stream)); err != nil {
		return nil, err
	}
	return m.active(m.heldOf(stream), isEligible), nil
}

// heldOf returns this instance's leases of stream.
func (m *Manager) heldOf(stream string) map[string]*held {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]*held)
	for k, h := range m.held {
		if k.stream == stream {
			out[k.shard] = h
		}
	}
	return out
}

func (m *Manager) drop(stream, shard string, h *held) {
	m.mu.Lock()
	if m.held[key{stream, shard}] == h {
		delete(m.held, key{stream, shard})
	}
	m.mu.Unlock()
}

// takeLost returns the shards of stream whose leases were lost since the
// last call, and forgets them.
func (m *Manager) takeLost(stream string) map[string]bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]bool)
	for k := range m.lost {
		if k.stream == stream {
			out[k.shard] = true
			delete(m.lost, k)
		}
	}
	return out
}

// observe notes, on this instance's clock, which leases changed owner or
// counter since the last look.
func (m *Manager) observe(stream string, byShard map[string]Lease, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.seen {
		if _, ok := byShard[k.shard]; k.stream == stream && !ok {
			delete(m.seen, k)
		}
	}
	for id, l := range byShard {
		k := key{stream, id}
		if s, ok := m.seen[k]; !ok || s.owner != l.Owner || s.counter != l.Counter {
			m.seen[k] = seen{owner: l.Owner, counter: l.Counter, at: now}
		}
	}
}

func (m *Manager) expired(stream, shard string, now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.seen[key{stream, shard}]
	return ok && now.Sub(s.at) >= m.o.LeaseDuration
}

// reconcile compares the held leases with the table: a lease now owned by
// someone else was lost; a lease another instance asked for, or whose shard
// is no longer eligible, is given up.
func (m *Manager) reconcile(ctx context.Context, stream string, mine map[string]*held, byShard map[string]Lease, eligible map[string]bool, now time.Time) {
	for id, h := range mine {
		h.io.Lock()
		l, ok := byShard[id]
		switch {
		case h.gone:
		case !ok || l.Owner != m.me || l.Counter < h.counter:
			h.gone = true
			h.renewing.Store(false)
			m.noteLost(ctx, stream, id, l, h)
		default:
			// A write of ours whose answer was lost did land.
			h.counter = l.Counter
			if !h.givingUp.IsZero() {
				break
			}
			if l.Want != "" && l.Want != m.me {
				h.givingUp = now
				h.handingOver = true
				m.count(ctx, stream, cHandedOver, 1)
				m.logger().Info("handing lease over", "stream", stream, "shard_id", id, "to", l.Want)
			} else if !eligible[id] {
				h.givingUp = now
			}
		}
		if !h.givingUp.IsZero() && now.Sub(h.givingUp) >= m.o.HandoffTimeout {
			h.noRenew = true // let it expire
			h.renewing.Store(false)
		}
		if !h.givingUp.IsZero() && now.Sub(h.givingUp) >= m.o.HandoffTimeout+m.o.LeaseDuration {
			h.gone = true // the caller is long done with it
			h.renewing.Store(false)
		}
		gone := h.gone
		h.io.Unlock()
		if gone {
			m.drop(stream, id, h)
			delete(mine, id)
		}
	}
}

// renewLimit bounds the concurrent renew writes of one Sync.
const renewLimit = 16

// renew bumps the counter of every held lease last renewed about a
// RenewInterval ago. Each renew retries transient errors until the lease
// would expire. It returns only errors that retrying cannot fix.
func (m *Manager) renew(ctx context.Context, stream string, mine map[string]*held) error {
	var g errgroup.Group
	g.SetLimit(renewLimit)
	var mu sync.Mutex
	var errs []error
	failed := 0 // renewals that failed with an error, not a conflict
	due := m.renewDue()
	for id, h := range mine {
		g.Go(func() error {
			h.io.Lock()
			defer h.io.Unlock()
			if h.gone || h.noRenew || time.Since(h.renewed) < due {
				return nil
			}
			var sent time.Time
			l, err := m.write(ctx, stream, id, h.renewed.Add(m.o.LeaseDuration),
				Cond{Owner: m.me, Counter: h.counter}, Change{Bump: true}, &sent)
			switch {
			case err == nil:
				h.counter = l.Counter
				h.renewed = sent
			case errors.Is(err, ErrConflict):
				h.gone = true
				h.renewing.Store(false)
				m.noteLost(ctx, stream, id, l, h)
			case retry.IsPermanent(err):
				mu.Lock()
				failed++
				errs = append(errs, fmt.Errorf("renew lease of shard %s: %w", id, err))
				mu.Unlock()
			default:
				mu.Lock()
				failed++
				mu.Unlock()
				m.logger().Warn("lease not renewed; retrying at the next sync", "stream", stream, "shard_id", id, "err", err)
			}
			return nil
		})
	}
	_ = g.Wait()
	m.count(ctx, stream, cRenewFailures, int64(failed))
	for id, h := range mine {
		h.io.Lock()
		gone := h.gone
		h.io.Unlock()
		if gone {
			m.drop(stream, id, h)
			delete(mine, id)
		}
	}
	return errors.Join(errs...)
}

// renewDue is how long after its last renewal a lease is renewed: on every
// other sync; a sync run in between (the source also syncs after each shard
// discovery) renews only if a tick is late.
func (m *Manager) renewDue() time.Duration { return m.o.RenewInterval - m.SyncInterval()/4 }

// due returns how many of the held leases are due for a renewal.
func (m *Manager) due(mine map[string]*held) int {
	n := 0
	for _, h := range mine {
		h.io.Lock()
		if !h.gone && !h.noRenew && time.Since(h.renewed) >= m.renewDue() {
			n++
		}
		h.io.Unlock()
	}
	return n
}

// lapse gives up the held leases not renewed for LeaseDuration: others may
// have taken them. It returns how many it gave up now, and counts them
// lost unless they were being handed over.
func (m *Manager) lapse(ctx context.Context, stream string, mine map[string]*held, now time.Time) int {
	n, lostNow := 0, 0
	for id, h := range mine {
		h.io.Lock()
		if !h.gone && !h.noRenew && now.Sub(h.renewed) >= m.o.LeaseDuration {
			h.noRenew = true
			h.renewing.Store(false)
			if h.givingUp.IsZero() {
				h.givingUp = now
			}
			n++
			if !h.handingOver && !h.lossCounted {
				h.lossCounted = true
				lostNow++
			}
			m.logger().Warn("lease not renewed for the lease duration; giving it up", "stream", stream, "shard_id", id)
		}
		h.io.Unlock()
	}
	m.count(ctx, stream, cLost, int64(lostNow))
	return n
}

// active returns the eligible shards whose leases are held and not being
// given up, sorted.
func (m *Manager) active(mine map[string]*held, eligible map[string]bool) []string {
	var out []string
	for id, h := range mine {
		h.io.Lock()
		if !h.gone && h.givingUp.IsZero() && eligible[id] {
			out = append(out, id)
		}
		h.io.Unlock()
	}
	slices.Sort(out)
	return out
}

// candidate is a lease this instance may take.
type candidate struct {
	shard  string
	lease  Lease
	exists bool
}

// balance takes free and expired leases up to the target and, when still
// below it, asks the busiest instance for one lease if that one holds at
// least two more than this one.
func (m *Manager) balance(ctx context.Context, stream string, eligible []string, byShard map[string]Lease, lost map[string]bool) error {
	now := time.Now()
	mine := m.heldOf(stream)
	have := len(m.active(mine, mapOf(eligible)))
	counts := make(map[string]int)    // other live instances' leases
	owned := make(map[string][]Lease) // their leases nobody asked for yet
	var wanted, free []candidate      // free ones handed to me first
	for _, id := range eligible {
		if mine[id] != nil || lost[id] {
			continue // mine, being handed over by me, or just lost
		}
		l, ok := byShard[id]
		if !ok {
			free = append(free, candidate{shard: id})
			continue
		}
		expired := m.expired(stream, id, now)
		switch {
		case l.Owner == "" && l.Want == m.me:
			wanted = append(wanted, candidate{id, l, true})
		case l.Owner == "" && (l.Want == "" || expired):
			free = append(free, candidate{id, l, true})
		case l.Owner == "":
			// Handed to another instance: leave it to that one for now.
		case expired:
			free = append(free, candidate{id, l, true})
		default:
			owner := l.Owner
			if owner == m.me {
				owner = "\x00" + m.me // an earlier process with this id
			}
			counts[owner]++
			if l.Want == "" {
				owned[owner] = append(owned[owner], l)
			}
		}
	}
	target := (len(eligible) + len(counts)) / (len(counts) + 1) // ceil
	rand.Shuffle(len(free), func(i, j int) { free[i], free[j] = free[j], free[i] })
	var errs []error
	for _, c := range append(wanted, free...) {
		if have >= target && c.lease.Want != m.me {
			break
		}
		ok, err := m.take(ctx, stream, c)
		if err != nil {
			if retry.IsPermanent(err) {
				errs = append(errs, err)
			} else {
				m.logger().Warn("lease not taken; retrying at the next sync", "stream", stream, "shard_id", c.shard, "err", err)
			}
			continue
		}
		if ok {
			have++
		}
	}

	m.mu.Lock()
	w, asked := m.wants[stream]
	if asked {
		l, ok := byShard[w.shard]
		if mine[w.shard] != nil || !ok || l.Want != m.me || now.Sub(w.at) >= m.o.HandoffTimeout+m.o.LeaseDuration {
			delete(m.wants, stream)
			asked = false
		}
	}
	m.mu.Unlock()
	if asked || have >= target {
		return errors.Join(errs...)
	}
	// Ask an instance holding at least two more than this one: moving one
	// lease narrows the spread. "Above target" alone is not enough: with
	// four shards and three instances the target is two, and 2/2/0 would
	// pass for balanced, leaving an instance that lost its leases (cut off
	// from the table for a while) idle for good.
	busiest := ""
	for owner, n := range counts {
		if n >= have+2 && len(owned[owner]) > 0 && (busiest == "" || n > counts[busiest] || n == counts[busiest] && owner < busiest) {
			busiest = owner
		}
	}
	if busiest == "" {
		return errors.Join(errs...)
	}
	ls := owned[busiest]
	l := ls[rand.IntN(len(ls))]
	_, err := m.write(ctx, stream, l.ShardID, time.Now().Add(m.SyncInterval()),
		Cond{Owner: l.Owner, Counter: l.Counter, Want: ptr("")}, Change{Want: ptr(m.me)}, nil)
	switch {
	case err == nil:
		m.mu.Lock()
		m.wants[stream] = want{shard: l.ShardID, at: now}
		m.mu.Unlock()
		m.logger().Info("asked for a lease", "stream", stream, "shard_id", l.ShardID, "from", l.Owner,
			"held", have, "target", target)
	case errors.Is(err, ErrConflict):
	case retry.IsPermanent(err):
		errs = append(errs, err)
	default:
		m.logger().Warn("lease request not written; retrying at the next sync", "stream", stream, "shard_id", l.ShardID, "err", err)
	}
	return errors.Join(errs...)
}

func mapOf(ids []string) map[string]bool {
	out := make(map[string]bool, len(ids))
	for _, id := range ids {
		out[id] = true
	}
	return out
}

// take takes a free or expired lease, or creates the lease of a shard that
// has none. It reports whether this instance now holds it.
func (m *Manager) take(ctx context.Context, stream string, c candidate) (bool, error) {
	var sent time.Time
	var l Lease
	var err error
	until := time.Now().Add(m.SyncInterval())
	if !c.exists {
		l, err = m.create(ctx, stream, c.shard, until, &sent)
	} else {
		l, err = m.write(ctx, stream, c.shard, until,
			Cond{Owner: c.lease.Owner, Counter: c.lease.Counter}, Change{Owner: ptr(m.me), Bump: true, Want: ptr("")}, &sent)
	}
	if errors.Is(err, ErrConflict) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("take lease of shard %s: %w", c.shard, err)
	}
	m.mu.Lock()
	h := &held{counter: l.Counter, renewed: sent}
	h.renewing.Store(true)
	m.held[key{stream, c.shard}] = h
	m.mu.Unlock()
	if c.exists && c.lease.Owner == "" && c.lease.Want == m.me {
		m.count(ctx, stream, cStolen, 1) // handed to this instance, which asked
	} else {
		m.count(ctx, stream, cTaken, 1)
	}
	from := "nobody"
	if c.lease.Owner != "" {
		from = c.lease.Owner + " (expired)"
	}
	m.logger().Info("lease taken", "stream", stream, "shard_id", c.shard, "from", from)
	return true, nil
}

// Release gives up this instance's lease of a shard, keeping the shard's
// checkpoint. Releasing a lease not held (or found taken by another
// instance) is not an error, and is not logged as released. If the write
// fails, Release returns the error and the lease is left to expire.
func (m *Manager) Release(ctx context.Context, stream, shard string) error {
	m.mu.Lock()
	h := m.held[key{stream, shard}]
	m.mu.Unlock()
	if h == nil {
		return nil
	}
	h.io.Lock()
	defer h.io.Unlock()
	defer m.drop(stream, shard, h)
	if h.gone {
		return nil
	}
	h.gone = true
	h.renewing.Store(false)
	l, uncertain, err := m.writeUncertain(ctx, stream, shard, time.Now().Add(m.SyncInterval()),
		Cond{Owner: m.me, Counter: h.counter}, Change{Owner: ptr(""), Bump: true}, nil)
	switch {
	case errors.Is(err, ErrConflict) && uncertain && l.Owner != m.me:
		// An attempt whose answer was lost freed the lease, and another
		// instance has taken it since: the release did what it was for.
		m.logger().Info("lease released", "stream", stream, "shard_id", shard,
			"taken_since_by", l.Owner, "lease_counter", l.Counter)
		return nil
	case errors.Is(err, ErrConflict):
		m.noteLost(ctx, stream, shard, l, h)
		return nil
	case err != nil:
		return fmt.Errorf("release lease of shard %s of stream %q: %w", shard, stream, err)
	}
	m.logger().Info("lease released", "stream", stream, "shard_id", shard, "lease_counter", l.Counter)
	return nil
}

// Checkpoint saves cp as the shard's checkpoint if this instance still holds
// the shard's lease (the item has this owner and the counter it last
// wrote), and otherwise fails with an error wrapping
// [shardflow.ErrLeaseLost]. Transient errors are retried briefly.
func (m *Manager) Checkpoint(ctx context.Context, stream, shard string, cp shardflow.Checkpoint) error {
	m.mu.Lock()
	h := m.held[key{stream, shard}]
	m.mu.Unlock()
	if h == nil {
		return fmt.Errorf("shard %s of stream %q is not leased by %s: %w", shard, stream, m.me, shardflow.ErrLeaseLost)
	}
	h.io.Lock()
	defer h.io.Unlock()
	if h.gone {
		return fmt.Errorf("lease of shard %s of stream %q was released or lost: %w", shard, stream, shardflow.ErrLeaseLost)
	}
	l, err := m.write(ctx, stream, shard, time.Now().Add(m.SyncInterval()),
		Cond{Owner: m.me, Counter: h.counter}, Change{Checkpoint: &cp}, nil)
	switch {
	case errors.Is(err, ErrConflict):
		h.gone = true
		h.renewing.Store(false)
		m.drop(stream, shard, h)
		m.noteLost(ctx, stream, shard, l, h)
		return fmt.Errorf("shard %s of stream %q is no longer leased by %s: %w", shard, stream, m.me, shardflow.ErrLeaseLost)
	case err == nil:
		h.counter = l.Counter
	}
	return err
}

// noteLost logs the loss of lease h, with what the table holds instead (l,
// the zero Lease when the item is gone), counts it lost unless it was being
// handed over (or was counted already), and keeps the next Sync from taking
// it back. Called with h.io held.
func (m *Manager) noteLost(ctx context.Context, stream, shard string, l Lease, h *held) {
	m.mu.Lock()
	m.lost[key{stream, shard}] = true
	m.mu.Unlock()
	if !h.handingOver && !h.lossCounted {
		h.lossCounted = true
		m.count(ctx, stream, cLost, 1)
	}
	m.logger().Info("lease lost", "stream", stream, "shard_id", shard, "owner", l.Owner, "lease_counter", l.Counter)
}

// Holds reports the shards of stream this instance holds, for tests.
func (m *Manager) Holds(stream string) []string {
	var out []string
	for id, h := range m.heldOf(stream) {
		h.io.Lock()
		if !h.gone {
			out = append(out, id)
		}
		h.io.Unlock()
	}
	slices.Sort(out)
	return out
}

// write is Table.Update retried until it succeeds, fails for good, or until
// passes. It returns the item's owner and counter after the write.
//
// A write that fails its condition is not taken at its word: an earlier
// attempt whose answer was lost (a timeout, a connection reset, a cancelled
// context, or a retry by the DynamoDB client itself) may have changed the
// item. write re-reads the item and decides from what the table holds (see
// settle).
//
// sent is not nil for the writes that prove the lease this instance's (take,
// renew): each attempt then writes the time it is sent as the lease's
// renewal time (Change.RenewedAt), and sent gets the time of the successful
// attempt. (When an earlier attempt whose answer was lost is found to have
// landed, the table holds that attempt's earlier time: the expiry operators
// derive from it errs early, never late.)
//
// On ErrConflict the returned Lease is the item as read (zero if it is
// gone), for the log.
func (m *Manager) write(ctx context.Context, stream, shard string, until time.Time, cond Cond, ch Change, sent *time.Time) (Lease, error) {
	l, _, err := m.writeUncertain(ctx, stream, shard, until, cond, ch, sent)
	return l, err
}

// writeUncertain is write that also reports whether an attempt failed with
// its outcome unknown (a reset, a timeout): such an attempt may have been
// applied.
func (m *Manager) writeUncertain(ctx context.Context, stream, shard string, until time.Time, cond Cond, ch Change, sent *time.Time) (Lease, bool, error) {
	var seen Lease
	uncertain := false
	err := m.retryUntil(ctx, until, "lease write of shard "+shard, func(ctx context.Context) error {
		for adopted := false; ; adopted = true {
			if sent != nil {
				*sent = time.Now()
				ch.RenewedAt = *sent
			}
			err := m.t.Update(ctx, stream, shard, cond, ch)
			if err != nil && !errors.Is(err, ErrConflict) {
				uncertain = true
			}
			if !errors.Is(err, ErrConflict) {
				return err
			}
			v, l, err := m.settle(ctx, stream, shard, cond, ch)
			if err != nil {
				return err
			}
			seen = l
			switch {
			case v == landed:
				return nil
			case v == adopt && !adopted:
				m.logger().Info("a lease write whose answer was lost did land; going on from the table's counter",
					"stream", stream, "shard_id", shard, "lease_counter", l.Counter)
				cond.Counter = l.Counter
				continue
			}
			return ErrConflict
		}
	})
	if err != nil {
		return seen, uncertain, err
	}
	return after(cond, ch), uncertain, nil
}

// create is Table.Create retried like write, each attempt writing the time
// it is sent as the renewal time.
func (m *Manager) create(ctx context.Context, stream, shard string, until time.Time, sent *time.Time) (Lease, error) {
	cond, ch := Cond{}, Change{Owner: ptr(m.me), Bump: true} // what Create does
	var seen Lease
	err := m.retryUntil(ctx, until, "lease creation of shard "+shard, func(ctx context.Context) error {
		*sent = time.Now()
		err := m.t.Create(ctx, stream, shard, m.me, *sent)
		if !errors.Is(err, ErrConflict) {
			return err
		}
		v, l, err := m.settle(ctx, stream, shard, cond, ch)
		if err != nil {
			return err
		}
		seen = l
		if v == landed {
			return nil
		}
		return ErrConflict
	})
	if err != nil {
		return seen, err
	}
	return after(cond, ch), nil
}

// verdict is what settle makes of a write that failed its condition.
type verdict int

const (
	// refused: the item is another's, or gone; the write did not happen.
	refused verdict = iota
	// landed: the item shows the write: an attempt whose answer was lost
	// applied it.
	landed
	// adopt: the write expected this instance as owner, and the item names
	// it with a later counter: an earlier write of its own (a renewal whose
	// answer was lost) landed. Write again from the item's counter.
	adopt
)

// settle reads the item (strongly consistent) after a write of ch over cond
// failed its condition, and says what happened. An error means the item
// could not be read: the outcome is still unknown.
func (m *Manager) settle(ctx context.Context, stream, shard string, cond Cond, ch Change) (verdict, Lease, error) {
	ls, err := m.t.Leases(ctx, stream, []string{shard})
	if err != nil {
		return refused, Lease{}, fmt.Errorf("re-read lease after a refused write: %w", err)
	}
	if len(ls) != 1 {
		return refused, Lease{}, nil
	}
	l := ls[0]
	want := after(cond, ch)
	// A write that changes no owner, counter or want (a checkpoint) leaves
	// no trace to recognise it by.
	visible := ch.Owner != nil || ch.Bump || ch.Want != nil
	switch {
	case visible && l.Owner == want.Owner && l.Counter == want.Counter && (ch.Want == nil || l.Want == *ch.Want):
		return landed, l, nil
	case cond.Owner == m.me && l.Owner == m.me && l.Counter >= cond.Counter:
		return adopt, l, nil
	}
	return refused, l, nil
}

// after is the owner and counter of an item after ch was written over cond.
func after(cond Cond, ch Change) Lease {
	l := Lease{Owner: cond.Owner, Counter: cond.Counter}
	if ch.Owner != nil {
		l.Owner = *ch.Owner
	}
	if ch.Bump {
		l.Counter++
	}
	return l
}

// errWindowEnded is the cause of the end of a lease write's retries: the
// lease it protects (or the sync it belongs to) is past the time it could
// still help.
var errWindowEnded = errors.New("lease retry window ended")

// retryUntil calls op until it succeeds, returns ErrConflict or a permanent
// error, or until passes (it always calls op at least once), through
// retry.Do. The retries stay within the lease they protect rather than the
// store's outage budget: a renewal retried past the lease's expiry is
// pointless. Each attempt gets a context ending at until (or at least a
// quarter of interval from now), so a hung call cannot outlast the lease
// either. what names the operation in the Warn log of each retry.
func (m *Manager) retryUntil(ctx context.Context, until time.Time, what string, op func(context.Context) error) error {
	interval := m.o.RenewInterval
	attempt := func() error {
		deadline := until
		if floor := time.Now().Add(interval / 4); deadline.Before(floor) {
			deadline = floor
		}
		actx, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		err := op(actx)
		if errors.Is(err, ErrConflict) || ctx.Err() != nil {
			return retry.Permanent(err)
		}
		return err
	}
	err := attempt()
	if err == nil || retry.IsPermanent(err) {
		return unmark(err)
	}
	// The waits end at until: no attempt starts after it.
	wctx, cancel := context.WithDeadlineCause(ctx, until, errWindowEnded)
	defer cancel()
	maxWait := min(time.Second, interval/4)
	p := retry.Policy{InitialInterval: min(50*time.Millisecond, maxWait), MaxInterval: maxWait, Multiplier: 2,
		MaxElapsed: time.Until(until)}
	err = retry.Do(wctx, p, err, attempt, func(n int, err error, wait time.Duration) {
		m.logger().Warn(what+" failed; retrying", "attempt", n, "wait", wait, "err", err)
	})
	return unmark(err)
}

// unmark returns ErrConflict itself for a refused write, so that callers
// tell it from a permanent failure of the table.
func unmark(err error) error {
	if errors.Is(err, ErrConflict) {
		return ErrConflict
	}
	return err
}
