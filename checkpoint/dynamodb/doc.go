// Package dynamostore keeps checkpoints and shard leases in a DynamoDB table,
// so that several instances of a pipeline divide a stream's shards between
// them, fail over when one dies and hand shards over cleanly when they
// rebalance. (The directory is checkpoint/dynamodb; the package is named
// dynamostore so that it imports beside the SDK's dynamodb package.)
//
// Quick start:
//
//	cfg, err := config.LoadDefaultConfig(ctx)
//	if err != nil { ... }
//	store, err := dynamostore.NewFromConfig(cfg, "orders-state")
//	if err != nil { ... }
//	if err := store.CreateTable(ctx); err != nil { ... } // or create it by hand
//	src, err := kinesissource.NewFromConfig(cfg, "orders", func(o *kinesissource.Options) {
//		o.Store = store // a shardflow.Leaser: the source reads only the shards it holds
//	})
//
// [NewFromConfig] makes the DynamoDB client from cfg with no SDK retryer; [New]
// takes a client you built. Options follow one convention: a zero field
// means its documented default, and a bad value is a *shardflow.ConfigError
// from the constructor. The lease timings (LeaseDuration, RenewInterval,
// HandoffTimeout) and MaxLeasesPerInstance are the checkpoint.LeaseOptions
// embedded in [Options],
// the same as the memory store's. Calls that fail with throttling, server or
// network errors are retried under Options.Retry (see the README's "Retries
// and the outage budget"); lease writes within the lease they protect. A nil
// Options.Logger logs to the pipeline's logger when the store serves a
// pipeline's source, else to slog.Default().
//
// Delivery is at-least-once, in order per shard: a new owner resumes from the
// last saved checkpoint, so records processed since then by the old owner
// are processed again.
//
// # Table
//
// One HASH key of type S, named "shard" by default (Options.KeyAttribute; it
// is a DynamoDB reserved word, so every expression names it through
// ExpressionAttributeNames). One item per stream and shard, keyed
// "<stream>/<shard id>", so one table serves several streams:
//
//	shard                 S     "orders/shardId-000000000003"
//	stream, shard_id      S     for people reading the table
//	lease_owner           S     owner id of the instance holding the lease; absent when free
//	lease_counter         N     bumped by every take and release (older versions: every renewal too)
//	lease_wanted_by       S     owner id of the instance a released lease is reserved for (handoff)
//	lease_renewed_at      S     owner's UTC time of its take, for people only
//	checkpoint            S     sequence number (absent for SHARD_END of an unread shard)
//	sub_sequence_number   N     KPL user record within that record
//	partial               BOOL  more user records of that aggregate follow
//	shard_end             BOOL  the shard was read to its end
//	checkpoint_saved_at   S     UTC time of the last save, for people only
//
// and one heartbeat item, keyed "#instances" ([MembersKey]; no stream name
// contains '#'), created by the first instance that starts:
//
//	members               M     by owner id, one entry per live instance:
//	  i                   S       incarnation, random per process
//	  b                   N       heartbeat counter
//	  t                   S       UTC time of the heartbeat, for people only
//	  s                   M       by stream: l (M, shard id → bytes/s of each
//	                              shard it reads), b and r (N, its bytes/s and
//	                              records/s), w and f (S, the shards it asked
//	                              for, comma-separated, and their owner)
//
// The times are RFC 3339 on the writer's wall clock (with exactly three
// fractional digits, like "2026-12-01T09:14:03.250Z"). lease_renewed_at is
// written by the take's own conditional write and removed by a release;
// items written by older versions lack it. [Store.Shards] returns, for
// operators, the owner's last heartbeat time (else lease_renewed_at) and
// the checkpoint's time: the heartbeat time plus LeaseDuration is roughly
// when the lease expires if its owner stopped (shardflow status shows it),
// as far as the owner's clock is right. The instances never read it: they
// judge liveness by the heartbeat counter, on their own clocks.
// [Store.Members] lists the entries. Each entry holds the shards its
// instance reads: with 20 instances of 1,000 shards, about 1.5 KB each, 30
// KB in all (an item may hold 400 KB); a heartbeat, an UpdateItem, costs
// one write capacity unit per KB of the item.

