package dynamostore

import (
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"
	"github.com/shardflow/shardflow/internal/lease"
	"github.com/shardflow/shardflow/internal/retry"
)

var (
	// ErrNoTable is wrapped by the *TableError of a store whose table does
	// not exist. Create it with [Store.CreateTable] or by hand (see the
	// package documentation).
	ErrNoTable = errors.New("dynamostore: table does not exist")

	// ErrKeySchema is wrapped by the *TableError of a store whose table's
	// key is not one string HASH key named Options.KeyAttribute.
	ErrKeySchema = errors.New("dynamostore: table key schema does not match")
)

// TableError reports a table the store cannot use: it does not exist
// ([ErrNoTable]), its key schema is wrong ([ErrKeySchema]), or it is not
// ACTIVE yet. Every method of the Store returns it (wrapped) until the table
// is fixed; no retry helps.
type TableError struct {
	// Table is the table name.
	Table string
	// Reason says what is wrong.
	Reason string
	// Err is ErrNoTable or ErrKeySchema (or nil), and Cause the AWS error
	// behind it, if any.
	Err, Cause error
}

func (e *TableError) Error() string {
	msg := fmt.Sprintf("dynamostore: table %q: %s", e.Table, e.Reason)
	if e.Cause != nil {
		msg += ": " + e.Cause.Error()
	}
	return msg
}

// Unwrap returns Err and Cause, so errors.Is(err, ErrNoTable) and
// errors.As(err, &resourceNotFound) both work.
func (e *TableError) Unwrap() []error {
	var out []error
	for _, err := range []error{e.Err, e.Cause} {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}

// classify maps an error of a DynamoDB call to what the lease algorithm
// expects: lease.ErrConflict for a failed condition, an error marked
// retry.Permanent for what retrying cannot fix, and the error itself for
// what may pass (throttling, 5xx, network errors, timeouts).
func (s *Store) classify(err error) error {
	if err == nil {
		return nil
	}
	var ccf *types.ConditionalCheckFailedException
	if errors.As(err, &ccf) {
		return lease.ErrConflict
	}
	var notFound *types.ResourceNotFoundException
	if errors.As(err, &notFound) {
		s.resetReady()
		return retry.Permanent(s.noTable(err))
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "ValidationException":
			// Most likely the key attribute does not match the table's key.
			s.resetReady()
			return retry.Permanent(&TableError{Table: s.table, Err: ErrKeySchema,
				Reason: fmt.Sprintf("request refused; does the table have one HASH key %q of type S?", s.key), Cause: err})
		case "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
			"MissingAuthenticationTokenException", "ExpiredTokenException":
			return retry.Permanent(err)
		}
	}
	return err
}

func (s *Store) noTable(cause error) *TableError {
	return &TableError{Table: s.table, Err: ErrNoTable, Cause: cause,
		Reason: fmt.Sprintf("does not exist; create it with Store.CreateTable, or with one HASH key %q of type S", s.key)}
}
