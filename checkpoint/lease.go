// Package checkpoint holds what the checkpoint stores share. The stores
// themselves live below it: package checkpoint/memory keeps checkpoints (and,
// through its Instances, shard leases) in process; package checkpoint/dynamodb
// keeps them in a DynamoDB table shared by every instance of a pipeline; and
// package checkpoint/checkpointtest is the conformance suite every store
// passes.
//
// Both leasing stores run the same lease algorithm, configured by the same
// [LeaseOptions], which they embed in their own options: the DynamoDB store
// in dynamostore.Options, the memory store in memory.InstanceOptions.
package checkpoint

import "time"

// LeaseOptions configure the shard leases of a leasing checkpoint store
// (a [github.com/shardflow/shardflow.Leaser]). The zero value of each field means its documented
// default; negative values are refused by the store's constructor with a
// *shardflow.ConfigError.
//
// Each instance proves itself alive with one heartbeat every RenewInterval
// (one write to a shared item, whatever the number of leases it holds);
// lease items are written only when a lease changes hands and when a
// checkpoint is saved. An instance holds its leases while its heartbeat
// succeeds: when none succeeded for LeaseDuration less one RenewInterval
// (from when it was sent) it stops reading every shard. The others see each
// member's heartbeat at each of their own, up to a RenewInterval after it
// was written; a member whose heartbeat did not change for LeaseDuration
// less one RenewInterval on the observer's clock is dead, and its leases
// are taken at once.
//
// With the defaults an instance that dies without releasing its leases has
// them taken by the others at most LeaseDuration plus a sync interval
// (RenewInterval/2) after its last heartbeat, 9.3s: an observer checks a
// member about to expire at its next sync, with one read of the heartbeat
// item. A table outage (or a stall of the instance) shorter than
// LeaseDuration less two RenewIntervals (2.7s) costs no lease; one shorter
// than LeaseDuration less one RenewInterval (5.3s) does not when it starts
// just after a heartbeat.
type LeaseOptions struct {
	// LeaseDuration is the most time between an instance's last heartbeat
	// and the moment the others may take its leases; the instance itself
	// gives them up one RenewInterval sooner when its heartbeat cannot be
	// written. Default: 8s.
	LeaseDuration time.Duration

	// RenewInterval is how often each instance writes its heartbeat (one
	// conditional write per instance, not per lease). The source syncs
	// leases every RenewInterval/2 (the store's LeaseSyncInterval).
	// Default: LeaseDuration/3. At most LeaseDuration/2, at least 2ms.
	RenewInterval time.Duration

	// HandoffTimeout bounds how long an instance keeps a lease that
	// another instance asked for, while its source finishes the records in
	// flight, saves the final checkpoint and releases the lease. After it
	// the instance frees the lease itself (its source's later checkpoints
	// of the shard are then refused). Keep it at least the source's own
	// HandoffTimeout (half of LeaseDuration by default). Default: 40s.
	HandoffTimeout time.Duration

	// MaxLeasesPerInstance caps the leases an instance holds, in all the
	// streams it syncs: it never takes nor asks for more. 0 means no limit. When the live instances
	// times the cap is less than the eligible shards, the rest of the
	// shards stay unread (the store logs a warning once).
	MaxLeasesPerInstance int
}
