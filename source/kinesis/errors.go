package kinesissource

import (
	"fmt"
)

// CheckpointExpiredError is returned by Run when Kinesis refuses a shard's
// checkpoint as a starting point, typically because it is older than the
// stream's retention period: the records between it and the trim horizon
// are gone. Set Options.FallbackToTrimHorizon to go on from the trim horizon
// instead.
type CheckpointExpiredError struct {
	Stream, ShardID string
	Checkpoint      string // the sequence number refused
	Err             error  // Kinesis's error
}

func (e *CheckpointExpiredError) Error() string {
	return fmt.Sprintf("kinesissource: shard %s/%s: checkpoint at sequence number %s refused (older than the stream's retention?): %v",
		e.Stream, e.ShardID, e.Checkpoint, e.Err)
}

func (e *CheckpointExpiredError) Unwrap() error { return e.Err }
