// Package lease is the shard-lease algorithm shared by the checkpoint stores
// that coordinate several instances (checkpoint/memory and
// checkpoint/dynamodb). A store supplies a [Table] (one lease item per shard
// with conditional writes); a [Manager] per instance runs the algorithm over
// it and gives the store its SyncLeases, ReleaseLease and fenced Save.
//
// # Algorithm
//
// Every lease item holds an owner ("" when free), a counter and an optional
// want (the instance the lease is reserved for). Each write is conditional
// on the owner and counter it expects, so two instances can never both
// believe they won the same write. Lease items are written only when a
// lease changes hands (take, release) and when a checkpoint is saved.
//
//   - Heartbeat: one item per table ([MembersTable]) holds an entry per
//     instance: its incarnation (random per process), a heartbeat counter,
//     and per stream it syncs the shards it reads with their load, its total
//     load and its outstanding request. Each instance writes only its own
//     entry, every RenewInterval, in one write that returns every entry:
//     the liveness of the whole group in one call. The write is conditional
//     on the entry's incarnation being this process's (or the entry being
//     absent); the first write of a process is not, so that a restart with
//     the same owner id takes the entry over.
//   - Validity: an instance holds its leases while its heartbeat succeeds;
//     when none succeeded for LeaseDuration less one RenewInterval (from
//     when it was sent) it gives every lease up, without writing.
//   - Expiry: an instance notes on its own monotonic clock when it last saw
//     each member's heartbeat counter change (at its own heartbeat, or at a
//     read of the heartbeat item it makes at once when a member would expire
//     by now); a member unchanged for LeaseDuration less one RenewInterval
//     is dead and its leases are expired. Seen up to a RenewInterval late,
//     a dead member's leases are taken at most LeaseDuration (and a sync
//     interval) after its last heartbeat, never before it gave them up. A
//     lease whose owner has no entry (an older shardflow version, which
//     renews lease items) is expired once its item's owner and counter did
//     not change for LeaseDuration. Wall clocks of different hosts are
//     never compared.
//   - Reads: lease items are cached per stream and read in full (one
//     BatchGetItem per 100 shards) only when something may have changed
//     them: the first sync, a change of the eligible shards or of the
//     members, published counts short of the shards (a lease was
//     released), a write refused, an expiry due for a non-member's lease,
//     and every 3 × LeaseDuration as a safety net. While this instance
//     waits for leases it asked for, it reads only those items.
//   - Renewal time: each take also writes the owner's wall-clock time
//     ([Change.RenewedAt]) and each heartbeat its own, for operators; a
//     release removes it. The algorithm never reads it.
//   - Take: free leases, expired leases and leases of shards with no item
//     yet (created with attribute_not_exists) are taken up to the target,
//     ceil(eligible shards / live members syncing the stream), members that
//     hold nothing included, and at most MaxLeasesPerInstance. Items naming
//     this owner id that it does not hold (an earlier process with the same
//     id, or this one after its heartbeat lapsed) are taken back at once,
//     bumping the counter, so that the earlier process's checkpoints are
//     refused.
//   - Balance: when the stream's measured load is above a small floor, an
//     instance below the mean load by more than 10% asks the busiest member
//     above it by more than 10% for the shards (from that member's
//     published loads) that bring one of the two closest to the mean
//     without overshooting: never a shard whose load is more than half
//     their difference, so a hot shard stays put and the others move away
//     from its owner. Otherwise, by count: an instance below target asks
//     the member holding the most leases, if it holds at least two more,
//     for up to half the difference. The request (shards and owner) is
//     published in the asker's heartbeat, at once; one request at a time
//     per stream. The owner sees it at its next heartbeat and stops
//     returning those shards, so the source closes their lanes (final
//     checkpoint) and releases them, the release reserving each for the
//     asker (the item's want); the asker polls only those items and takes
//     them. A free lease reserved for another live member is left to it for
//     a LeaseDuration. An owner frees a lease it is handing over after
//     HandoffTimeout if its source did not.
//   - Fencing: a checkpoint is written only if the item still has this
//     instance as owner and the counter it last wrote.
//   - Loss: a lease found taken, freed or reset by another instance (or an
//     operator) is not taken back in the Sync that notices it, so that the
//     caller stops the shard's reader, whose position may be stale; it may
//     be taken at a later Sync, and read from the table's checkpoint.
//   - Owner conflict: a heartbeat refused by its condition means another
//     process took this owner id over: this one gives up every lease
//     without writing, and every later Sync fails with a permanent
//     *checkpoint.OwnerConflictError.
//   - Uncertain writes: a write that fails its condition is settled by
//     re-reading the item. If it shows the write, an earlier attempt whose
//     answer was lost landed; a take back of an item already naming this
//     owner id is never settled so (another process with the id makes the
//     same change).
//
// # Metrics
//
// A Manager records, through Options.MeterProvider (or the provider
// [Manager.SetMeterProvider] sets), with the attribute stream: the gauge
// shardflow.lease.held {lease} (leases held and renewed, those being
// handed over included) and the counters shardflow.lease.taken (free or
// expired leases taken), shardflow.lease.stolen (taken from a live owner
// that handed them over on request), shardflow.lease.handed_over (handed
// to another instance that asked), shardflow.lease.lost (lost without a
// hand-over: found taken, freed or reset, given up when the heartbeat
// lapsed, or given up to a process that took the owner id over), all
// {lease}, and shardflow.lease.renew_failures {call} (heartbeats due that
// could not be written within the sync's retry window: one per failed
// heartbeat, whatever the number of leases). Each lease change is counted
// once, where the algorithm decides it.
package lease

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/shardflow/shardflow"
)

