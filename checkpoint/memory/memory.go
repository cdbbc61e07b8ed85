// Package memory is an in-process [shardflow.CheckpointStore]: for unit tests
// and for pipelines that run in one process and may re-read a stream after a
// restart (at-least-once from the starting position).
//
// A Store is safe for concurrent use; several pipelines may share one. Its
// accessors Checkpoint and Checkpoints let tests assert where each shard was
// checkpointed:
//
//	store := memory.New()
//	// ... run a pipeline whose source uses store ...
//	cp, ok := store.Checkpoint("orders", "shardId-000000000000")
//
// A plain Store does not lease shards: every pipeline using it reads every
// shard. For tests of coordination without DynamoDB, [Store.Instance] gives
// each pipeline its own [Instance] of the store, a [shardflow.Leaser] running
// the DynamoDB store's lease algorithm over a lease table the Store owns:
//
//	a, err := store.Instance("a") // and store.Instance("b") for a second pipeline
//
// [InstanceOptions] follow the convention of every shardflow package: a zero
// field means its documented default (the lease timings are the
// checkpoint.LeaseOptions the DynamoDB store has too), a bad value is a
// *shardflow.ConfigError, and a nil Logger logs to the pipeline's logger,
// else to slog.Default(). Leases expire by the time package's clock, so an
// Instance can run inside a testing/synctest bubble, where lease durations pass
// at once.
//
// [Store.Calls] counts the table operations of a Store and its Instances by
// the name of the DynamoDB call each would be in the DynamoDB store
// (GetItem, PutItem, UpdateItem, BatchGetItem per 100 keys), so that the
// DynamoDB traffic of a group of instances can be predicted from a
// simulation on the memory store.
//
// # Metrics
//
// An Instance records the lease metrics of the DynamoDB store, through
// InstanceOptions.MeterProvider, else the provider of the pipeline whose
// source uses it, else the global OpenTelemetry provider; each has the
// attribute stream: shardflow.lease.held (gauge: leases held, those being
// handed over included), shardflow.lease.taken (free or
// expired leases taken), shardflow.lease.stolen (leases another instance
// handed over on request), shardflow.lease.handed_over (leases handed to
// another instance that asked), shardflow.lease.lost (leases lost without
// a hand-over) and shardflow.lease.renew_failures (heartbeats that
// failed). A plain Store records none.
package memory

import (
	"context"
	"maps"
	"sync"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/internal/lease"
)

// Store keeps checkpoints in a map, and the shard leases of its Instances.
// The zero Store is not usable; call New.
type Store struct {
	// mu guards every field, so that a fenced checkpoint of an Instance is
	// checked against its lease and written at once.
	mu     sync.Mutex
	cps    map[key]shardflow.Checkpoint
	n      int
	leases map[key]*leaseRec // made by the first lease of an Instance
	calls  map[string]int64  // by DynamoDB-equivalent call name; see Calls
	// beats is the heartbeat item of the Instances; it has its own lock.
	beats lease.Heartbeats
	// beatsMade is set once the heartbeat item exists (the DynamoDB store
	// creates it with a PutItem).
	beatsMade bool
}

type key struct{ stream, shard string }

// New returns an empty store.
func New() *Store {
	return &Store{cps: make(map[key]shardflow.Checkpoint), calls: make(map[string]int64)}
}

// Calls returns how many table operations the store has served, by the name
// of the DynamoDB call the DynamoDB store makes for the same operation, so
// that the table traffic of a group of Instances (for example a simulation of
// many instances in a testing/synctest bubble) compares with what it would
// cost in DynamoDB:
//
//   - "GetItem": a Load (of the Store or of an Instance), or a read of the
//     heartbeat item;
//   - "PutItem": a Save of the plain Store, the creation of a lease or of the
//     heartbeat item;
//   - "UpdateItem": a lease write (take, release, want, fenced checkpoint), a
//     heartbeat, a Leave, a ResetCheckpoint;
//   - "BatchGetItem": a read of lease items, one per 100 shards read at once
//     (the most one BatchGetItem takes).
//
// Calls refused by their condition count as DynamoDB counts them: made. The
// map is a copy; names with no call are absent. [Store.ResetCalls] sets every
// count back to zero.
func (s *Store) Calls() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.calls)
}

// ResetCalls sets the counts of [Store.Calls] back to zero, so that a test
// can measure the calls of an interval, such as after its instances settled.
func (s *Store) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.calls)
}

// count records n calls named call; s.mu is held.
func (s *Store) count(call string, n int64) {
	if n > 0 {
		s.calls[call] += n
	}
}

var _ shardflow.CheckpointStore = (*Store)(nil)

// Load returns the shard's checkpoint; ok is false when none was saved. It
// fails only when ctx is done.
func (s *Store) Load(ctx context.Context, stream, shardID string) (shardflow.Checkpoint, bool, error) {
	if err := ctx.Err(); err != nil {
		return shardflow.Checkpoint{}, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count("GetItem", 1)
	cp, ok := s.cps[key{stream, shardID}]
	return cp, ok, nil
}

// Save records the shard's checkpoint. It fails only when ctx is done.
func (s *Store) Save(ctx context.Context, stream, shardID string, cp shardflow.Checkpoint) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count("PutItem", 1)
	s.cps[key{stream, shardID}] = cp
	s.n++
	return nil
}

// Checkpoint returns the checkpoint saved for a shard, for assertions.
func (s *Store) Checkpoint(stream, shardID string) (shardflow.Checkpoint, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cp, ok := s.cps[key{stream, shardID}]
	return cp, ok
}

// Checkpoints returns a copy of every checkpoint of stream, by shard id, for
// assertions with go-cmp.
func (s *Store) Checkpoints(stream string) map[string]shardflow.Checkpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]shardflow.Checkpoint)
	for k, cp := range s.cps {
		if k.stream == stream {
			out[k.shard] = cp
		}
	}
	return out
}

// Saves returns how many times Save succeeded: tests use it to check that
// checkpoints are written at a bounded rate, not once per record.
func (s *Store) Saves() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// Reset deletes every checkpoint, as if the store were new.
func (s *Store) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	maps.DeleteFunc(s.cps, func(key, shardflow.Checkpoint) bool { return true })
	s.n = 0
}
