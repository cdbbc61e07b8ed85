package memory

import (
	"context"
	"log/slog"
	"runtime"
	"sync"
	"time"
	"weak"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/lease"
)

// LeaseOptions configure an [Instance]. Zero fields take the documented
// defaults, the same as the DynamoDB store's.
type LeaseOptions struct {
	// LeaseDuration is how long a lease may go unrenewed before other
	// instances take it. Default: 10s.
	LeaseDuration time.Duration
	// RenewInterval is how often held leases are renewed; the source syncs
	// leases every RenewInterval/2. Default: LeaseDuration/3. At most
	// LeaseDuration/2.
	RenewInterval time.Duration
	// HandoffTimeout bounds how long an instance keeps renewing a lease
	// another instance asked for while its source checkpoints and releases
	// the shard; after that the lease expires. Default: 40s.
	HandoffTimeout time.Duration
	// Logger receives lease changes (Info) and failures (Warn). Default:
	// nil, which discards them.
	Logger *slog.Logger
}

// Instance is one pipeline instance's view of a shared Store: a
// [shardflow.Leaser] and fenced [shardflow.CheckpointStore]. Give each
// pipeline in the process its own Instance of one Store, and they divide
// the shards between them as instances sharing a DynamoDB table do, with
// the same algorithm (see package checkpoint/dynamodb): leases renewed,
// expired leases taken, balanced by count with graceful handoffs.
//
// An Instance is safe for concurrent use. Its checkpoints are the Store's:
// Store.Checkpoint and Store.Checkpoints see them, and Store.Load and
// Instance.Load agree.
type Instance struct {
	s *Store
	m *lease.Manager
}

var (
	_ shardflow.CheckpointStore = (*Instance)(nil)
	_ shardflow.Leaser          = (*Instance)(nil)
)

// Instance returns a new instance view of s named owner (a unique id is made
// up when owner is ""). Two Instances must not share an owner name. It
// fails only on bad options.
func (s *Store) Instance(owner string, optFns ...func(*LeaseOptions)) (*Instance, error) {
	var o LeaseOptions
	for _, fn := range optFns {
		fn(&o)
	}
	m, err := lease.New(memTable{s: s, lt: s.leaseTable()}, lease.Options{
		Owner: owner, LeaseDuration: o.LeaseDuration, RenewInterval: o.RenewInterval,
		HandoffTimeout: o.HandoffTimeout, Logger: o.Logger,
	})
	if err != nil {
		return nil, err
	}
	return &Instance{s: s, m: m}, nil
}

// Owner returns the instance's owner name.
func (in *Instance) Owner() string { return in.m.Owner() }

// Load returns the shard's checkpoint, whoever saved it.
func (in *Instance) Load(ctx context.Context, stream, shardID string) (shardflow.Checkpoint, bool, error) {
	return in.s.Load(ctx, stream, shardID)
}

// Save records the shard's checkpoint if this instance holds the shard's
// lease, and otherwise fails with an error wrapping [shardflow.ErrLeaseLost].
func (in *Instance) Save(ctx context.Context, stream, shardID string, cp shardflow.Checkpoint) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return in.m.Checkpoint(ctx, stream, shardID, cp)
}

// SyncLeases renews this instance's leases, takes free and expired ones,
// balances with the other instances, and returns the eligible shards it
// holds. See [shardflow.Leaser].
func (in *Instance) SyncLeases(ctx context.Context, stream string, eligible []string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return in.m.Sync(ctx, stream, eligible)
}

// ReleaseLease frees this instance's lease of a shard; releasing a lease it
// does not hold is not an error.
func (in *Instance) ReleaseLease(ctx context.Context, stream, shardID string) error {
	return in.m.Release(ctx, stream, shardID)
}

// LeaseSyncInterval is how often the source calls SyncLeases:
// RenewInterval/2.
func (in *Instance) LeaseSyncInterval() time.Duration { return in.m.SyncInterval() }

