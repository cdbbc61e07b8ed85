package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint"
	"github.com/shardflow/shardflow/internal/retry"
)

// Manager runs the lease algorithm for one instance. It is safe for
// concurrent use; Sync calls are serialized.
type Manager struct {
	t   Table
	o   Options
	me  string
	inc string // this process's incarnation
	log atomic.Pointer[slog.Logger]

	syncMu sync.Mutex // one Sync (or Leave) at a time

	mu    sync.Mutex
	held  map[key]*held   // leases this instance holds (or is handing over)
	seen  map[key]seen    // what each lease looked like when it last changed
	wants map[string]want // by stream: the leases this instance asked for
	// lost are the leases lost since the last Sync. Sync does not take
	// them back at once: it first returns without them, so that the
	// caller stops the shard's reader (whose position may be stale: the
	// checkpoint was reset, or another instance read on) before a new
	// reader starts from the table's checkpoint.
	lost map[key]bool
	// attrs are the metric attributes of each stream synced, made once.
	attrs map[string]streamAttrs

	// The heartbeat, guarded by mu.
	beatN     int64            // the counter of the last heartbeat written
	beaten    bool             // a heartbeat of this incarnation landed
	lastBeat  time.Time        // when the last successful heartbeat was sent
	readAt    time.Time        // when the heartbeat item was last read
	peers     map[string]*peer // the other members, by owner
	memberVer int64            // bumped when a member joins, leaves or expires
	taken     error            // the owner id was taken over: every Sync fails with it
	streams   map[string]*streamState
	warned    map[string]bool // warnings logged once
	// gaveUp holds, by lease, the counter of each lease this instance
	// gave up without writing (its heartbeat lapsed, or came late): an
	// item still naming it with that counter was taken by nobody since,
	// and is taken back at once.
	gaveUp map[key]int64

	loads sync.Map // key → *load, fed by RecordLoad

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

// want is this instance's outstanding request for leases of one owner.
type want struct {
	from   string
	shards []string
	at     time.Time
}

// peer is another member as this instance sees it.
type peer struct {
	m      Member
	seenAt time.Time // when its heartbeat counter (or incarnation) last changed
	live   bool      // its heartbeat changed within validity() of the last read
}

// streamState is what the Manager keeps of one stream between Syncs.
type streamState struct {
	cache     map[string]Lease // the lease items as last read, with this instance's writes
	read      time.Time        // when they were last read in full
	memberVer int64            // Manager.memberVer at that read
	eligible  []string         // the eligible shards at that read
	stale     bool             // read in full at the next Sync
	nextRead  time.Time        // when a lease owned by a non-member may expire
	stole     time.Time        // when this instance last took a lease it asked for
	synced    bool             // a Sync of the stream ran to its end
}

// held is a lease this instance holds. io orders the writes of the lease
// (take, checkpoint, release), so a checkpoint always carries the counter
// of the last take; it guards every field.
type held struct {
	io      sync.Mutex
	counter int64 // the counter this instance last wrote
	gone    bool  // released or lost: no more writes
	// givingUp is when this instance stopped returning the lease (asked to
	// hand it over, or shard no longer eligible); zero while the lease is
	// read.
	givingUp time.Time
	// to is the instance that asked for the lease; a release hands the
	// lease to it (the item's want).
	to string
	// handingOver is set once another instance asked for the lease and
	// this one started to hand it over (counted as handed over); then a
	// later loss is not counted as lost.
	handingOver bool
	lossCounted bool // counted as lost: count it once
	// renewing is !gone, for the held gauge, which must not wait for io (a
	// write may hold it for a while).
	renewing atomic.Bool
}

// New returns the Manager of one instance. It fills in the defaults of o
// and checks it (see [Resolve]); a bad value is a *shardflow.ConfigError.
func New(t Table, o Options) (*Manager, error) {
	if err := o.resolve(); err != nil {
		return nil, err
	}
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never returns an error
	m := &Manager{
		t: t, o: o, me: o.Owner, inc: hex.EncodeToString(b[:]),
		held:    make(map[key]*held),
		seen:    make(map[key]seen),
		wants:   make(map[string]want),
		lost:    make(map[key]bool),
		attrs:   make(map[string]streamAttrs),
		peers:   make(map[string]*peer),
		streams: make(map[string]*streamState),
		warned:  make(map[string]bool),
		gaveUp:  make(map[key]int64),
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

// Incarnation returns this process's incarnation: random, written in its
// heartbeat entry.
func (m *Manager) Incarnation() string { return m.inc }

// Options returns the resolved options.
func (m *Manager) Options() Options { return m.o }

// SyncInterval is how often Sync must be called: half the renew interval, so
// that the heartbeat is written every RenewInterval and dead members are
// noticed soon.
func (m *Manager) SyncInterval() time.Duration { return m.o.RenewInterval / 2 }

// LeaseDuration is the most time between a member's last heartbeat and
// the moment others may take its leases.
func (m *Manager) LeaseDuration() time.Duration { return m.o.LeaseDuration }

// validity is how long after its last successful heartbeat (when it was
// sent) an instance holds its leases, and how long after they last saw a
// member's heartbeat change the others wait before taking its leases:
// LeaseDuration less one RenewInterval. An observer sees a heartbeat at
// its own next heartbeat, up to a RenewInterval after it was written, so
// the others take the leases at most LeaseDuration (plus a sync interval
// to notice) after the last heartbeat, and never before its writer gave
// them up.
func (m *Manager) validity() time.Duration { return m.o.LeaseDuration - m.o.RenewInterval }

// Sync writes this instance's heartbeat when due, takes free and expired
// leases of stream, balances with other instances, and returns the
// eligible shards this instance holds and should read, sorted. See the
// package documentation.
//
// Transient table errors are retried within the call while this instance's
// leases are still valid. When the heartbeat cannot be written, Sync
// returns the error, unless none succeeded for LeaseDuration less one
// RenewInterval: then it gives
// up every lease and returns a nil error and no shards, so that the caller
// stops reading them. When another process took over this instance's owner
// id, Sync gives up every lease without writing and fails, now and on every
// later call, with a permanent error wrapping a
// *checkpoint.OwnerConflictError.
func (m *Manager) Sync(ctx context.Context, stream string, eligible []string) ([]string, error) {
	m.syncMu.Lock()
	defer m.syncMu.Unlock()
	m.mu.Lock()
	m.attrsLocked(stream) // the held gauge reports every stream synced
	taken := m.taken
	st := m.streams[stream]
	if st == nil {
		st = &streamState{}
		m.streams[stream] = st
	}
	m.mu.Unlock()
	m.metrics()
	if taken != nil {
		return nil, taken
	}

	eligible = slices.Compact(slices.Sorted(slices.Values(eligible)))
	isEligible := mapOf(eligible)

	// The heartbeat: one per instance, whichever stream finds it due.
	if err := m.heartbeat(ctx, stream, false); err != nil {
		if errors.Is(err, checkpoint.ErrOwnerTaken) {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, err
		}
		if m.lapse(ctx, time.Now()) {
			m.logger().Warn("heartbeat failing for the lease duration; gave up every lease", "err", err)
			return nil, nil
		}
		return nil, fmt.Errorf("lease heartbeat: %w", err)
	}
	m.forgetDead(ctx, time.Now())
	// A member whose heartbeat would have expired by now is checked at
	// once with one read of the heartbeat item, instead of at the next
	// heartbeat.
	if m.suspect(time.Now()) {
		if err := m.readMembers(ctx); err != nil && ctx.Err() == nil {
			m.logger().Warn("cannot read the heartbeat item; retrying at the next sync", "err", err)
		}
	}

	mine := m.heldOf(stream)
	if err := m.refresh(ctx, stream, st, eligible, mine); err != nil {
		return nil, fmt.Errorf("read leases of stream %q: %w", stream, err)
	}
	now := time.Now()
	release := m.reconcile(ctx, stream, st, mine, isEligible, now)
	for _, id := range release {
		// Asked for (or no longer eligible) for HandoffTimeout: free it,
		// so that a stuck reader does not keep it from the instance that
		// asked; the reader's later checkpoints are refused.
		m.logger().Warn("lease not released within the handoff timeout; freeing it", "stream", stream, "shard_id", id)
		if err := m.Release(ctx, stream, id); err != nil {
			m.logger().Warn("lease not freed; retrying at the next sync", "stream", stream, "shard_id", id, "err", err)
		}
	}
	asked, err := m.balance(ctx, stream, st, eligible, m.takeLost(stream))
	if err != nil {
		return nil, err
	}
	if asked {
		// Publish the request now rather than at the next heartbeat.
		if err := m.heartbeat(ctx, stream, true); err != nil && errors.Is(err, checkpoint.ErrOwnerTaken) {
			return nil, err
		}
	}
	m.mu.Lock()
	st.synced = true
	m.mu.Unlock()
	return m.active(m.heldOf(stream), isEligible), nil
}

// beatDue is how long after the last heartbeat the next is due: on every
// other sync; a sync run in between (the source also syncs after each shard
// discovery) beats only if a tick is late.
func (m *Manager) beatDue() time.Duration { return m.o.RenewInterval - m.SyncInterval()/4 }

// heartbeat writes this instance's entry in the heartbeat item when due (or
// now, when force is set), and takes in every member's entry from the
// answer. On a conflict (another process took the owner id over) it gives
// up every lease and returns the permanent owner error.
func (m *Manager) heartbeat(ctx context.Context, stream string, force bool) error {
	m.mu.Lock()
	if !force && m.beaten && time.Since(m.lastBeat) < m.beatDue() {
		m.mu.Unlock()
		return nil
	}
	entry := Member{Owner: m.me, Inc: m.inc, Beat: m.beatN + 1, Streams: m.publishLocked(time.Now())}
	takeover := !m.beaten
	// Retried within this sync, and never past the leases' validity: the
	// next sync tries again.
	until := time.Now().Add(m.SyncInterval())
	switch {
	case !m.beaten:
		// Nothing held yet (or left): no lease to protect, a longer try.
		until = time.Now().Add(m.o.RenewInterval)
	case m.lastBeat.Add(m.validity()).Before(until):
		until = m.lastBeat.Add(m.validity())
	}
	m.mu.Unlock()

	var sent time.Time
	var ms []Member
	err := m.retryUntil(ctx, until, "heartbeat", func(ctx context.Context) error {
		sent = time.Now()
		entry.RenewedAt = sent
		var err error
		ms, err = m.t.Beat(ctx, entry, takeover)
		return err
	})
	if errors.Is(err, ErrConflict) {
		return m.surrender(ctx)
	}
	if err != nil {
		if ctx.Err() == nil {
			m.count(ctx, stream, cRenewFailures, 1)
		}
		return err
	}
	m.mu.Lock()
	// The previous heartbeat's leases ran out before this one was sent
	// (a sync of many leases, a pause of the process): others may have
	// taken any of them meanwhile. Give them all up; those nobody took
	// are taken back at once (gaveUp).
	late := m.beaten && sent.Sub(m.lastBeat) >= m.validity()
	gap := sent.Sub(m.lastBeat)
	m.beatN, m.beaten, m.lastBeat = entry.Beat, true, sent
	m.mu.Unlock()
	m.observeMembers(ms, time.Now())
	if late && m.giveUpAll(ctx) > 0 {
		m.logger().Warn("heartbeat came later than the leases' validity; gave up every lease to take back those nobody took",
			"since_last", gap.Round(time.Millisecond), "validity", m.validity())
	}
	return nil
}

// surrender gives up every lease without writing, after another process
// took over this instance's owner id, and returns the error every later
// Sync fails with.
func (m *Manager) surrender(ctx context.Context) error {
	err := retry.Permanent(&checkpoint.OwnerConflictError{Owner: m.me})
	m.mu.Lock()
	m.taken = err
	hs := make(map[key]*held, len(m.held))
	for k, h := range m.held {
		hs[k] = h
	}
	m.mu.Unlock()
	m.logger().Error("another process took over this instance's owner id and its leases; giving up every lease",
		"owner", m.me, "incarnation", m.inc)
	for k, h := range hs {
		h.io.Lock()
		if !h.gone {
			h.gone = true
			h.renewing.Store(false)
			if !h.handingOver && !h.lossCounted {
				h.lossCounted = true
				m.count(ctx, k.stream, cLost, 1)
			}
		}
		h.io.Unlock()
		m.drop(k.stream, k.shard, h)
	}
	return err
}

// lapse gives up every held lease when no heartbeat succeeded for the
// validity (LeaseDuration less one RenewInterval): others may take them. It reports whether it did.
func (m *Manager) lapse(ctx context.Context, now time.Time) bool {
	m.mu.Lock()
	if !m.beaten || now.Sub(m.lastBeat) < m.validity() {
		m.mu.Unlock()
		return false
	}
	m.mu.Unlock()
	m.giveUpAll(ctx)
	return true
}

// giveUpAll gives up every held lease without writing, noting each one's
// counter in gaveUp, and makes every stream's next Sync read all lease
// items. It returns how many it gave up.
func (m *Manager) giveUpAll(ctx context.Context) int {
	m.mu.Lock()
	hs := make(map[key]*held, len(m.held))
	for k, h := range m.held {
		hs[k] = h
	}
	for _, st := range m.streams {
		st.stale = true // read everything again once the table answers
	}
	m.mu.Unlock()
	n := 0
	for k, h := range hs {
		h.io.Lock()
		if !h.gone {
			n++
			h.gone = true
			h.renewing.Store(false)
			m.mu.Lock()
			m.lost[k] = true
			m.gaveUp[k] = h.counter
			m.mu.Unlock()
			if !h.handingOver && !h.lossCounted {
				h.lossCounted = true
				m.count(ctx, k.stream, cLost, 1)
			}
			m.logger().Warn("no heartbeat for the lease duration; giving the lease up", "stream", k.stream, "shard_id", k.shard)
		}
		h.io.Unlock()
		m.drop(k.stream, k.shard, h)
	}
	return n
}

// publishLocked returns what this instance publishes in its heartbeat about
// each stream it syncs: the shards it reads with their load, its total
// load, and its outstanding request. Called with m.mu held.
func (m *Manager) publishLocked(now time.Time) map[string]StreamInfo {
	out := make(map[string]StreamInfo, len(m.attrs))
	for stream := range m.attrs {
		out[stream] = StreamInfo{Shards: map[string]int64{}}
	}
	for k, h := range m.held {
		if !h.renewing.Load() {
			continue
		}
		si, ok := out[k.stream]
		if !ok {
			continue
		}
		b, r := m.rate(k, now)
		si.Shards[k.shard] = int64(b)
		si.Bytes += int64(b)
		si.Records += int64(r)
		out[k.stream] = si
	}
	for stream, w := range m.wants {
		if si, ok := out[stream]; ok {
			si.Want, si.From = slices.Clone(w.shards), w.from
			out[stream] = si
		}
	}
	return out
}

// readMembers reads the heartbeat item (one strongly consistent read).
func (m *Manager) readMembers(ctx context.Context) error {
	var ms []Member
	err := m.retryUntil(ctx, time.Now().Add(m.SyncInterval()/2), "read heartbeats", func(ctx context.Context) error {
		var err error
		ms, err = m.t.Members(ctx)
		return err
	})
	if err != nil {
		return err
	}
	m.observeMembers(ms, time.Now())
	return nil
}

// observeMembers takes in the entries of the heartbeat item read at now.
func (m *Manager) observeMembers(ms []Member, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := false
	present := make(map[string]bool, len(ms))
	for _, mm := range ms {
		if mm.Owner == m.me {
			continue
		}
		present[mm.Owner] = true
		p := m.peers[mm.Owner]
		switch {
		case p == nil:
			p = &peer{seenAt: now, live: true}
			m.peers[mm.Owner] = p
			changed = true
		case p.m.Beat != mm.Beat || p.m.Inc != mm.Inc:
			p.seenAt = now
		}
		p.m = mm
	}
	for owner := range m.peers {
		if !present[owner] {
			delete(m.peers, owner) // left, or removed after it died
			changed = true
		}
	}
	for owner, p := range m.peers {
		live := now.Sub(p.seenAt) < m.validity()
		if live != p.live {
			p.live = live
			changed = true
			if live {
				m.logger().Info("member back", "member", owner)
			} else {
				m.logger().Info("member expired: no heartbeat for the lease duration", "member", owner)
			}
		}
	}
	m.readAt = now
	if changed {
		m.memberVer++
	}
}

// suspect reports whether a live member's heartbeat would have expired by
// now, had it not changed since it was last seen.
func (m *Manager) suspect(now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.peers {
		if p.live && now.Sub(p.seenAt) >= m.validity() && m.readAt.Before(now) {
			return true
		}
	}
	return false
}

// forgetDead removes, once per sync, the entry of a member dead for 3 ×
// LeaseDuration, so that the heartbeat item does not grow with every
// process that ever ran under a fresh owner id. Only the live member with
// the smallest owner id does it; the removal is conditional on the dead
// member's counter, so a member that came back keeps its entry.
func (m *Manager) forgetDead(ctx context.Context, now time.Time) {
	m.mu.Lock()
	var victim *Member
	for owner, p := range m.peers {
		if p.live && owner < m.me {
			m.mu.Unlock()
			return
		}
		if !p.live && now.Sub(p.seenAt) >= 3*m.o.LeaseDuration && victim == nil {
			v := p.m
			victim = &v
		}
	}
	m.mu.Unlock()
	if victim == nil {
		return
	}
	err := m.t.Remove(ctx, victim.Owner, victim.Inc, victim.Beat)
	if err != nil && !errors.Is(err, ErrConflict) {
		m.logger().Warn("entry of a dead member not removed; retrying later", "member", victim.Owner, "err", err)
		return
	}
	m.logger().Info("removed the heartbeat entry of a dead member", "member", victim.Owner)
	m.mu.Lock()
	delete(m.peers, victim.Owner)
	m.memberVer++
	m.mu.Unlock()
}

// Leave removes this instance's heartbeat entry (if it is still this
// process's), so that the others count it gone at once. Leaving twice is
// not an error. A later Sync joins again.
func (m *Manager) Leave(ctx context.Context) error {
	m.syncMu.Lock()
	defer m.syncMu.Unlock()
	m.mu.Lock()
	beaten := m.beaten
	m.mu.Unlock()
	if !beaten {
		return nil
	}
	err := m.retryUntil(ctx, time.Now().Add(m.o.RenewInterval), "leave", func(ctx context.Context) error {
		return m.t.Remove(ctx, m.me, m.inc, -1)
	})
	if err != nil && !errors.Is(err, ErrConflict) {
		return fmt.Errorf("leave: remove the heartbeat entry of %s: %w", m.me, err)
	}
	m.mu.Lock()
	m.beaten = false // a later Sync writes the entry anew
	m.mu.Unlock()
	m.logger().Info("left the group", "owner", m.me)
	return nil
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

// refresh reads the lease items of stream when something may have changed
// them (see the package documentation), else only the items this instance
// asked for. Reads go to the stream's cache.
func (m *Manager) refresh(ctx context.Context, stream string, st *streamState, eligible []string, mine map[string]*held) error {
	now := time.Now()
	m.mu.Lock()
	full := st.cache == nil || st.stale || st.memberVer != m.memberVer || !slices.Equal(st.eligible, eligible) ||
		now.Sub(st.read) >= 3*m.o.LeaseDuration || !st.nextRead.IsZero() && !now.Before(st.nextRead)
	if !full && now.Sub(st.read) >= m.o.RenewInterval && !m.cappedLocked(len(eligible), stream) {
		// Leases released, or never taken: the members' published counts
		// fall short of the shards.
		sum := 0
		for k, h := range m.held {
			if k.stream == stream && h.renewing.Load() && h.givingUp.IsZero() {
				sum++
			}
		}
		for _, p := range m.peers {
			if p.live {
				sum += len(p.m.Streams[stream].Shards)
			}
		}
		full = sum < len(eligible)
	}
	memberVer := m.memberVer
	var wanted []string
	if w, ok := m.wants[stream]; ok {
		wanted = slices.Clone(w.shards)
	}
	m.mu.Unlock()

	var fetch []string
	if full {
		fetch = slices.Clone(eligible)
		for id := range mine {
			if !slices.Contains(eligible, id) {
				fetch = append(fetch, id)
			}
		}
	} else if len(wanted) > 0 {
		fetch = wanted
	} else {
		return nil
	}
	var leases []Lease
	err := m.retryUntil(ctx, time.Now().Add(m.SyncInterval()), "read leases", func(ctx context.Context) error {
		var err error
		leases, err = m.t.Leases(ctx, stream, fetch)
		return err
	})
	if err != nil {
		return err
	}
	now = time.Now()
	byShard := make(map[string]Lease, len(leases))
	for _, l := range leases {
		byShard[l.ShardID] = l
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if full {
		st.cache = byShard
		st.read, st.memberVer, st.eligible, st.stale = now, memberVer, slices.Clone(eligible), false
		for k := range m.seen {
			if _, ok := byShard[k.shard]; k.stream == stream && !ok {
				delete(m.seen, k)
			}
		}
	} else {
		for _, id := range fetch {
			if l, ok := byShard[id]; ok {
				st.cache[id] = l
			} else {
				delete(st.cache, id)
			}
		}
	}
	for id, l := range byShard {
		k := key{stream, id}
		s, ok := m.seen[k]
		if ok && s.owner == l.Owner && s.counter != l.Counter && l.Owner != "" && l.Owner != m.me &&
			m.peers[l.Owner] == nil && !m.warned["old:"+l.Owner] {
			m.warned["old:"+l.Owner] = true
			m.logger().Warn("a lease owner that is not a member keeps renewing its lease item: probably an older "+
				"shardflow version; stop old versions before starting this one (a mixed fleet is not supported)",
				"stream", stream, "shard_id", id, "owner", l.Owner)
		}
		if !ok || s.owner != l.Owner || s.counter != l.Counter {
			m.seen[k] = seen{owner: l.Owner, counter: l.Counter, at: now}
		}
	}
	// The earliest time a lease of a non-member (an older version, or an
	// owner gone from the heartbeat item), or a free lease left to another
	// instance, may expire: read again then.
	st.nextRead = time.Time{}
	for id, l := range st.cache {
		if l.Owner == m.me || l.Owner == "" && l.Want == "" {
			continue
		}
		if p := m.peers[l.Owner]; l.Owner != "" && p != nil {
			continue
		}
		if s, ok := m.seen[key{stream, id}]; ok {
			if at := s.at.Add(m.o.LeaseDuration); at.After(now) && (st.nextRead.IsZero() || at.Before(st.nextRead)) {
				st.nextRead = at
			}
		}
	}
	return nil
}

// cappedLocked reports whether MaxLeasesPerInstance leaves shards of
// stream unread, and warns once when it does. Called with m.mu held.
func (m *Manager) cappedLocked(eligible int, stream string) bool {
	if m.o.MaxLeasesPerInstance == 0 {
		return false
	}
	n := 1
	for _, p := range m.peers {
		if p.live {
			if _, ok := p.m.Streams[stream]; ok {
				n++
			}
		}
	}
	capped := n*m.o.MaxLeasesPerInstance < eligible
	if capped && !m.warned["cap:"+stream] {
		m.warned["cap:"+stream] = true
		m.logger().Warn("MaxLeasesPerInstance leaves shards unread: live instances × the cap is less than the shards",
			"stream", stream, "instances", n, "max_leases_per_instance", m.o.MaxLeasesPerInstance, "shards", eligible)
	}
	return capped
}

// expiredLocked reports whether lease l of stream is expired: its owner is
// a member whose heartbeat expired, or is no member and the item did not
// change for LeaseDuration. Called with m.mu held.
func (m *Manager) expiredLocked(stream string, l Lease, now time.Time) bool {
	if p := m.peers[l.Owner]; l.Owner != "" && p != nil {
		return !p.live
	}
	s, ok := m.seen[key{stream, l.ShardID}]
	return ok && now.Sub(s.at) >= m.o.LeaseDuration
}

// reconcile compares the held leases with the cache and the members'
// requests: a lease now owned by someone else was lost; a lease another
// instance asked for, or whose shard is no longer eligible, is given up.
// It returns the leases given up for HandoffTimeout, to be freed.
func (m *Manager) reconcile(ctx context.Context, stream string, st *streamState, mine map[string]*held, eligible map[string]bool, now time.Time) []string {
	m.mu.Lock()
	// The items of the held leases as cached, copied under the lock: a
	// Release or Checkpoint on a reader's goroutine updates the cache
	// meanwhile (cacheSet).
	cache := make(map[string]Lease, len(mine))
	for id := range mine {
		if l, ok := st.cache[id]; ok {
			cache[id] = l
		}
	}
	asks := make(map[string]string) // shard → the live member asking this one for it
	for owner, p := range m.peers {
		si := p.m.Streams[stream]
		if !p.live || si.From != m.me {
			continue
		}
		for _, id := range si.Want {
			asks[id] = owner
		}
	}
	m.mu.Unlock()
	var release []string
	for id, h := range mine {
		h.io.Lock()
		l, ok := cache[id]
		switch {
		case h.gone:
		case !ok || l.Owner != m.me || l.Counter != h.counter:
			// Taken, freed or reset; or, with this owner id and another
			// counter, taken over by another process with this owner id
			// (its heartbeat will soon make this one's fail). Every
			// write of this instance settles its own outcome, so a
			// counter it did not write is never its own.
			h.gone = true
			h.renewing.Store(false)
			m.noteLost(ctx, stream, id, l, h)
		default:
			if !h.givingUp.IsZero() {
				break
			}
			to := asks[id]
			if to == "" && l.Want != "" && l.Want != m.me {
				to = l.Want
			}
			if to != "" {
				h.givingUp, h.to, h.handingOver = now, to, true
				m.count(ctx, stream, cHandedOver, 1)
				m.logger().Info("handing lease over", "stream", stream, "shard_id", id, "to", to)
			} else if !eligible[id] {
				h.givingUp = now
			}
		}
		if !h.gone && !h.givingUp.IsZero() && now.Sub(h.givingUp) >= m.o.HandoffTimeout {
			release = append(release, id)
		}
		gone := h.gone
		h.io.Unlock()
		if gone {
			m.drop(stream, id, h)
			delete(mine, id)
		}
	}
	return release
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
	from   string // the member that handed it over, for its load
}

// balance takes free and expired leases up to the target, takes back
// leases that name this owner id (an earlier process's), takes leases
// handed to it, and, when the group is out of balance, asks one member for
// leases. It reports whether it made a new request, to be published.
func (m *Manager) balance(ctx context.Context, stream string, st *streamState, eligible []string, lost map[string]bool) (bool, error) {
	now := time.Now()
	mine := m.heldOf(stream)
	have := len(m.active(mine, mapOf(eligible)))

	m.mu.Lock()
	m.forgetWantLocked(stream, st, mine, now)
	w, asked := m.wants[stream]
	live := make(map[string]StreamInfo) // live members syncing stream
	for owner, p := range m.peers {
		if si, ok := p.m.Streams[stream]; ok && p.live {
			live[owner] = si
		}
	}
	target := (len(eligible) + len(live)) / (len(live) + 1) // ceil
	// What this instance holds of every other stream, and has asked for
	// there: MaxLeasesPerInstance caps the instance, not each stream, and
	// counts are balanced across streams too.
	elsewhere := 0
	for k, h := range m.held {
		if k.stream != stream && h.renewing.Load() && h.givingUp.IsZero() {
			elsewhere++
		}
	}
	for s, w := range m.wants {
		if s != stream {
			elsewhere += len(w.shards)
		}
	}
	totals := make(map[string]int, len(live)) // live members' leases of every stream
	for owner := range live {
		for _, si := range m.peers[owner].m.Streams {
			totals[owner] += len(si.Shards)
		}
	}
	limit := m.o.MaxLeasesPerInstance
	if limit > 0 {
		m.cappedLocked(len(eligible), stream)
		limit = max(0, limit-elsewhere)
		target = min(target, limit)
	} else {
		limit = len(eligible) + 1
	}
	var reclaim, wanted, free []candidate
	for _, id := range eligible {
		if mine[id] != nil || lost[id] {
			continue // mine, being handed over by me, or just lost
		}
		l, ok := st.cache[id]
		if !ok {
			free = append(free, candidate{shard: id})
			continue
		}
		switch {
		case l.Owner == m.me && (!st.synced || m.gaveUp[key{stream, id}] == l.Counter):
			// Named by an earlier process with this owner id (at this
			// instance's first sync of the stream), or by this one
			// before it gave the lease up without writing, and taken by
			// nobody since: ours at once. An item naming this owner id
			// with a counter this instance did not write belongs to
			// another process with this id: never taken back.
			reclaim = append(reclaim, candidate{shard: id, lease: l, exists: true})
		case l.Owner == "" && l.Want == m.me:
			from := ""
			if asked && slices.Contains(w.shards, id) {
				from = w.from
			}
			wanted = append(wanted, candidate{id, l, true, from})
		case l.Owner == "" && l.Want == "":
			free = append(free, candidate{shard: id, lease: l, exists: true})
		case l.Owner == "":
			// Handed to another instance: leave it to that one for a
			// lease duration, unless it is gone.
			p := m.peers[l.Want]
			if p == nil || !p.live || m.expiredLocked(stream, l, now) {
				free = append(free, candidate{shard: id, lease: l, exists: true})
			}
		case m.expiredLocked(stream, l, now):
			free = append(free, candidate{shard: id, lease: l, exists: true})
		}
	}
	m.mu.Unlock()

	mrand.Shuffle(len(free), func(i, j int) { free[i], free[j] = free[j], free[i] })
	var errs []error
	took := func(c candidate) {
		if len(errs) > 0 {
			return // the owner id was taken over: take nothing more
		}
		// Taking many leases takes a while (a write each): keep the
		// heartbeat going meanwhile, or the leases already held would
		// run out, and others would take them.
		if err := m.heartbeat(ctx, stream, false); errors.Is(err, checkpoint.ErrOwnerTaken) {
			errs = append(errs, err)
			return
		}
		ok, err := m.take(ctx, stream, st, c)
		switch {
		case err != nil && retry.IsPermanent(err):
			errs = append(errs, err)
		case err != nil:
			m.logger().Warn("lease not taken; retrying at the next sync", "stream", stream, "shard_id", c.shard, "err", err)
		case ok:
			have++
		}
	}
	for _, c := range reclaim {
		if have < limit {
			took(c)
		}
	}
	for _, c := range wanted {
		if have < limit {
			took(c)
		}
	}
	for _, c := range free {
		if have >= target {
			break
		}
		took(c)
	}
	if len(errs) > 0 {
		return false, errors.Join(errs...)
	}
	if asked || have >= limit || now.Sub(st.stole) < 2*m.o.RenewInterval {
		return false, nil
	}

	// Ask a member for leases: by load when the stream carries any, else
	// by count.
	from, ids := m.pickByLoad(stream, mine, live)
	if from == "" && !m.loaded(stream, live) && have < target {
		from, ids = m.pickByCount(have, min(target, limit)-have, 2, live, target)
		if from == "" && have < limit {
			from, ids = m.pickAcrossStreams(have, have+elsewhere, live, totals)
		}
	}
	if from == "" {
		return false, nil
	}
	m.mu.Lock()
	m.wants[stream] = want{from: from, shards: ids, at: now}
	m.mu.Unlock()
	m.logger().Info("asked for leases", "stream", stream, "shards", ids, "from", from, "held", have, "target", target)
	return true, nil
}

// forgetWantLocked drops the outstanding request of stream once its shards
// are taken (by this instance or another), or after HandoffTimeout +
// LeaseDuration. Called with m.mu held.
func (m *Manager) forgetWantLocked(stream string, st *streamState, mine map[string]*held, now time.Time) {
	w, ok := m.wants[stream]
	if !ok {
		return
	}
	var rest []string
	for _, id := range w.shards {
		l, ok := st.cache[id]
		if mine[id] != nil || !ok || l.Owner != w.from && l.Owner != "" || l.Owner == "" && l.Want != m.me && l.Want != "" {
			continue
		}
		rest = append(rest, id)
	}
	switch {
	case len(rest) == 0 || now.Sub(w.at) >= m.o.HandoffTimeout+m.o.LeaseDuration:
		delete(m.wants, stream)
	case len(rest) < len(w.shards):
		w.shards = rest
		m.wants[stream] = w
	}
}

// pickByCount asks the member holding the most leases, if it holds at
// least gap (two, or one across streams) more than this instance, for up to need of them (at most half
// the difference). "Above target" alone is not enough: with four shards
// and three instances the target is two, and 2/2/0 would pass for
// balanced, leaving an instance that lost its leases idle for good.
func (m *Manager) pickByCount(have, need, gap int, live map[string]StreamInfo, target ...int) (string, []string) {
	if need <= 0 {
		return "", nil
	}
	if len(target) > 0 {
		if from, ids := m.matchDonor(have, need, target[0], live); from != "" {
			return from, ids
		}
	}
	busiest := ""
	for owner, si := range live {
		n := len(si.Shards)
		if n >= have+gap && (busiest == "" || n > len(live[busiest].Shards) || n == len(live[busiest].Shards) && owner < busiest) {
			busiest = owner
		}
	}
	if busiest == "" {
		return "", nil
	}
	n := min(need, max(1, (len(live[busiest].Shards)-have)/2))
	// Every member short of leases asks the busiest one, and they see the
	// same heartbeat item: each takes its own window of the busiest's
	// shards, by its rank among them, so that their requests do not name
	// the same shards (a shard asked for twice goes to one of them, and
	// the other waits for its request to lapse).
	ids := sortedKeys(live[busiest].Shards)
	short := []string{m.me}
	for owner, si := range live {
		if owner != busiest && len(si.Shards)+2 <= len(live[busiest].Shards) {
			short = append(short, owner)
		}
	}
	slices.Sort(short)
	rank := slices.Index(short, m.me)
	start := (rank * n) % len(ids)
	pick := make([]string, 0, n)
	for i := range n {
		pick = append(pick, ids[(start+i)%len(ids)])
	}
	slices.Sort(pick)
	return busiest, pick
}

// matchDonor divides the excess of the members above target between the
// members below it, the same way on every instance (they see the same
// heartbeat item): donors in order of most leases, askers in order of
// owner id, each asker's need laid after the needs of those before it
// over the donors' excesses laid end to end. It returns the donor and the
// shards of this instance's part, or "" when its part falls beyond the
// excess. Several members above target (after a cold start, whoever synced
// before seeing the others) are thus drained at once, each by its own
// askers, without two asking for one shard.
func (m *Manager) matchDonor(have, need, target int, live map[string]StreamInfo) (string, []string) {
	type donor struct {
		owner  string
		excess int
	}
	var donors []donor
	askers := []string{m.me}
	needs := map[string]int{m.me: need}
	for owner, si := range live {
		n := len(si.Shards)
		switch {
		case n > target && n >= have+2:
			donors = append(donors, donor{owner, n - target})
		case n < target:
			askers = append(askers, owner)
			needs[owner] = target - n
		}
	}
	if len(donors) == 0 {
		return "", nil
	}
	slices.SortFunc(donors, func(a, b donor) int {
		if a.excess != b.excess {
			return b.excess - a.excess
		}
		return strings.Compare(a.owner, b.owner)
	})
	slices.Sort(askers)
	start := 0
	for _, a := range askers {
		if a == m.me {
			break
		}
		start += needs[a]
	}
	for _, d := range donors {
		if start >= d.excess {
			start -= d.excess
			continue
		}
		n := min(need, d.excess-start)
		ids := sortedKeys(live[d.owner].Shards)
		pick := slices.Clone(ids[start : start+n])
		slices.Sort(pick)
		return d.owner, pick
	}
	return "", nil
}

// pickAcrossStreams balances counts across the streams of an instance
// group: when no member holds two more leases of this stream than this
// instance (streams of one or two shards never do), it asks the member
// holding the most leases in all, if that is at least two more than this
// instance holds in all (mine, with those it asked for), for one lease of
// this stream, of which that member must hold more than this instance.
// Moving one lease narrows the gap of totals without reversing it, so no
// lease goes back; each stream's Sync moves at most one.
func (m *Manager) pickAcrossStreams(have, mine int, live map[string]StreamInfo, totals map[string]int) (string, []string) {
	busiest := ""
	for owner, si := range live {
		n := totals[owner]
		if n >= mine+2 && len(si.Shards) > have &&
			(busiest == "" || n > totals[busiest] || n == totals[busiest] && owner < busiest) {
			busiest = owner
		}
	}
	if busiest == "" {
		return "", nil
	}
	return m.pickByCount(have, 1, 1, map[string]StreamInfo{busiest: live[busiest]})
}

// take takes a free or expired lease, or creates the lease of a shard that
// has none. It reports whether this instance now holds it.
func (m *Manager) take(ctx context.Context, stream string, st *streamState, c candidate) (bool, error) {
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
		m.mu.Lock()
		st.stale = true
		m.mu.Unlock()
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("take lease of shard %s: %w", c.shard, err)
	}
	k := key{stream, c.shard}
	m.mu.Lock()
	h := &held{counter: l.Counter}
	h.renewing.Store(true)
	m.held[k] = h
	st.cache[c.shard] = Lease{ShardID: c.shard, Owner: m.me, Counter: l.Counter}
	m.seen[k] = seen{owner: m.me, counter: l.Counter, at: time.Now()}
	m.mu.Unlock()
	switch {
	case c.exists && c.lease.Owner == "" && c.lease.Want == m.me:
		m.count(ctx, stream, cStolen, 1) // handed to this instance, which asked
		m.mu.Lock()
		st.stole = time.Now()
		if p := m.peers[c.from]; p != nil {
			// Start the shard's load at what its last owner measured, so
			// that this instance does not look idle while its own
			// measure warms up.
			m.seedLocked(k, p.m.Streams[stream].Shards[c.shard])
		}
		m.mu.Unlock()
	case c.exists && c.lease.Owner == m.me:
		m.count(ctx, stream, cTaken, 1)
		m.logger().Info("lease taken back from an earlier process with this owner id", "stream", stream,
			"shard_id", c.shard, "lease_counter", l.Counter)
		return true, nil
	default:
		m.count(ctx, stream, cTaken, 1)
	}
	from := "nobody"
	if c.lease.Owner != "" {
		from = c.lease.Owner + " (expired)"
	}
	m.logger().Info("lease taken", "stream", stream, "shard_id", c.shard, "from", from)
	return true, nil
}

func mapOf(ids []string) map[string]bool {
	out := make(map[string]bool, len(ids))
	for _, id := range ids {
		out[id] = true
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
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
	ch := Change{Owner: ptr(""), Bump: true}
	if h.to != "" {
		ch.Want = ptr(h.to) // reserved for the instance that asked
	}
	l, uncertain, err := m.writeUncertain(ctx, stream, shard, time.Now().Add(m.SyncInterval()),
		Cond{Owner: m.me, Counter: h.counter}, ch, nil)
	if err == nil {
		m.cacheSet(stream, Lease{ShardID: shard, Counter: l.Counter, Want: h.to})
	} else if errors.Is(err, ErrConflict) {
		m.markStale(stream)
	}
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
		m.markStale(stream)
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

// cacheSet records a lease item as this instance just wrote it.
func (m *Manager) cacheSet(stream string, l Lease) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st := m.streams[stream]; st != nil && st.cache != nil {
		st.cache[l.ShardID] = l
	}
	m.seen[key{stream, l.ShardID}] = seen{owner: l.Owner, counter: l.Counter, at: time.Now()}
}

// markStale makes the next Sync of stream read every lease item.
func (m *Manager) markStale(stream string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st := m.streams[stream]; st != nil {
		st.stale = true
	}
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
		if v == landed {
			return nil
		}
		return ErrConflict
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
	// A take back of an item that already names this owner id (a restart)
	// leaves the same trace as the take back by another process with the
	// id: it is never taken for landed, so that two processes with one id
	// cannot both believe they hold the lease. (Items have no counter of
	// their own changes that would not be the lease counter: a checkpoint
	// or write of an earlier incarnation is never adopted either.)
	reclaim := cond.Owner == m.me && want.Owner == m.me
	if visible && !reclaim && l.Owner == want.Owner && l.Counter == want.Counter && (ch.Want == nil || l.Want == *ch.Want) {
		return landed, l, nil
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
