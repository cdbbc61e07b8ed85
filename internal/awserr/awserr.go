// Package awserr is the one place in shardflow that says what an error of
// an AWS call means for a retry: worth retrying (a network error, a server
// error, throttling) or not (a bad request, a missing resource, refused or
// missing credentials). The source, the sink and the stores all ask it, so
// the same failure gets the same treatment everywhere.
package awserr

import (
	"errors"
	"fmt"
	"strings"

	"github.com/aws/smithy-go"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/retry"
)

// Class is what a failed AWS call is worth.
type Class int

const (
	// Transient failures may pass: network errors, timeouts, 5xx, a
	// request with no response at all. Retry with backoff.
	Transient Class = iota
	// Throttled calls were refused for rate: retry with backoff, and
	// count them apart.
	Throttled
	// Permanent failures are not fixed by retrying: a bad request, a
	// missing stream or table, missing permissions.
	Permanent
	// Credentials failures are permanent too: the credentials were
	// refused (expired, unknown, bad signature) or none could be found.
	// Errors of this class are reported wrapping [shardflow.ErrCredentials].
	Credentials
)

func (c Class) String() string {
	switch c {
	case Transient:
		return "transient"
	case Throttled:
		return "throttled"
	case Permanent:
		return "permanent"
	case Credentials:
		return "credentials"
	}
	return fmt.Sprintf("Class(%d)", int(c))
}

// Retryable reports whether the class is worth another attempt.
func (c Class) Retryable() bool { return c == Transient || c == Throttled }

// throttleCodes are error codes AWS services answer when a caller goes too
// fast.
var throttleCodes = map[string]bool{
	"ProvisionedThroughputExceededException": true,
	"LimitExceededException":                 true,
	"KMSThrottlingException":                 true,
	"ThrottlingException":                    true,
	"Throttling":                             true,
	"ThrottledException":                     true,
	"RequestLimitExceeded":                   true,
	"TooManyRequestsException":               true,
	"RequestThrottled":                       true,
	"RequestThrottledException":              true,
	"SlowDown":                               true,
	"TransactionInProgressException":         true,
}

// transientCodes are error codes of failures on the service's side, or of
// a resource in a transient state.
var transientCodes = map[string]bool{
	"InternalFailure":              true,
	"InternalFailureException":     true,
	"InternalServerError":          true,
	"InternalServerErrorException": true,
	"ServiceUnavailable":           true,
	"ServiceUnavailableException":  true,
	"RequestTimeout":               true,
	"RequestTimeoutException":      true,
	"PriorRequestNotComplete":      true,
	"ResourceInUseException":       true, // the stream or table is being created or updated
}

// credentialCodes are error codes of credentials AWS refused.
var credentialCodes = map[string]bool{
	"ExpiredTokenException":               true,
	"ExpiredToken":                        true,
	"UnrecognizedClientException":         true,
	"InvalidClientTokenId":                true,
	"InvalidSignatureException":           true,
	"SignatureDoesNotMatch":               true,
	"IncompleteSignature":                 true,
	"IncompleteSignatureException":        true,
	"MissingAuthenticationToken":          true,
	"MissingAuthenticationTokenException": true,
}

type statusError interface {
	error
	HTTPStatusCode() int
}

// Classify says what err, the error of an AWS SDK call, is worth. A nil
// error is Transient (there is nothing to classify; callers check nil
// first). Context cancellation is the caller's to judge: Classify reports
// it Transient, and callers stop retrying because their context ended.
func Classify(err error) Class {
	if err == nil {
		return Transient
	}
	if errors.Is(err, shardflow.ErrCredentials) {
		return Credentials
	}
	if noCredentials(err) {
		// The SDK's identity step failed before the request was sent.
		// A credentials service that throttled or failed on its side
		// (STS, SSO: the refresh of rotating credentials) may answer
		// next time; anything else, no provider found or credentials
		// refused, needs a person.
		if c := classifyCall(err); c == Throttled || (c == Transient && serverSide(err)) {
			return c
		}
		return Credentials
	}
	return classifyCall(err)
}

// serverSide reports an error answered by a service: an API error of the
// server's fault, or an HTTP status of 429 or 5xx.
func serverSide(err error) bool {
	if se, ok := errors.AsType[statusError](err); ok {
		if s := se.HTTPStatusCode(); s == 429 || s >= 500 {
			return true
		}
	}
	if ae, ok := errors.AsType[smithy.APIError](err); ok {
		return ae.ErrorFault() == smithy.FaultServer || throttleCodes[ae.ErrorCode()] || transientCodes[ae.ErrorCode()]
	}
	return false
}

// classifyCall is Classify for an error that is not of the identity step.
func classifyCall(err error) Class {
	if ae, ok := errors.AsType[smithy.APIError](err); ok {
		code := ae.ErrorCode()
		switch {
		case throttleCodes[code]:
			return Throttled
		case transientCodes[code]:
			return Transient
		case credentialCodes[code]:
			return Credentials
		case strings.HasPrefix(code, "KMS"):
			// KMS errors other than throttling: a disabled or missing
			// key, missing access to it.
			return Permanent
		}
		if se, ok := errors.AsType[statusError](err); ok {
			if s := se.HTTPStatusCode(); s == 429 {
				return Throttled
			} else if s >= 500 {
				return Transient
			}
		}
		if ae.ErrorFault() == smithy.FaultServer {
			return Transient
		}
		// Client faults and unknown codes: the request itself is wrong.
		return Permanent
	}
	if _, ok := errors.AsType[smithy.InvalidParamsError](err); ok {
		// The SDK refused to send the request (a missing required
		// field): sending it again changes nothing.
		return Permanent
	}
	if se, ok := errors.AsType[statusError](err); ok {
		s := se.HTTPStatusCode()
		switch {
		case s == 429:
			return Throttled
		case s == 0 || s >= 500:
			// 0: no response at all (a reset connection, a send that
			// failed), which the SDK reports as a response error too.
			return Transient
		case s == 401 || s == 403:
			return Credentials
		case s >= 400:
			return Permanent
		}
	}
	// Transport errors, timeouts, truncated responses.
	return Transient
}

// noCredentials reports an error of the SDK's identity step: no
// credentials could be found, or the provider failed to refresh them.
// The SDK wraps these in plain fmt errors, so the message is all there is.
func noCredentials(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "get identity: ") ||
		strings.Contains(msg, "failed to retrieve credentials") ||
		strings.Contains(msg, "failed to refresh cached credentials")
}

// CredentialsError wraps err so that it matches [shardflow.ErrCredentials]
// when it is of the Credentials class, and returns err unchanged otherwise.
// op names what was being done, as in "get records from shard X".
func CredentialsError(op string, err error) error {
	if err == nil || errors.Is(err, shardflow.ErrCredentials) || Classify(err) != Credentials {
		return err
	}
	return fmt.Errorf("%s: %w: %w", op, shardflow.ErrCredentials, err)
}

// Mark prepares the error of an AWS call for retry.Do: a nil error stays
// nil, an error not worth retrying is marked retry.Permanent (and wraps
// [shardflow.ErrCredentials] when it is a credentials problem, op naming
// the call), and a retryable one is returned as it is. It is the one way
// shardflow's AWS calls decide what to retry.
func Mark(op string, err error) error {
	if err == nil {
		return nil
	}
	switch Classify(err) {
	case Credentials:
		return retry.Permanent(CredentialsError(op, err))
	case Permanent:
		return retry.Permanent(err)
	}
	return err
}
