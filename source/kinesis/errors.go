package kinesissource

import (
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/smithy-go"
)

// ConfigError reports a Source built with bad options; New returns it.
type ConfigError struct {
	Field, Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("kinesissource: invalid configuration: %s: %s", e.Field, e.Reason)
}

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

// classify tells whether an API error is worth retrying and whether it is
// throttling. Errors Kinesis answers for bad requests or missing access are
// final; throttling, server errors and network errors are retried.
func classify(err error) (retryable, throttled bool) {
	var (
		pte *types.ProvisionedThroughputExceededException
		lee *types.LimitExceededException
		kte *types.KMSThrottlingException
	)
	switch {
	case errors.As(err, &pte), errors.As(err, &lee), errors.As(err, &kte):
		return true, true
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code := ae.ErrorCode()
		switch {
		case code == "ResourceNotFoundException", code == "AccessDeniedException",
			code == "InvalidArgumentException", code == "ValidationException",
			code == "ExpiredIteratorException", code == "ExpiredNextTokenException",
			code == "UnrecognizedClientException", code == "IncompleteSignature",
			strings.HasPrefix(code, "KMS"):
			return false, false
		case ae.ErrorFault() == smithy.FaultClient && code != "RequestTimeout":
			return false, false
		}
	}
	return true, false
}