// A missing table or one with another key schema fails the store's first
// call (or [Store.Check]) with a *TableError wrapping [ErrNoTable] or
// [ErrKeySchema].
//
// # Leases
//
// Every lease write is conditional on the owner and counter the writer
// expects: creating a lease on attribute_not_exists, take and checkpoint on
// "owner and counter unchanged", release on "owner is me". So two instances
// never hold one lease, and an instance that lost a lease can never
// overwrite the new owner's checkpoint: its Save fails with an error
// wrapping shardflow.ErrLeaseLost (fencing). Reads are strongly consistent.
//
// Conditional writes are sent once, whatever retryer the client has (a
// per-call option sets aws.NopRetryer): a write DynamoDB applied but whose
// answer was lost, re-sent, would fail its condition. The store retries them
// itself, and when a write fails its condition it re-reads the item: if the
// item shows the write (an earlier attempt landed), it succeeded. A lease
// is reported lost (logged "lease lost" with the new owner) only when the
// table names another owner or counter.
//
//   - Heartbeat: each instance writes its own entry of the heartbeat item
//     every RenewInterval (default LeaseDuration/3), one UpdateItem whatever
//     the number of leases it holds, conditional on its incarnation; the
//     answer (ReturnValues ALL_NEW) shows every member. An instance holds
//     its leases while its heartbeat succeeds, and gives them all up when
//     none did for LeaseDuration less one RenewInterval. Lease items are
//     not written to keep a lease.
//   - Expiry: each instance notes on its own monotonic clock when it last
//     saw each member's heartbeat counter change; a member unchanged for
//     LeaseDuration less one RenewInterval is dead (checked with one
//     GetItem of the heartbeat item when it would expire), and its leases
//     are taken at once. Wall clocks are never compared.
//   - Take: free and expired leases, up to ceil(shards / live instances),
//     where live instances are the members syncing the stream, those that
//     hold nothing included, and at most MaxLeasesPerInstance.
//   - Balance: by load (bytes/s the source reports through RecordLoad)
//     when the stream carries any, else by count: an instance below the
//     mean asks the busiest member, through its heartbeat entry, for
//     shards; the owner sees the request at its next heartbeat, its source
//     stops reading those shards, waits for their records in flight, saves
//     the final checkpoint and releases each lease, reserving it
//     (lease_wanted_by) for the asking instance, which then takes it. An
//     owner that does not release within HandoffTimeout frees the lease.
//     A shard whose load is more than half the gap between the two stays
//     put: the owner of a hot shard ends up reading fewer others. By
//     count, members short of their share divide the excess of every
//     member above it between them the same way on every instance (no two
//     ask for one shard), and counts are balanced across the streams of
//     the group too; MaxLeasesPerInstance counts every stream.
//   - Identity: Options.Owner is the instance's identity. Set it to a
//     stable name (the pod name, the host name) and a restarted process
//     takes back the leases of its previous run at its first sync, bumping
//     their counters so that checkpoints of the previous run, should it
//     still be alive, are refused; the previous run's next heartbeat is
//     refused and its SyncLeases fails with *checkpoint.OwnerConflictError
//     (two live processes with one owner id are reported, never share). The
//     default owner id is unique per process.
//   - Shutdown: the source checkpoints and releases every lease, then calls
//     [Store.Leave], which removes its heartbeat entry, so others take over
//     at their next heartbeat.
//
// Defaults (LeaseDuration 8s, RenewInterval 2.67s, syncs every 1.33s):
// after kill -9 other instances take its shards at most LeaseDuration
// plus a sync interval (9.3s) after its last heartbeat: they see the
// heartbeat at their own, up to a RenewInterval after it, and call it dead
// LeaseDuration less a RenewInterval after that. A DynamoDB outage shorter
// than LeaseDuration less two RenewIntervals (2.7s) never loses a lease;
// one shorter than LeaseDuration less one (5.3s) does not if it starts
// just after a heartbeat.
//
// DynamoDB calls, per instance: one UpdateItem (heartbeat) per
// RenewInterval (22.5 a minute, whatever the number of shards), one
// BatchGetItem per 100 shards every 3 × LeaseDuration (2.5 a minute), and
// reads and writes of lease items only when leases move; plus the
// checkpoints the pipeline saves (at most one UpdateItem per shard per
// CheckpointInterval, 12 a minute at the default 5s). The Kinesis source
// also reads (GetItem), at each discovery (every 10s by default), the
// checkpoint of each closed shard not yet known to be finished, to tell
// whether its children may be read. Open shards cost no discovery read.
//
// # Migration from versions that renew each lease
//
// Older versions renew every lease item every RenewInterval and know no
// heartbeat item. Tables need no change: this version reads their items as
// they are (an owner with no heartbeat entry is judged as before: its lease
// expires once the item did not change for LeaseDuration) and creates the
// heartbeat item at its first start. Stop every instance of the old
// version before starting this one: a mixed fleet is not supported (old
// instances see the new instances' leases as never renewed and take them;
// fencing keeps the checkpoints safe, but leases would move back and
// forth). An instance of this version that sees a lease item renewed by an
// owner with no heartbeat entry logs a warning naming that owner, once.
// The default LeaseDuration changed from 10s to 8s.
//
// # Metrics
//
// The store records its lease metrics through the OpenTelemetry metric API:
// with Options.MeterProvider, else the provider of the pipeline whose
// source uses the store (handed over like the logger), else the global
// provider. Each has the attribute stream, never a key or a checkpoint:
//
//	shardflow.lease.held            gauge    {lease}  leases held, those being handed over included
//	shardflow.lease.taken           counter  {lease}  free or expired leases taken
//	shardflow.lease.stolen          counter  {lease}  leases taken from a live owner that handed them over on request (balancing)
//	shardflow.lease.handed_over     counter  {lease}  leases handed over to another instance that asked
//	shardflow.lease.lost            counter  {lease}  leases lost without a hand-over: taken, freed or reset by another, or given up when the heartbeat lapsed
//	shardflow.lease.renew_failures  counter  {call}   heartbeats that failed: the table could not be written in time
//
// A steady lost count, or renew_failures, means an instance cannot keep its
// leases (an overloaded process, or DynamoDB throttling); taken and stolen
// rise when instances come and go, and with balancing by load.
package dynamostore
