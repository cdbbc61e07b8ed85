package shardflow

import (
	"errors"
	"fmt"

	"github.com/shardflow/shardflow/internal/retry"
)

var (
	// ErrLeaseLost is wrapped by errors of a [CheckpointStore] whose instance
	// no longer owns a shard, and returned by [Lane.Emit] once the lane's lease
	// was lost. The pipeline keeps running for its other shards.
	ErrLeaseLost = errors.New("shardflow: shard lease lost")

	// ErrLaneClosed is returned by [Lane.Emit] after the lane was ended,
	// closed or abandoned, or after the pipeline stopped.
	ErrLaneClosed = errors.New("shardflow: lane closed")

	// ErrShardOpen is returned by [Shards.Open] for a shard that already has an
	// open lane in this pipeline.
	ErrShardOpen = errors.New("shardflow: shard already open")

	// ErrDrainTimeout is returned by [Pipeline.Run] when records were still in
	// flight when [Options].DrainTimeout ran out. They were not checkpointed and
	// will be read again.
	ErrDrainTimeout = errors.New("shardflow: drain timed out with records in flight")

	// ErrAlreadyRun is returned by a second call of [Pipeline.Run].
	ErrAlreadyRun = errors.New("shardflow: pipeline already run")

	// ErrCredentials is wrapped by the errors of sources, sinks and stores
	// when AWS refused the credentials (expired, unknown, a bad signature)
	// or when none could be found. It is never retried: renew the
	// credentials, or fix how the client finds them, and start again.
	ErrCredentials = errors.New("shardflow: AWS credentials refused or missing")
)

// StageError is the error of a record that failed a stage for good (after its
// retries, with no dead-letter handler, or when the dead-letter handler failed
// too). [Pipeline.Run] returns it, and the record's shard is not checkpointed at
// or after Position.
type StageError struct {
	// Stage is the stage name: given by [WithName], or its kind and place in
	// the pipeline, like "map#2" or "sink".
	Stage string
	// Stream and ShardID say where the failed record was read from.
	Stream, ShardID string
	// Position is the failed record's position (the first record's, for a
	// batch).
	Position Position
	// Err is the handler's error.
	Err error
}

func (e *StageError) Error() string {
	return fmt.Sprintf("stage %q: shard %s/%s at sequence number %s: %v",
		e.Stage, e.Stream, e.ShardID, positionString(e.Position), e.Err)
}

func (e *StageError) Unwrap() error { return e.Err }

// PanicError is the error of a handler that panicked. It is never retried.
type PanicError struct {
	// Value is what the handler panicked with.
	Value any
	// Stack is the goroutine's stack at the panic.
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.Value) }

// ConfigError reports a pipeline built with bad options. [Pipeline.Run] returns
// it before anything runs.
type ConfigError struct {
	// Field names the option or stage at fault.
	Field string
	// Reason says what is wrong.
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("shardflow: invalid configuration: %s: %s", e.Field, e.Reason)
}

// Permanent marks err as not worth retrying: the stage skips its remaining
// retries and applies its failure policy at once. errors.Is and errors.As see
// through it to err.
func Permanent(err error) error { return retry.Permanent(err) }

func positionString(p Position) string {
	if p.SequenceNumber == "" {
		return "(none)"
	}
	if p.SubSequenceNumber != 0 || p.Partial {
		return fmt.Sprintf("%s/%d", p.SequenceNumber, p.SubSequenceNumber)
	}
	return p.SequenceNumber
}
