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
// With the defaults an instance that dies without releasing its leases has
// them taken by the others within LeaseDuration + RenewInterval (13.3s):
// they notice its last renewal at most RenewInterval/2 after it, call the
// lease expired LeaseDuration later, and take it at their next sync, at
// most RenewInterval/2 after that.
type LeaseOptions struct {
	// LeaseDuration is how long a lease may go unrenewed before other
	// instances take it. Default: 10s.
	LeaseDuration time.Duration

	// RenewInterval is how often each held lease is renewed (one
	// conditional write). The source syncs leases every RenewInterval/2
	// (the store's LeaseSyncInterval). Default: LeaseDuration/3. At most
	// LeaseDuration/2, at least 2ms.
	RenewInterval time.Duration

	// HandoffTimeout bounds how long an instance keeps renewing a lease
	// that another instance asked for, while its source finishes the
	// records in flight, saves the final checkpoint and releases the lease.
	// After it the lease expires like an abandoned one. Keep it at least
	// the source's own HandoffTimeout (half of LeaseDuration by default).
	// Default: 40s.
	HandoffTimeout time.Duration
}
