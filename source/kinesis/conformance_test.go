package kinesissource_test

import (
	"testing"

	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// readMode is a way the source reads a stream: the conformance cases run
// for each, on the in-memory fake, and must behave the same.
type readMode struct {
	name string
	opts func(*kinesissource.Options) // applied first to every source of a case
}

var readModes = []readMode{
	{"polling", func(*kinesissource.Options) {}},
	{"enhanced fan-out", func(o *kinesissource.Options) {
		o.EnhancedFanOut = &kinesissource.EnhancedFanOut{ConsumerName: "app"}
	}},
}

// TestConformance runs the source's behaviour cases for every read mode:
// the modes differ only in how records arrive, never in what the pipeline
// gets, where it resumes, or how shards end and move.
func TestConformance(t *testing.T) {
	cases := []struct {
		name string
		run  func(*testing.T, readMode)
	}{
		{"reads every shard once in order and checkpoints", testReadsEveryShardOnceInOrderAndCheckpoints},
		{"a restart resumes from the checkpoint without loss or repeat", testRestartResumesFromTheCheckpointWithoutLossOrRepeat},
		{"starting positions", testStartingPositions},
		{"KPL aggregates are de-aggregated", testKPLAggregatesAreDeaggregated},
		{"resuming inside an aggregate skips the user records done", testResumingInsideAnAggregateSkipsTheUserRecordsDone},
		{"resharding reads parents before children", testReshardingReadsParentsBeforeChildren},
		{"handing a shard to another instance loses and repeats nothing", testHandingAShardToAnotherInstanceLosesAndRepeatsNothing},
		{"a hand-over that times out still releases the lease", testAHandOverThatTimesOutStillReleasesTheLease},
		{"errors that stop the source", testErrorsThatStopTheSource},
		{"addressing by ARN and ListShards paging", testAddressingAndPaging},
	}
	for _, m := range readModes {
		t.Run(m.name, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) { c.run(t, m) })
			}
		})
	}
}
