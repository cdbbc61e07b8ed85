package kinesissource_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/aws/smithy-go"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// Refused or missing credentials do not pass with retries: the source stops
// at the first one, with an error that says so, names the operation and, for
// a shard's call, the shard.
func TestCredentialsErrorsStopTheSourceAtOnce(t *testing.T) {
	// The SDK reports codes it has no type for as a GenericAPIError of
	// unknown fault, and a failed credentials lookup as a plain error of
	// its identity step.
	expired := &smithy.GenericAPIError{Code: "ExpiredTokenException", Message: "The security token included in the request is expired"}
	missing := &smithy.OperationError{ServiceID: "Kinesis", OperationName: "GetRecords",
		Err: fmt.Errorf("get identity: get credentials: %w", errors.New("failed to refresh cached credentials, no EC2 IMDS role found"))}
	tests := []struct {
		name     string
		op       string // the call that fails
		err      error
		wantText []string
	}{
		{"an expired token on GetRecords", "GetRecords", expired, []string{"shardId-000000000000", "get records"}},
		{"no credentials on GetRecords", "GetRecords", missing, []string{"shardId-000000000000", "get records"}},
		{"an expired token on GetShardIterator", "GetShardIterator", expired, []string{"shardId-000000000000", "get shard iterator"}},
		{"an expired token on ListShards", "ListShards", expired, []string{"list shards"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newStream(t, "in", 1)
				put(t, f, "in", 0, 3, 1)
				f.InjectError(func(op string, _ any) error {
					if op == tc.op {
						return tc.err
					}
					return nil
				})
				src := newSource(t, f, "in", func(o *kinesissource.Options) {
					o.InitialPosition = kinesissource.TrimHorizon()
					o.Checkpoint = memory.New()
				})
				err := shardflow.Source(src).Sink(&collector{}).Run(t.Context())
				if !errors.Is(err, shardflow.ErrCredentials) {
					t.Fatalf("Run = %v; want an error wrapping ErrCredentials", err)
				}
				if !errors.Is(err, tc.err) {
					t.Errorf("Run = %v; want it to wrap the call's error", err)
				}
				for _, s := range tc.wantText {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("Run = %q; want it to name %q", err, s)
					}
				}
				if n := f.Calls(tc.op); n != 1 {
					t.Errorf("%s called %d times; want 1 (no retry)", tc.op, n)
				}
			})
		})
	}
}
