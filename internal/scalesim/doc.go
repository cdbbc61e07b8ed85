// Package scalesim simulates a group of shardflow pipeline instances at
// scale — by default 1,000 shards read by 20 instances — in virtual time, to
// measure what the lease algorithm costs and how fast it reacts, long before
// a real stream and a real DynamoDB table would show it.
//
// The package has no API: it is its tests. Each runs inside a
// testing/synctest bubble, where time.Now, timers and sleeps are virtual, so
// minutes of a group's life pass in seconds of CPU and nothing talks to a
// network. In each bubble:
//
//   - the stream is an in-memory Kinesis (package shardflowtest/kinesisfake);
//   - checkpoints and leases are one checkpoint/memory Store, which runs the
//     DynamoDB store's lease algorithm over an in-process table and counts
//     its operations by the DynamoDB call each would be (memory.Store.Calls);
//   - each instance is a real pipeline: a Kinesis source (package
//     source/kinesis) whose Store is the instance's own memory.Instance, and
//     a sink that notes every record delivered, by sequence number.
//
// Between each source and its Instance sits a gate that notes which shards
// every lease sync gave the instance (the shards it reads), and that
// simulates a crash: from the crash on it refuses every call, so the crashed
// instance neither renews, checkpoints nor releases anything.
//
// # Scenarios
//
// "Balanced" means every shard is held by exactly one live instance and
// the shard counts of the instances are within ±1 of the mean; with a store
// that balances by load (one whose Instances implement
// shardflow.LoadRecorder), while records flow, it may instead mean the
// bytes/s written to each instance's shards are within ±20% of the mean.
//
//   - TestColdStart: every instance starts at once. Figures: the virtual time
//     until the group is balanced (goal 30s); table calls per shard per
//     minute idle (goal at most 2) and busy (a record a second on every
//     shard, checkpoints every 5s); records lost (must be 0).
//   - TestCrash: a quarter of the instances (5 of 20; 2 of 5) crash at once
//     while records flow. Figures: the virtual time until every shard is
//     read again, and until the survivors are balanced (goal 30s); the
//     longest any shard went unread (must stay within IdleInterval +
//     LeaseDuration + RenewInterval + 0.5s: the crashed instance's last
//     poll, the documented failover, the new reader's start); records
//     lost (must be 0) and read twice.
//   - TestHotShard: one shard gets 10× the records of each other one (and,
//     at 1,000 × 20, a second run with 10 such shards: one hot shard there
//     is within the goal even when leases are balanced by count). Figures:
//     the bytes/s read per instance over the last minute once a minute was
//     within the goal, the worst distance from the mean (goal ±20%), and
//     how many shards the readers of hot shards hold. The goal needs a
//     store that balances by load; with a count-only store the test reports
//     its figures and skips, saying so.
//
// Each scenario runs at 100 shards × 5 instances always (about a second of
// CPU, seconds under the race detector), and at 1,000 shards × 20 instances
// unless -short or the race detector is on (10 to 30 seconds of CPU each,
// under 1 GB; under the race detector it would take minutes and GBs). The
// figures are logged as tables:
//
//	go test -v -count=1 -run 'TestColdStart|TestCrash|TestHotShard' ./internal/scalesim/
//
// Times are virtual: what a group would see on real clocks if every call
// took no time. Runs vary a little (goroutine scheduling and the lease
// algorithm's random choices differ between runs; -count=10 shows the
// spread). The tests assert only correctness (nothing lost, every shard
// held once, a balance reached within a generous virtual bound) and the
// goals above, which are virtual times and call counts, never wall-clock
// times.
package scalesim