// Lease is one shard's lease as the table holds it.
type Lease struct {
	ShardID string
	// Owner is the instance holding the lease; "" when it is free.
	Owner string
	// Counter changes on every renew, take and release.
	Counter int64
	// Want is the instance that asked the owner to hand the lease over;
	// "" when none did.
	Want string
	// RenewedAt is the owner's wall-clock time of its last take or
	// renewal, as the table holds it; zero when the lease is free, when
	// the item predates renewal times, or when the table keeps none. For
	// operators only: the Manager never reads it (expiry is judged on each
	// instance's own clock).
	RenewedAt time.Time
}

// Cond is what a conditional write expects of the item.
type Cond struct {
	Owner   string // "" expects a free lease
	Counter int64
	// Want, when not nil, expects the item's want to be *Want ("" expects
	// none).
	Want *string
}

// Change is what a conditional write changes.
type Change struct {
	// Owner, when not nil, becomes the owner ("" frees the lease).
	Owner *string
	// Bump sets the counter to Cond.Counter+1.
	Bump bool
	// Want, when not nil, becomes the want ("" removes it).
	Want *string
	// Checkpoint, when not nil, becomes the shard's checkpoint.
	Checkpoint *shardflow.Checkpoint
	// RenewedAt, when not zero, becomes the lease's renewal time (see
	// [Lease.RenewedAt]): the Manager sets it on takes and renewals, to the
	// time each attempt is sent. A change that frees the lease (Owner set
	// to "") removes the renewal time. Either way it is part of the one
	// conditional write: a write refused by its condition changes nothing.
	RenewedAt time.Time
}

// Table is where leases live: one item per stream and shard. Implementations
// must be safe for concurrent use and read strongly consistently.
//
// Errors other than ErrConflict are retried as transient unless they are
// marked with retry.Permanent (a missing table, a wrong key schema, denied
// access).
type Table interface {
	// Leases returns the leases of the given shards of stream that have an
	// item, in any order.
	Leases(ctx context.Context, stream string, shardIDs []string) ([]Lease, error)
	// Create creates the shard's lease owned by owner with counter 1 and
	// renewal time renewedAt (see [Lease.RenewedAt]). It fails with
	// ErrConflict if the item exists.
	Create(ctx context.Context, stream, shardID, owner string, renewedAt time.Time) error
	// Update applies ch if the item matches cond, and fails with
	// ErrConflict if it does not (or does not exist).
	Update(ctx context.Context, stream, shardID string, cond Cond, ch Change) error
	// MembersTable is the heartbeat item of the instances.
	MembersTable
}

