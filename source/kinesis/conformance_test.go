package kinesissource_test

import (
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"

	"github.com/shardflow/shardflow/internal/awstest"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// readMode is a way the source reads a stream: the conformance cases run
// for each, on the in-memory fake, and must behave the same.
type readMode struct {
	name string
	opts func(*kinesissource.Options) // applied first to every source of a case
	// side: the source is made by NewStreams, and reads a second stream,
	// sideStream, with 2 empty shards, besides the case's: what a case
	// checks of its stream holds as well in a source of several streams.
	side bool
}

func polling(*kinesissource.Options) {}

func enhancedFanOut(o *kinesissource.Options) {
	o.EnhancedFanOut = &kinesissource.EnhancedFanOut{ConsumerName: "app"}
}

var readModes = []readMode{
	{name: "polling", opts: polling},
	{name: "enhanced fan-out", opts: enhancedFanOut},
	{name: "polling, two streams", opts: polling, side: true},
	{name: "enhanced fan-out, two streams", opts: enhancedFanOut, side: true},
}

// sideStream is the second stream of the readModes with side set, on the
// in-memory fake (on an emulator it gets a name of its own).
const sideStream = "side"

// newSource returns a source of the mode reading stream (and the side
// stream), with the mode's options applied first.
func (m readMode) newSource(t *testing.T, client kinesissource.API, stream string, optFns ...func(*kinesissource.Options)) *kinesissource.Source {
	t.Helper()
	optFns = append([]func(*kinesissource.Options){m.opts}, optFns...)
	if !m.side {
		return newSource(t, client, stream, optFns...)
	}
	var side string
	switch c := client.(type) {
	case *kinesisfake.Fake:
		side = sideStream
		_, err := c.CreateStream(t.Context(), &kinesis.CreateStreamInput{StreamName: aws.String(side), ShardCount: aws.Int32(2)})
		if _, exists := errors.AsType[*types.ResourceInUseException](err); err != nil && !exists {
			t.Fatal(err)
		}
	case *kinesis.Client:
		side = awstest.CreateStream(t, c, 2)
	default:
		t.Fatalf("no side stream on a %T", client)
	}
	src, err := kinesissource.NewStreams(client, []kinesissource.Stream{{Name: stream}, {Name: side}}, optFns...)
	if err != nil {
		t.Fatal(err)
	}
	return src
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
