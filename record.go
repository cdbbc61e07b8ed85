package shardflow

import "time"

// Position locates a record within its shard.
//
// Sequence numbers are decimal strings of up to 129 digits; compare them as
// big integers, never as strings. Positions are opaque to the pipeline core: it
// tracks records in the order the source emitted them and stores the position
// of the last contiguous finished record as the shard's checkpoint.
type Position struct {
	// SequenceNumber is the Kinesis sequence number of the record.
	SequenceNumber string
	// SubSequenceNumber is the index of a user record inside a KPL aggregated
	// record (0 for plain records).
	SubSequenceNumber uint64
	// Partial reports that the Kinesis record at SequenceNumber holds further
	// user records after SubSequenceNumber (it is a KPL aggregate that was not
	// finished). A source resuming from a partial checkpoint must read the
	// record again (AT_SEQUENCE_NUMBER) and skip the user records up to and
	// including SubSequenceNumber; otherwise it resumes after it.
	Partial bool
}

// IsZero reports whether p is the zero Position (no record).
func (p Position) IsZero() bool { return p == Position{} }

// Checkpoint is what a [CheckpointStore] keeps per shard: the position up to
// which every record is done, or the end of a closed shard.
type Checkpoint struct {
	Position
	// ShardEnd reports that every record of the shard is done and the shard is
	// closed (resharded): readers move on to its children.
	ShardEnd bool
}

// Record is one Kinesis record as Kinesis sources deliver it (after KPL
// de-aggregation, one Record per user record).
type Record struct {
	// Stream is the stream name.
	Stream string
	// ShardID is the id of the shard the record was read from.
	ShardID string
	// Data is the record payload. It is not copied: a handler that keeps it
	// beyond the pipeline must copy it.
	Data []byte
	// PartitionKey is the key the producer routed the record by.
	PartitionKey string
	// ExplicitHashKey is the producer's explicit hash key, if any (KPL
	// aggregated user records only).
	ExplicitHashKey string
	// SequenceNumber is the Kinesis sequence number (of the aggregate, for a
	// KPL user record).
	SequenceNumber string
	// SubSequenceNumber is the index of a KPL user record in its aggregate.
	SubSequenceNumber uint64
	// ApproximateArrivalTimestamp is when Kinesis accepted the record.
	ApproximateArrivalTimestamp time.Time
}
