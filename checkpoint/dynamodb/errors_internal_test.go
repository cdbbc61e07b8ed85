package dynamostore

import (
	"errors"
	"fmt"
	"testing"

	"github.com/aws/smithy-go"

	"github.com/shardflow/shardflow/internal/retry"
)

// DynamoDB refuses a write that would make an item pass 400 KB with a
// ValidationException: for the heartbeat item that is a full item, not a
// wrong key schema, and the error says what to do.
func TestClassifyTellsAFullHeartbeatItemFromAWrongKeySchema(t *testing.T) {
	s := &Store{table: "t", key: "shard"}
	for _, tc := range []struct {
		msg  string
		want error
	}{
		{"Item size to update has exceeded the maximum allowed size", ErrHeartbeatItemFull},
		{"The provided key element does not match the schema", ErrKeySchema},
	} {
		err := s.classify("heartbeat", fmt.Errorf("op: %w", &smithy.GenericAPIError{Code: "ValidationException", Message: tc.msg}))
		var te *TableError
		if !errors.Is(err, tc.want) || !errors.As(err, &te) || !retry.IsPermanent(err) {
			t.Errorf("classify(%q) = %v; want a permanent *TableError wrapping %v", tc.msg, err, tc.want)
		}
	}
}
