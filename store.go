package shardflow

import "context"

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
