package shardflow

import (
	"context"
	"time"
)

// CheckpointStore keeps the checkpoint of every shard.
//
// Implementations must be safe for concurrent use. The pipeline calls Save for
// a shard from one goroutine at a time and never moves a shard's checkpoint
// backwards; a store need not check either. Package checkpoint/memory has an
// in-process store; package checkpoint/checkpointtest has the conformance
// suite every store must pass.
type CheckpointStore interface {
	// Load returns the checkpoint saved for the shard; ok is false when none
	// was saved.
	Load(ctx context.Context, stream, shardID string) (cp Checkpoint, ok bool, err error)
	// Save records cp as the shard's checkpoint. A store that coordinates
	// shard ownership between instances returns an error wrapping
	// [ErrLeaseLost] when this instance no longer owns the shard; the pipeline
	// then stops that shard's lane without touching the checkpoint again.
	Save(ctx context.Context, stream, shardID string, cp Checkpoint) error
}

// Leaser is implemented by checkpoint stores that also decide which of
// several instances reads which shard (shard leases), like the DynamoDB
// store. A source whose store is a Leaser reads only the shards it holds,
// hands shards over when it stops holding them, and releases them when it
// shuts down, so that other instances take over at once.
//
// Save of a Leaser must be fenced: it fails with an error wrapping
// [ErrLeaseLost] when this instance no longer holds the shard's lease, so a
// stale owner can never overwrite the new owner's checkpoint.
type Leaser interface {
	// SyncLeases is called by the source at least every LeaseSyncInterval
	// with the shards of stream that may be read now (open or unfinished,
	// with every parent finished). It renews this instance's leases, takes
	// free and expired ones, balances with other instances, and returns the
	// shards this instance holds and should read. A shard it held before
	// and no longer returns must be closed by the source (final checkpoint)
	// and released: either its lease was lost, or another instance asked
	// for it.
	SyncLeases(ctx context.Context, stream string, eligible []string) (held []string, err error)
	// ReleaseLease gives up this instance's lease of a shard after the
	// shard's final checkpoint was saved. Releasing a lease this instance
	// does not hold is not an error.
	ReleaseLease(ctx context.Context, stream, shardID string) error
	// LeaseSyncInterval is how often SyncLeases must be called for this
	// instance to keep its leases.
	LeaseSyncInterval() time.Duration
	// LeaseDuration is how long a lease may go unrenewed before another
	// instance takes it. A source's hand-over must end well within it.
	LeaseDuration() time.Duration
}