// ErrConflict is returned by a Table whose conditional write found the item
// other than expected.
var ErrConflict = errors.New("lease: conditional write failed")

func ptr[T any](v T) *T { return &v }

// Member is one instance's entry in the heartbeat item, the one item of a
// table that lists every live instance (see [Table.Beat]).
type Member struct {
	// Owner is the instance's owner id.
	Owner string
	// Inc is the incarnation: random per process, so that a process that
	// restarts with the same owner id is told from the one it replaces.
	Inc string
	// Beat is the heartbeat counter, bumped by every heartbeat.
	Beat int64
	// RenewedAt is the wall-clock time of the heartbeat, for operators
	// only: the algorithm never reads it.
	RenewedAt time.Time
	// Streams is what the instance publishes about each stream it syncs.
	Streams map[string]StreamInfo
}

// StreamInfo is what a member publishes about one stream.
type StreamInfo struct {
	// Shards are the shards the member reads, with each one's measured
	// load in bytes per second (0 when unmeasured).
	Shards map[string]int64
	// Bytes and Records are the member's total measured load of the
	// stream, per second.
	Bytes, Records int64
	// Want are the shards the member asked their owner From to hand
	// over; none when it asked for none.
	Want []string
	// From is the owner of the shards in Want.
	From string
}

// MembersTable is the heartbeat part of a [Table]: one item (for DynamoDB,
// the item with key "#instances") holding an entry per instance. Every
// call reads strongly consistently.
type MembersTable interface {
	// Beat writes m as the entry of m.Owner, creating the item if needed,
	// and returns every entry after the write. Unless takeover is set, the
	// write is conditional: the entry must be absent or have incarnation
	// m.Inc; otherwise Beat fails with ErrConflict (another process took
	// the owner id over).
	Beat(ctx context.Context, m Member, takeover bool) ([]Member, error)
	// Members returns every entry (none when the item does not exist).
	Members(ctx context.Context) ([]Member, error)
	// Remove removes owner's entry if it has incarnation inc and, when
	// beat is not negative, heartbeat counter beat; it fails with
	// ErrConflict otherwise (an absent entry included).
	Remove(ctx context.Context, owner, inc string, beat int64) error
}

// Heartbeats is an in-process [MembersTable] with the conditional semantics
// of the DynamoDB one, for the memory store and tests. The zero value is an
// empty item; it is safe for concurrent use.
type Heartbeats struct {
	mu      sync.Mutex
	members map[string]Member
}

// Beat implements [MembersTable.Beat].
func (h *Heartbeats) Beat(ctx context.Context, m Member, takeover bool) ([]Member, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if old, ok := h.members[m.Owner]; ok && !takeover && old.Inc != m.Inc {
		return nil, ErrConflict
	}
	if h.members == nil {
		h.members = make(map[string]Member)
	}
	h.members[m.Owner] = cloneMember(m)
	return h.listLocked(), nil
}

// Members implements [MembersTable.Members].
func (h *Heartbeats) Members(ctx context.Context) ([]Member, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.listLocked(), nil
}

// Remove implements [MembersTable.Remove].
func (h *Heartbeats) Remove(ctx context.Context, owner, inc string, beat int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	old, ok := h.members[owner]
	if !ok || old.Inc != inc || beat >= 0 && old.Beat != beat {
		return ErrConflict
	}
	delete(h.members, owner)
	return nil
}

func (h *Heartbeats) listLocked() []Member {
	out := make([]Member, 0, len(h.members))
	for _, m := range h.members {
		out = append(out, cloneMember(m))
	}
	return out
}

// cloneMember returns a deep copy of m: the table keeps its own.
func cloneMember(m Member) Member {
	if m.Streams != nil {
		ss := make(map[string]StreamInfo, len(m.Streams))
		for k, v := range m.Streams {
			v.Shards = maps.Clone(v.Shards)
			v.Want = slices.Clone(v.Want)
			ss[k] = v
		}
		m.Streams = ss
	}
	return m
}
