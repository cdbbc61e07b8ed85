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
// HandoffTimeout) are the checkpoint.LeaseOptions embedded in [Options],
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
//	lease_counter         N     bumped by every renew, take and release
//	lease_wanted_by       S     owner id of an instance that asked for the lease (handoff)
//	lease_renewed_at      S     owner's UTC time of its last take or renewal, for people only
//	checkpoint            S     sequence number (absent for SHARD_END of an unread shard)
//	sub_sequence_number   N     KPL user record within that record
//	partial               BOOL  more user records of that aggregate follow
//	shard_end             BOOL  the shard was read to its end
//	checkpoint_saved_at   S     UTC time of the last save, for people only
//
// The two times are RFC 3339 on the writer's wall clock (lease_renewed_at
// with exactly three fractional digits, like "2026-12-01T09:14:03.250Z").
// lease_renewed_at is written by the take's or renewal's own conditional
// write and removed by a release; items written by older versions lack it.
// [Store.Shards] returns both, for operators: the renewal time plus
// LeaseDuration is roughly when an unrenewed lease expires (shardflow status
// shows it), as far as the owner's clock is right. The instances never read
// it: they judge expiry by the counter, on their own clocks.
//
// A missing table or one with another key schema fails the store's first
// call (or [Store.Check]) with a *TableError wrapping [ErrNoTable] or
// [ErrKeySchema].
//
// # Leases
//
// Every write is conditional on the owner and counter the writer expects:
// creating a lease on attribute_not_exists, renew, take and checkpoint on
// "owner and counter unchanged", release on "owner is me". So two instances
// never hold one lease, and an instance that lost a lease can never
// overwrite the new owner's checkpoint: its Save fails with an error
// wrapping shardflow.ErrLeaseLost (fencing). Reads are strongly consistent.
//
// Conditional writes are sent once, whatever retryer the client has (a
// per-call option sets aws.NopRetryer): a write DynamoDB applied but whose
// answer was lost, re-sent, would fail its condition. The store retries them
// itself, and when a write fails its condition it re-reads the item: if the
// item shows the write (an earlier attempt landed), it succeeded; if the
// item names this instance with a later counter (a renewal whose answer was
// lost, or that was cancelled at shutdown, landed), the write is made again
// from that counter. So a final checkpoint and a release at shutdown go
// through after such a renewal, and a lease is reported lost (logged "lease
// lost" with the new owner) only when the table names another owner.
//
//   - Renew: each held lease every RenewInterval (default LeaseDuration/3).
//   - Expiry: each instance notes on its own monotonic clock when it last
//     saw a lease's owner or counter change; a lease unchanged for
//     LeaseDuration (default 10s) is expired. Wall clocks are never compared.
//   - Take: free and expired leases, up to ceil(shards / live instances),
//     where live instances are the owners of unexpired leases.
//   - Balance: an instance below that target asks the busiest instance for
//     one lease at a time (lease_wanted_by) while that one holds at least
//     two more than it, so the split ends at most one apart; an instance
//     that lost every lease (cut off from DynamoDB for a while) gets its
//     share back this way. The
//     owner's source stops reading that shard, waits for its records in
//     flight, saves the final checkpoint and releases the lease; then the
//     asking instance takes it. An owner that does not release within
//     HandoffTimeout stops renewing, and the lease expires.
//   - Shutdown: the source checkpoints and releases every lease, so others
//     take over at their next sync.
//
// Defaults: after kill -9 other instances take its shards within
// LeaseDuration + RenewInterval = 13.3s (they notice its last renewal at most
// RenewInterval/2 late, and sync every RenewInterval/2). A DynamoDB outage
// shorter than the lease duration loses no lease: renews are retried within
// a sync until the lease would expire.
//
// DynamoDB calls in steady state, per instance: one BatchGetItem per 100
// shards every RenewInterval/2 (36 a minute), one UpdateItem per held lease
// every RenewInterval (18 a minute per shard), and the checkpoints the
// pipeline saves (at most one UpdateItem per shard per CheckpointInterval,
// 12 a minute at the default 5s); the Kinesis source also reads (GetItem),
// at each discovery (every 10s by default), the checkpoint of each closed
// shard not yet known to be finished, to tell whether its children may be
// read. Open shards cost no discovery read.
//
// # Metrics
//
// The store records its lease metrics through the OpenTelemetry metric API:
// with Options.MeterProvider, else the provider of the pipeline whose
// source uses the store (handed over like the logger), else the global
// provider. Each has the attribute stream, never a key or a checkpoint:
//
//	shardflow.lease.held            gauge    {lease}  leases held and renewed, those being handed over included
//	shardflow.lease.taken           counter  {lease}  free or expired leases taken
//	shardflow.lease.stolen          counter  {lease}  leases taken from a live owner that handed them over on request (balancing)
//	shardflow.lease.handed_over     counter  {lease}  leases handed over to another instance that asked
//	shardflow.lease.lost            counter  {lease}  leases lost without a hand-over: taken, freed or reset by another, or not renewed for LeaseDuration
//	shardflow.lease.renew_failures  counter  {call}   renewals due that failed: the table could not be read or written in time
//
// A steady lost count, or renew_failures, means an instance cannot keep its
// leases (an overloaded process, or DynamoDB throttling); taken and stolen
// rise when instances come and go.
package dynamostore
