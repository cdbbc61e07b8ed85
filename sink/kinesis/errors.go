package kinesissink

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

var (
	// ErrClosed is returned by Write, Put and Flush after Close, and wrapped
	// by the [*PutError] of a record that Close gave up on because its
	// context ended first.
	ErrClosed = errors.New("kinesissink: closed")

	// ErrAttemptsExhausted is matched by the [*PutError] of a record that
	// still failed with a retryable error once [Options].Retry.Timeout had
	// passed since its first failure, after [Options].Retry.MaxAttempts
	// attempts, or once its [Options].RecordTTL ran out. Its cause is then
	// an [*ExhaustedError] naming the limit.
	ErrAttemptsExhausted = errors.New("kinesissink: retries exhausted")
)

// ExhaustedError is the cause of a record the sink gave up on after
// retryable failures (throttling, internal errors, network errors): it names
// the limit that ended the retries and wraps the last failure. It matches
// [ErrAttemptsExhausted].
type ExhaustedError struct {
	// Limit is the option that ended the retries: "Retry.Timeout" (the
	// outage budget), "Retry.MaxAttempts" or "RecordTTL".
	Limit string
	// Budget is the value of Retry.Timeout (resolved: 5 minutes when
	// zero) or RecordTTL; 0 for Retry.MaxAttempts.
	Budget time.Duration
	// Attempts is the number of PutRecords calls that carried the record.
	Attempts int
	// Err is the last failure.
	Err error
}

func (e *ExhaustedError) Error() string {
	switch e.Limit {
	case "Retry.Timeout":
		return fmt.Sprintf("kinesissink: retries exhausted: still failing %v (Retry.Timeout, the outage budget) after the first failure: %v", e.Budget, e.Err)
	case "RecordTTL":
		return fmt.Sprintf("kinesissink: retries exhausted: not written within RecordTTL (%v) of being accepted: %v", e.Budget, e.Err)
	}
	return fmt.Sprintf("kinesissink: retries exhausted: %d attempts (Retry.MaxAttempts): %v", e.Attempts, e.Err)
}

func (e *ExhaustedError) Unwrap() error { return e.Err }

// Is makes an ExhaustedError match ErrAttemptsExhausted.
func (e *ExhaustedError) Is(target error) bool { return target == ErrAttemptsExhausted }

// ValidationError reports an entry Kinesis would refuse. It is returned by
// Write (wrapped with shardflow.Permanent, so the pipeline does not retry it)
// and by Put, before anything is sent: the entry was not taken.
type ValidationError struct {
	// Field is the entry field at fault: "PartitionKey", "ExplicitHashKey"
	// or "Data" (empty, or the record is too large).
	Field string
	// Reason says what is wrong.
	Reason string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("kinesissink: invalid entry: %s %s", e.Field, e.Reason)
}

// PutError is the final failure of one record: Kinesis refused it with a
// non-retryable error, its retries ran out, or the sink was closed before it
// was written. It is what the record's Ack (in a pipeline) or result (of a
// Producer) gets.
type PutError struct {
	// Stream is the stream the record was for.
	Stream string
	// PartitionKey is the record's partition key.
	PartitionKey string
	// ErrorCode and ErrorMessage are Kinesis' per-entry error, when the
	// last attempt failed with one ("ProvisionedThroughputExceededException",
	// "InternalFailure", ...); empty when the whole request failed.
	ErrorCode, ErrorMessage string
	// Attempts is the number of PutRecords calls that carried the record.
	Attempts int
	// Err is the cause: the request's error (wrapping
	// shardflow.ErrCredentials when AWS refused the credentials or none were
	// found, which is never retried), an *EntryError for a per-entry
	// failure, an *ExhaustedError when the retries ran out, or an error
	// wrapping ErrClosed.
	Err error
}

func (e *PutError) Error() string {
	return fmt.Sprintf("put record with partition key %.40q to %q after %d attempt(s): %v", e.PartitionKey, e.Stream, e.Attempts, e.Err)
}

func (e *PutError) Unwrap() error { return e.Err }

// EntryError is a per-entry failure reported by PutRecords.
type EntryError struct {
	Code, Message string
}

func (e *EntryError) Error() string { return e.Code + ": " + e.Message }

// BatchError reports the records a [Producer] could not write: one
// [*PutError] per record. Flush and Close return it for records that were put
// without a result callback.
type BatchError struct {
	// Errors holds the first records' errors, at most 100 of them.
	Errors []*PutError
	// Failed is the number of failed records, listed or not.
	Failed int
}

func (e *BatchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kinesissink: %d record(s) not written", e.Failed)
	if len(e.Errors) > 0 {
		fmt.Fprintf(&b, "; first: %v", e.Errors[0])
	}
	return b.String()
}

// Unwrap returns the per-record errors, so errors.Is and errors.As see them.
func (e *BatchError) Unwrap() []error {
	out := make([]error, len(e.Errors))
	for i, pe := range e.Errors {
		out[i] = pe
	}
	return out
}
