package kinesissink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/shardflow/shardflow"
)

// DeadLetterRecord is the JSON document [DeadLetterTo] writes for each value
// a stage failed: where it was read, where and how it failed, and the value.
type DeadLetterRecord struct {
	// Stream and ShardID name the shard the value's record was read from.
	Stream  string `json:"stream"`
	ShardID string `json:"shard_id"`
	// SequenceNumber and SubSequenceNumber are the record's position (the
	// first record's, for a batch).
	SequenceNumber    string `json:"sequence_number"`
	SubSequenceNumber uint64 `json:"sub_sequence_number"`
	// Records are the positions of every record of a batch, in order;
	// omitted for a value of one record.
	Records []DeadLetterPosition `json:"records,omitempty"`
	// Stage is the name of the stage the value failed.
	Stage string `json:"stage"`
	// Attempts is how many calls held the value (see shardflow.DeadLetter).
	Attempts int `json:"attempts"`
	// FirstError and LastError are the errors of its first and last call.
	FirstError string `json:"first_error"`
	LastError  string `json:"last_error"`
	// ArrivedAt is when the record arrived in its stream (Kinesis'
	// ApproximateArrivalTimestamp); omitted when the source did not say.
	ArrivedAt time.Time `json:"arrived_at,omitzero"`
	// DeadLetteredAt is when the dead-letter handler took the value.
	DeadLetteredAt time.Time `json:"dead_lettered_at"`
	// Value is the encoded value when it is JSON; Data (base64 in the
	// document) is the encoded value when it is not. One of them is set.
	Value json.RawMessage `json:"value,omitempty"`
	Data  []byte          `json:"data,omitempty"`
}

// DeadLetterPosition is the position of one record of a dead-lettered batch.
type DeadLetterPosition struct {
	SequenceNumber    string `json:"sequence_number"`
	SubSequenceNumber uint64 `json:"sub_sequence_number"`
}

// DeadLetterTo returns a dead-letter handler (see shardflow.Stream.DeadLetter)
// that writes each failed value through sink, to sink's stream, as one JSON
// [DeadLetterRecord]: the value, encoded by encode, with its provenance (the
// *shardflow.DeadLetter the stage hands over). The partition key is the
// shard the record was read from, so a shard's dead letters stay in order.
//
//	dlq, err := kinesissink.NewFromConfig(cfg, "orders-dlq")
//	...
//	records.DeadLetter(kinesissink.DeadLetterTo[shardflow.Record](dlq, nil)).Map(decode)
//
// A nil encode means encoding/json (json.Marshal of the value). The handler
// returns once Kinesis wrote the document (it flushes sink, not waiting for
// the linger), so the failed record counts as done only once its dead
// letter is durable; when sink gives up on it, or encode fails, the handler
// returns the error and the pipeline stops, as for any dead-letter handler
// that fails. A document larger than the sink's Options.MaxRecordBytes is
// refused the same way.
//
// Give dead letters a Sink of their own, not the pipeline's sink: the
// handler also runs for values that sink failed, on the sink's own
// goroutines. The handler is safe for concurrent use, as the pipeline
// requires.
func DeadLetterTo[T any](sink *Sink, encode func(T) ([]byte, error)) func(ctx context.Context, v T, err error) error {
	if encode == nil {
		encode = func(v T) ([]byte, error) { return json.Marshal(v) }
	}
	return func(ctx context.Context, v T, cause error) error {
		doc, err := deadLetterRecord(v, cause, encode)
		if err != nil {
			return err
		}
		data, err := json.Marshal(doc)
		if err != nil {
			return fmt.Errorf("dead letter: encode the document: %w", err)
		}
		key := doc.ShardID
		if key == "" {
			key = "dead-letter"
		}
		done := make(chan error, 1)
		if err := sink.e.accept(ctx, Entry{Data: data, PartitionKey: key}, noAck, func(r Result) { done <- r.Err }); err != nil {
			return fmt.Errorf("dead letter: %w", err)
		}
		if err := sink.e.flush(ctx); err != nil {
			return fmt.Errorf("dead letter: %w", err)
		}
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("dead letter: %w", err)
			}
			return nil
		case <-ctx.Done():
			return fmt.Errorf("dead letter: %w", context.Cause(ctx))
		}
	}
}

// deadLetterRecord builds the document of v, failed with cause.
func deadLetterRecord[T any](v T, cause error, encode func(T) ([]byte, error)) (*DeadLetterRecord, error) {
	b, err := encode(v)
	if err != nil {
		return nil, fmt.Errorf("dead letter: encode the value: %w", err)
	}
	doc := &DeadLetterRecord{DeadLetteredAt: time.Now().UTC(), LastError: cause.Error(), FirstError: cause.Error(), Attempts: 1}
	if json.Valid(b) {
		doc.Value = b
	} else {
		doc.Data = b
	}
	dl, ok := errors.AsType[*shardflow.DeadLetter](cause)
	if !ok {
		return doc, nil
	}
	doc.Stream, doc.ShardID, doc.Stage, doc.Attempts = dl.Stream, dl.ShardID, dl.Stage, dl.Attempts
	doc.SequenceNumber, doc.SubSequenceNumber = dl.Position.SequenceNumber, dl.Position.SubSequenceNumber
	if dl.FirstErr != nil {
		doc.FirstError = dl.FirstErr.Error()
	}
	doc.ArrivedAt = dl.Arrival
	if len(dl.Records) > 1 {
		doc.Records = make([]DeadLetterPosition, len(dl.Records))
		for i, p := range dl.Records {
			doc.Records[i] = DeadLetterPosition{SequenceNumber: p.SequenceNumber, SubSequenceNumber: p.SubSequenceNumber}
		}
	}
	return doc, nil
}
