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
	// LeaseDuration is about how long after an instance stops proving
	// itself alive (a renewal, or a heartbeat for stores that keep one per
	// instance) others take its leases. A source's hand-over must end well
	// within it.
	LeaseDuration() time.Duration
}

// LoadRecorder is implemented by leasing stores that balance shard leases by
// load (records and bytes read per second) rather than only by count, like
// the DynamoDB store. A source whose store is a LoadRecorder calls
// RecordLoad after every successful read of a shard it holds, with what the
// read returned (records as stored in the stream, before any
// de-aggregation, and their bytes). It must be cheap and must not block:
// it is called on every read.
type LoadRecorder interface {
	RecordLoad(stream, shardID string, records, bytes int)
}

// LeaseLeaver is implemented by leasing stores that keep a record of each
// live instance (the DynamoDB store keeps one heartbeat per instance). A
// source whose store is a LeaseLeaver calls Leave once when it stops, after
// releasing its leases, so that the other instances count it gone at once
// instead of after LeaseDuration. Leave must be safe to call more than once.
type LeaseLeaver interface {
	Leave(ctx context.Context) error
}
