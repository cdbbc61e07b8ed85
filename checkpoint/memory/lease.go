package memory

import (
	"context"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint"
	"github.com/shardflow/shardflow/checkpoint/internal/lease"
)

// InstanceOptions configure an [Instance]. The zero value of each field
// means its documented default; negative durations are refused by
// [Store.Instance] with a *shardflow.ConfigError.
type InstanceOptions struct {
	// LeaseOptions are the lease timings and cap, the same as the
	// DynamoDB store's: LeaseDuration (default 8s), RenewInterval (the
	// heartbeat's, default LeaseDuration/3), HandoffTimeout (default 40s)
	// and MaxLeasesPerInstance (default 0, no limit).
	checkpoint.LeaseOptions

	// Logger receives lease changes (Info) and failures (Warn). Default:
	// the pipeline's logger when the Instance serves a pipeline's source
	// (see [shardflow.PipelineLogger]), else slog.Default().
	Logger *slog.Logger

	// MeterProvider records the instance's lease metrics (see the package
	// documentation). Default: nil, which means the pipeline's provider
	// when the Instance serves a pipeline's source (see
	// [shardflow.PipelineMeterProvider]), else the global provider,
	// otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
}

// Instance is one pipeline instance's view of a shared Store: a
// [shardflow.Leaser] and fenced [shardflow.CheckpointStore]. Give each
// pipeline in the process its own Instance of one Store, and they divide
// the shards between them as instances sharing a DynamoDB table do, with
// the same algorithm (see package checkpoint/dynamodb): one heartbeat per
// instance, the leases of dead instances taken, balanced by load (see
// RecordLoad) or count with graceful handoffs.
//
// An Instance is safe for concurrent use. Its checkpoints and leases are
// the Store's: Store.Checkpoint and Store.Checkpoints see them, and
// Store.Load and Instance.Load agree.
type Instance struct {
	s      *Store
	m      *lease.Manager
	ownLog bool // InstanceOptions.Logger was set: keep it
	ownMP  bool // InstanceOptions.MeterProvider was set: keep it
}

var (
	_ shardflow.CheckpointStore = (*Instance)(nil)
	_ shardflow.Leaser          = (*Instance)(nil)
	_ shardflow.PipelineLogger  = (*Instance)(nil)
	_ shardflow.LoadRecorder    = (*Instance)(nil)
	_ shardflow.LeaseLeaver     = (*Instance)(nil)

	_ shardflow.PipelineMeterProvider = (*Instance)(nil)
)