// LeaseDuration is how long a lease may go unrenewed before another
// instance takes it.
func (in *Instance) LeaseDuration() time.Duration { return in.m.LeaseDuration() }

// ResetCheckpoint is [Store.ResetCheckpoint] of the instance's store.
func (in *Instance) ResetCheckpoint(ctx context.Context, stream, shardID string) error {
	return in.s.ResetCheckpoint(ctx, stream, shardID)
}

// LeaseOwners returns the owner of every lease of stream, by shard id ("" for
// a free lease), for assertions.
func (s *Store) LeaseOwners(stream string) map[string]string {
	lt := s.leaseTable()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string)
	for k, r := range lt.recs {
		if k.stream == stream {
			out[k.shard] = r.owner
		}
	}
	return out
}

// ResetCheckpoint deletes the shard's checkpoint and frees its lease,
// changing the lease counter, as the DynamoDB store's ResetCheckpoint does:
// an Instance reading the shard loses its lease (its next save is refused),
// stops reading the shard without saving again, and the shard is then taken
// anew and read from the source's InitialPosition. It fails only when ctx is
// done.
func (s *Store) ResetCheckpoint(ctx context.Context, stream, shardID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	lt := s.leaseTable()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key{stream, shardID}
	delete(s.cps, k)
	if r := lt.recs[k]; r != nil {
		r.owner, r.want = "", ""
		r.counter++
	}
	return nil
}

// leaseTables holds the lease records of each Store that has Instances,
// keyed weakly so that a Store's records go away with it. (They live beside
// the Store rather than in it so that a plain Store stays as small as it
// was.)
var leaseTables sync.Map // weak.Pointer[Store] -> *leaseRecs

// leaseRecs are a Store's lease records, guarded by the Store's mu so that a
// fenced checkpoint is checked and written at once.
type leaseRecs struct {
	recs map[key]*leaseRec
}

type leaseRec struct {
	owner   string
	counter int64
	want    string
}

func (s *Store) leaseTable() *leaseRecs {
	wp := weak.Make(s)
	if lt, ok := leaseTables.Load(wp); ok {
		return lt.(*leaseRecs)
	}
	lt, loaded := leaseTables.LoadOrStore(wp, &leaseRecs{recs: make(map[key]*leaseRec)})
	if !loaded {
		runtime.AddCleanup(s, func(wp weak.Pointer[Store]) { leaseTables.Delete(wp) }, wp)
	}
	return lt.(*leaseRecs)
}

// memTable is the lease.Table of a Store.
type memTable struct {
	s  *Store
	lt *leaseRecs
}

func (t memTable) Leases(ctx context.Context, stream string, shardIDs []string) ([]lease.Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	var out []lease.Lease
	for _, id := range shardIDs {
		if r := t.lt.recs[key{stream, id}]; r != nil {
			out = append(out, lease.Lease{ShardID: id, Owner: r.owner, Counter: r.counter, Want: r.want})
		}
	}
	return out, nil
}

func (t memTable) Create(ctx context.Context, stream, shardID, owner string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	k := key{stream, shardID}
	if t.lt.recs[k] != nil {
		return lease.ErrConflict
	}
	t.lt.recs[k] = &leaseRec{owner: owner, counter: 1}
	return nil
}

func (t memTable) Update(ctx context.Context, stream, shardID string, cond lease.Cond, ch lease.Change) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	k := key{stream, shardID}
	r := t.lt.recs[k]
	if r == nil || r.owner != cond.Owner || r.counter != cond.Counter || cond.Want != nil && r.want != *cond.Want {
		return lease.ErrConflict
	}
	if ch.Owner != nil {
		r.owner = *ch.Owner
	}
	if ch.Bump {
		r.counter = cond.Counter + 1
	}
	if ch.Want != nil {
		r.want = *ch.Want
	}
	if ch.Checkpoint != nil {
		t.s.cps[k] = *ch.Checkpoint
		t.s.n++
	}
	return nil
}
