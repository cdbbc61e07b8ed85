package kinesissource_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

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
					o.Store = memory.New()
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

// TestOneOutageBudget checks Retry.Timeout, the outage budget the source
// shares with the sink: while Kinesis refuses or resets every call, each
// shard keeps retrying for Retry.Timeout without a success, then the source
// stops with the last error.
func TestOneOutageBudget(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	reset := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	tests := []struct {
		name string
		// The outage starts once the first 100 of 300 records were read,
		// or at once (before even ListShards answered).
		atStart bool
		outage  time.Duration
		budget  time.Duration // Retry.Timeout; 0: the default
		// survives: every record is read after the outage; otherwise Run
		// stops once the budget is spent.
		survives bool
	}{
		{"a 30s outage while reading is survived with the defaults", false, 30 * time.Second, 0, true},
		{"a 30s outage from the start is survived with the defaults", true, 30 * time.Second, 0, true},
		{"a 4m30s outage is survived with the defaults", false, 4*time.Minute + 30*time.Second, 0, true},
		{"a 6m outage outlasts the default budget of 5m", false, 6 * time.Minute, 0, false},
		{"with Retry.Timeout 10s a 30s outage stops the source", false, 30 * time.Second, 10 * time.Second, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newStream(t, "in", 2)
				put(t, f, "in", 0, 300, 10)
				sink := &collector{}
				var (
					mu          sync.Mutex // the shards' calls come concurrently
					outageStart time.Time
					n           int
				)
				if tc.atStart {
					outageStart = time.Now()
				}
				f.InjectError(func(string, any) error {
					mu.Lock()
					defer mu.Unlock()
					if outageStart.IsZero() {
						if sink.len() < 100 {
							return nil
						}
						outageStart = time.Now()
					}
					if time.Since(outageStart) >= tc.outage {
						return nil
					}
					n++
					if n%2 == 0 {
						return reset
					}
					return refused
				})
				src := newSource(t, f, "in", func(o *kinesissource.Options) {
					o.InitialPosition = kinesissource.TrimHorizon()
					o.Limit = 20
					o.Retry.Timeout = tc.budget
				})
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				errc := make(chan error, 1)
				go func() { errc <- shardflow.Source(src).Sink(sink).Run(ctx) }()
				if tc.survives {
					waitFor(t, func() bool { return sink.len() >= 300 })
					cancel()
					if err := <-errc; err != nil {
						t.Fatalf("Run = %v after the outage; want nil", err)
					}
					checkExactlyOnceInOrder(t, 300, sink.data())
					return
				}
				var err error
				select {
				case err = <-errc:
				case <-time.After(time.Hour):
					t.Fatal("Run still running an hour into the outage")
				}
				mu.Lock()
				stopped := time.Since(outageStart)
				mu.Unlock()
				budget := tc.budget
				if budget == 0 {
					budget = 5 * time.Minute
				}
				if !errors.Is(err, refused) && !errors.Is(err, reset) {
					t.Errorf("Run = %v; want the outage's last error", err)
				}
				// The budget is spent to its end, and not much beyond: the
				// last wait is cut short at the budget's end.
				if stopped < budget || stopped > budget+time.Second {
					t.Errorf("Run stopped %v into the outage; want at the end of Retry.Timeout %v", stopped, budget)
				}
			})
		})
	}
}
