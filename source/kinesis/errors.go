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

// ConsumerDeletedError is returned by Run when the enhanced fan-out
// consumer the source reads through does not exist: a ConsumerARN that
// was never registered or was deregistered, or a consumer deregistered
// while the source read through it (an operator, or another instance's
// DeregisterOnClose). Run does not register it again: a deregistered
// consumer is taken as a decision to stop reading through it.
type ConsumerDeletedError struct {
	Stream      string
	ConsumerARN string
	Err         error // Kinesis's error, a ResourceNotFoundException
}

func (e *ConsumerDeletedError) Error() string {
	return fmt.Sprintf("kinesissource: stream %q: enhanced fan-out consumer %s does not exist (deregistered?): %v", e.Stream, e.ConsumerARN, e.Err)
}

func (e *ConsumerDeletedError) Unwrap() error { return e.Err }

// ConsumerLimitError is returned by Run when it cannot register its
// enhanced fan-out consumer because the stream has all the consumers
// Kinesis allows (MaxConsumersPerStream, 20). Deregister one that is no
// longer used, or share a consumer name between instances of one
// application.
type ConsumerLimitError struct {
	Stream       string
	ConsumerName string
	Consumers    int   // registered to the stream when Run counted them
	Err          error // Kinesis's error, a LimitExceededException
}

func (e *ConsumerLimitError) Error() string {
	return fmt.Sprintf("kinesissource: stream %q: cannot register enhanced fan-out consumer %q: the stream has %d consumers, the most Kinesis allows: %v",
		e.Stream, e.ConsumerName, e.Consumers, e.Err)
}

func (e *ConsumerLimitError) Unwrap() error { return e.Err }
