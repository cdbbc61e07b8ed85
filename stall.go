package shardflow

import (
	"errors"
	"fmt"
	"time"
)

// StallReport describes a shard the watchdog found stalled (see
// [Options].StallTimeout), or one that moved again.
type StallReport struct {
	// Stream and ShardID name the shard.
	Stream, ShardID string
	// Stage is where the shard is held: the name of the stage holding its
	// oldest unfinished record (as in [StageError]), "queue" when the record
	// waits for the shard's goroutine (or for its key worker, after
	// [ByKey]), or "source" when the source made no successful read.
	Stage string
	// Detail says what the stage is doing, for the log: the function a
	// blocked handler is in, or that the sink has not acknowledged.
	Detail string
	// Position is the oldest unfinished record's (zero for a stalled source).
	Position Position
	// InFlight is the number of the shard's records read and not finished.
	InFlight int
	// For is how long the shard has gone without progress.
	For time.Duration
	// Recovered is set on the report that the shard moves again.
	Recovered bool
}

// Status is a snapshot of a pipeline, for health checks and status pages.
type Status struct {
	// Running is set from the start of [Pipeline.Run] until it returns.
	Running bool
	// Draining is set once the pipeline stops reading and drains.
	Draining bool
	// Shards are the shards with an open lane, by stream and shard id.
	Shards []ShardStatus
}

// ShardStatus is the state of one shard of a running pipeline.
type ShardStatus struct {
	Stream, ShardID string
	// InFlight is the number of records read and not finished.
	InFlight int
	// CheckpointLag is how long the oldest unfinished record has been in
	// the pipeline (0 when none is): the age of the work the checkpoint
	// waits for.
	CheckpointLag time.Duration
	// Checkpoint is the position up to which every record is finished (it
	// may not be saved yet).
	Checkpoint Position
	// Stall is the watchdog's report while the shard is stalled, else nil.
	Stall *StallReport
}

// Status returns a snapshot of the pipeline. It is safe to call at any
// time from any goroutine; before Run and after it returned, Running is
// false and Shards is empty.
func (pl *Pipeline) Status() Status {
	r := pl.cur.Load()
	if r == nil {
		return Status{}
	}
	return r.status()
}

// ReadySource is implemented by sources that can tell whether they read
// everything they should, such as the Kinesis source (it listed its shards,
// holds its leases and runs a reader for each). [Pipeline.Ready] asks it.
type ReadySource interface {
	Ready() error
}

// Ready reports whether the pipeline is serving, for a readiness probe: it
// returns nil while Run runs and does not drain, no shard is stalled, and
// the source, when it is a [ReadySource], is ready; otherwise an error with
// one line per reason. It is safe to call at any time from any goroutine.
func (pl *Pipeline) Ready() error {
	st := pl.Status()
	var errs []error
	switch {
	case !st.Running:
		errs = append(errs, errors.New("the pipeline is not running"))
	case st.Draining:
		errs = append(errs, errors.New("the pipeline is draining"))
	}
	for _, sh := range st.Shards {
		if s := sh.Stall; s != nil {
			errs = append(errs, fmt.Errorf("shard %s of stream %q is stalled at stage %s for %v",
				sh.ShardID, sh.Stream, s.Stage, s.For.Round(time.Second)))
		}
	}
	if rs, ok := pl.p.src.(ReadySource); ok && st.Running {
		if err := rs.Ready(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
