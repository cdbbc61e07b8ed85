package dynamostore

import (
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"
	"github.com/shardflow/shardflow/checkpoint/internal/lease"
	"github.com/shardflow/shardflow/internal/awserr"
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

	// ErrHeartbeatItemFull is wrapped by the *TableError of a heartbeat
	// refused because the heartbeat item ("#instances") would pass
	// DynamoDB's 400 KB item limit. Each instance's entry names the shards
	// it reads (about 30 bytes each), so one table serves about 12,000
	// leased shards, all streams and instances together. Give each
	// application (or each very large stream) a table of its own.
	ErrHeartbeatItemFull = errors.New("dynamostore: heartbeat item is full")
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

// classify maps an error of a DynamoDB call to what the lease algorithm and
// retry.Do expect. The store's own cases come first: lease.ErrConflict for
// a failed condition, and a permanent *TableError for a missing table or
// (most likely) a key attribute that does not match the table's key. Every
// other error is judged by awserr.Mark, shardflow's one policy for AWS
// errors: retried as it is when it may pass, marked permanent otherwise. op
// names the call, as in "load checkpoint".
func (s *Store) classify(op string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := errors.AsType[*types.ConditionalCheckFailedException](err); ok {
		return lease.ErrConflict
	}
	if _, ok := errors.AsType[*types.ResourceNotFoundException](err); ok {
		s.resetReady()
		return retry.Permanent(s.noTable(err))
	}
	if api, ok := errors.AsType[smithy.APIError](err); ok && api.ErrorCode() == "ValidationException" &&
		strings.Contains(api.ErrorMessage(), "Item size") {
		return retry.Permanent(&TableError{Table: s.table, Err: ErrHeartbeatItemFull,
			Reason: "the heartbeat item \"" + MembersKey + "\" reached DynamoDB's 400 KB item limit: one table serves about 12,000 leased shards (all streams and instances); give each application or very large stream a table of its own",
			Cause:  err})
	}
	if api, ok := errors.AsType[smithy.APIError](err); ok && api.ErrorCode() == "ValidationException" {
		s.resetReady()
		return retry.Permanent(&TableError{Table: s.table, Err: ErrKeySchema,
			Reason: fmt.Sprintf("request refused; does the table have one HASH key %q of type S?", s.key), Cause: err})
	}
	return awserr.Mark(op, err)
}

func (s *Store) noTable(cause error) *TableError {
	return &TableError{Table: s.table, Err: ErrNoTable, Cause: cause,
		Reason: fmt.Sprintf("does not exist; create it with Store.CreateTable, or with one HASH key %q of type S", s.key)}
}