// Instance returns a new instance view of s named owner (a unique id is made
// up when owner is ""). An Instance made with the name of an earlier one
// stands for a restart of the same process: at its first SyncLeases it
// takes that one's heartbeat entry and leases, and the earlier Instance's
// next SyncLeases fails with *checkpoint.OwnerConflictError. It fails only
// on bad options, with a *shardflow.ConfigError.
func (s *Store) Instance(owner string, optFns ...func(*InstanceOptions)) (*Instance, error) {
	var o InstanceOptions
	for _, fn := range optFns {
		fn(&o)
	}
	if err := lease.Resolve(&o.LeaseOptions, "InstanceOptions"); err != nil {
		return nil, err
	}
	if owner == "" {
		owner = lease.DefaultOwner()
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	m, err := lease.New(memTable{s}, lease.Options{Owner: owner, LeaseOptions: o.LeaseOptions, Logger: scope(log, owner),
		MeterProvider: o.MeterProvider})
	if err != nil {
		return nil, err
	}
	return &Instance{s: s, m: m, ownLog: o.Logger != nil, ownMP: o.MeterProvider != nil}, nil
}

func scope(l *slog.Logger, owner string) *slog.Logger {
	return l.With("component", "memory.store", "owner", owner)
}

// UsePipelineLogger makes l the instance's logger if InstanceOptions.Logger
// was nil. A Kinesis source calls it with its pipeline's logger before it
// starts; see [shardflow.PipelineLogger]. It is safe to call at any time.
func (in *Instance) UsePipelineLogger(l *slog.Logger) {
	if in.ownLog || l == nil {
		return
	}
	in.m.SetLogger(scope(l, in.m.Owner()))
}

// UsePipelineMeterProvider makes mp the provider of the instance's lease
// metrics if InstanceOptions.MeterProvider was nil. A Kinesis source calls
// it with its pipeline's provider before it starts; see
// [shardflow.PipelineMeterProvider]. It is safe to call at any time.
func (in *Instance) UsePipelineMeterProvider(mp metric.MeterProvider) {
	if in.ownMP || mp == nil {
		return
	}
	in.m.SetMeterProvider(mp)
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

// SyncLeases writes this instance's heartbeat when due (which keeps every
// lease it holds), takes free and expired leases, balances with the other
// instances, and returns the eligible shards it holds. See
// [shardflow.Leaser]. Once a newer Instance with the same owner name synced,
// it fails with a permanent *checkpoint.OwnerConflictError.
func (in *Instance) SyncLeases(ctx context.Context, stream string, eligible []string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return in.m.Sync(ctx, stream, eligible)
}

// RecordLoad adds what one read of a shard returned to the shard's measured
// load, by which the Instances balance their leases (see
// [shardflow.LoadRecorder]). It is cheap and never blocks.
func (in *Instance) RecordLoad(stream, shardID string, records, bytes int) {
	in.m.RecordLoad(stream, shardID, records, bytes)
}

// Leave removes the instance from the group's heartbeat item, so that the
// other Instances count it gone at once (see [shardflow.LeaseLeaver]). A
// later SyncLeases joins again. Leaving twice is not an error.
func (in *Instance) Leave(ctx context.Context) error { return in.m.Leave(ctx) }

// ReleaseLease frees this instance's lease of a shard; releasing a lease it
// does not hold is not an error.
func (in *Instance) ReleaseLease(ctx context.Context, stream, shardID string) error {
	return in.m.Release(ctx, stream, shardID)
}

// LeaseSyncInterval is how often the source calls SyncLeases:
// RenewInterval/2.
func (in *Instance) LeaseSyncInterval() time.Duration { return in.m.SyncInterval() }

// LeaseDuration is the most time between an instance's last heartbeat and
// the moment others may take its leases (it gives them up a RenewInterval
// sooner).
func (in *Instance) LeaseDuration() time.Duration { return in.m.LeaseDuration() }

// ResetCheckpoint is [Store.ResetCheckpoint] of the instance's store.
func (in *Instance) ResetCheckpoint(ctx context.Context, stream, shardID string) error {
	return in.s.ResetCheckpoint(ctx, stream, shardID)
}

// LeaseOwners returns the owner of every lease of stream, by shard id ("" for
// a free lease), for assertions.
func (s *Store) LeaseOwners(stream string) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string)
	for k, r := range s.leases {
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
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count("UpdateItem", 1)
	k := key{stream, shardID}
	delete(s.cps, k)
	if r := s.leases[k]; r != nil {
		r.owner, r.want = "", ""
		r.counter++
	}
	return nil
}

// leaseRec is a shard's lease, in Store.leases.
type leaseRec struct {
	owner   string
	counter int64
	want    string
}

// batchGetMax is the most keys one DynamoDB BatchGetItem takes: a lease read
// counts as one BatchGetItem per batchGetMax shards in Store.Calls.
const batchGetMax = 100

// memTable is the lease.Table of a Store.
type memTable struct{ s *Store }

func (t memTable) Leases(ctx context.Context, stream string, shardIDs []string) ([]lease.Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	t.s.count("BatchGetItem", int64((len(shardIDs)+batchGetMax-1)/batchGetMax))
	var out []lease.Lease
	for _, id := range shardIDs {
		if r := t.s.leases[key{stream, id}]; r != nil {
			out = append(out, lease.Lease{ShardID: id, Owner: r.owner, Counter: r.counter, Want: r.want})
		}
	}
	return out, nil
}

// Create creates the lease. The memory store keeps no renewal time
// (lease.Change.RenewedAt): it has no listing for operators to show it in,
// and the algorithm never reads it.
func (t memTable) Create(ctx context.Context, stream, shardID, owner string, _ time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	t.s.count("PutItem", 1)
	k := key{stream, shardID}
	if t.s.leases[k] != nil {
		return lease.ErrConflict
	}
	if t.s.leases == nil {
		t.s.leases = make(map[key]*leaseRec)
	}
	t.s.leases[k] = &leaseRec{owner: owner, counter: 1}
	return nil
}

func (t memTable) Update(ctx context.Context, stream, shardID string, cond lease.Cond, ch lease.Change) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	t.s.count("UpdateItem", 1)
	k := key{stream, shardID}
	r := t.s.leases[k]
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

// Beat is the heartbeat of an Instance: one UpdateItem in DynamoDB (and a
// PutItem the first time, which creates the item).
func (t memTable) Beat(ctx context.Context, m lease.Member, takeover bool) ([]lease.Member, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t.s.mu.Lock()
	if !t.s.beatsMade {
		t.s.beatsMade = true
		t.s.count("PutItem", 1)
	}
	t.s.count("UpdateItem", 1)
	t.s.mu.Unlock()
	return t.s.beats.Beat(ctx, m, takeover)
}

// Members reads the heartbeat item: one GetItem in DynamoDB.
func (t memTable) Members(ctx context.Context) ([]lease.Member, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t.s.mu.Lock()
	t.s.count("GetItem", 1)
	t.s.mu.Unlock()
	return t.s.beats.Members(ctx)
}

// Remove removes a heartbeat entry: one UpdateItem in DynamoDB.
func (t memTable) Remove(ctx context.Context, owner, inc string, beat int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t.s.mu.Lock()
	t.s.count("UpdateItem", 1)
	t.s.mu.Unlock()
	return t.s.beats.Remove(ctx, owner, inc, beat)
}
