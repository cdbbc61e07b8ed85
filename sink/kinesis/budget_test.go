package kinesissink

import (
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/smithy-go"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/retry"
)

func TestAnEmptyRecordFailsAloneAndTheOthersAreWritten(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		p, err := NewProducer(f, testStream)
		if err != nil {
			t.Fatal(err)
		}
		// printf 'a\n\nb\n' | shardflow put: three lines, one empty.
		var errs []error
		for _, line := range []string{"a", "", "b"} {
			errs = append(errs, p.Put(t.Context(), []byte(line), "k"))
		}
		if ve, ok := errors.AsType[*ValidationError](errs[1]); !ok || ve.Field != "Data" {
			t.Errorf("Put of an empty line = %v, want a *ValidationError for Data", errs[1])
		}
		if errs[0] != nil || errs[2] != nil {
			t.Errorf("Put of the good lines = %v, %v; want nil", errs[0], errs[2])
		}
		if err := p.Close(t.Context()); err != nil {
			t.Fatalf("Close = %v", err)
		}
		var got []string
		for _, s := range storedRecords(t, f) {
			got = append(got, string(s.Data))
		}
		if strings.Join(got, ",") != "a,b" {
			t.Errorf("stream holds %q, want [a b]", got)
		}
	})
}

// transportErr is a network error as the SDK reports one: no response at
// all (status 0).
type transportErr struct{}

func (transportErr) Error() string       { return "dial tcp 127.0.0.1:4567: connect: connection refused" }
func (transportErr) HTTPStatusCode() int { return 0 }

func TestCredentialsErrorsFailAtOnceWithErrCredentials(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
	}{
		{"expired token", &smithy.GenericAPIError{Code: "ExpiredTokenException", Message: "The security token included in the request is expired", Fault: smithy.FaultClient}},
		{"no credentials", errors.New("operation error Kinesis: PutRecords, get identity: get credentials: failed to refresh cached credentials, no EC2 IMDS role found")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				f.InjectError(func(op string, _ any) error {
					if op == "PutRecords" {
						return tc.err
					}
					return nil
				})
				p, _ := NewProducer(f, testStream)
				var res Result
				_ = p.PutEntry(t.Context(), Entry{Data: []byte("x"), PartitionKey: "k"}, func(r Result) { res = r })
				_ = p.Flush(t.Context())
				pe, ok := errors.AsType[*PutError](res.Err)
				if !ok || !errors.Is(res.Err, shardflow.ErrCredentials) {
					t.Errorf("result %v; want a *PutError wrapping shardflow.ErrCredentials", res.Err)
				}
				if calls := f.Calls("PutRecords"); calls != 1 || (ok && pe.Attempts != 1) {
					t.Errorf("%d PutRecords calls; want 1, no retry of refused credentials", calls)
				}
				_ = p.Close(t.Context())
			})
		})
	}
}

func TestOneOutageBudget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		outage   time.Duration
		opts     func(*Options)
		survives bool
	}{
		{"a 30s outage is survived with the defaults", 30 * time.Second, nil, true},
		{"a 4m30s outage is survived with the defaults", 4*time.Minute + 30*time.Second, nil, true},
		{"a 6m outage outlasts the default budget of 5m", 6 * time.Minute, nil, false},
		{"with Retry.Timeout 10s a 30s outage fails the record", 30 * time.Second, func(o *Options) { o.Retry.Timeout = 10 * time.Second }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				start := time.Now()
				f.InjectError(func(op string, _ any) error {
					if op == "PutRecords" && time.Since(start) < tc.outage {
						return transportErr{}
					}
					return nil
				})
				p, err := NewProducer(f, testStream, tc.opts)
				if err != nil {
					t.Fatal(err)
				}
				var res Result
				if err := p.PutEntry(t.Context(), Entry{Data: []byte("x"), PartitionKey: "k"}, func(r Result) { res = r }); err != nil {
					t.Fatal(err)
				}
				if err := p.Flush(t.Context()); err != nil {
					t.Fatal(err)
				}
				if tc.survives {
					if res.Err != nil || res.SequenceNumber == "" {
						t.Errorf("result %+v after %v; want the record written after the outage", res, time.Since(start))
					}
				} else {
					budget := retry.DefaultOutageBudget
					if tc.opts != nil {
						budget = 10 * time.Second
					}
					ee, ok := errors.AsType[*ExhaustedError](res.Err)
					if !ok || ee.Limit != "Retry.Timeout" || ee.Budget != budget || !errors.Is(res.Err, ErrAttemptsExhausted) {
						t.Errorf("result %v; want an *ExhaustedError for Retry.Timeout %v, matching ErrAttemptsExhausted", res.Err, budget)
					}
					if elapsed := time.Since(start); elapsed < budget {
						t.Errorf("gave up after %v, within the budget of %v", elapsed, budget)
					}
				}
				_ = p.Close(t.Context())
			})
		})
	}
}

func TestTheShardMapLoadRetriesTransientErrorsAndFailsOnPermanentOnes(t *testing.T) {
	t.Parallel()
	throttle := &smithy.GenericAPIError{Code: "LimitExceededException", Message: "rate exceeded", Fault: smithy.FaultClient}
	tests := []struct {
		name      string
		errs      []error // the first ListShards calls fail with these
		wantCalls int
		wantErr   func(error) bool // nil: the record is written
	}{
		{"a throttle is retried", []error{throttle}, 2, nil},
		{"throttles, a 500 and a refused connection are retried", []error{throttle, throttle, &smithy.GenericAPIError{Code: "InternalFailure", Fault: smithy.FaultServer}, transportErr{}}, 5, nil},
		{"a missing stream fails at once", []error{&smithy.GenericAPIError{Code: "ResourceNotFoundException", Message: "no stream", Fault: smithy.FaultClient}}, 1,
			func(err error) bool { return retry.IsPermanent(err) && !errors.Is(err, shardflow.ErrCredentials) }},
		{"expired credentials fail at once", []error{&smithy.GenericAPIError{Code: "ExpiredTokenException", Message: "expired", Fault: smithy.FaultClient}}, 1,
			func(err error) bool { return retry.IsPermanent(err) && errors.Is(err, shardflow.ErrCredentials) }},
	}
	for _, tc := range tests {
		for _, mode := range []string{"ordered", "aggregated"} {
			t.Run(tc.name+", "+mode, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					f := newFake(t, 2)
					calls := 0
					f.InjectError(func(op string, _ any) error {
						if op != "ListShards" {
							return nil
						}
						if calls++; calls <= len(tc.errs) {
							return tc.errs[calls-1]
						}
						return nil
					})
					s, err := New(f, testStream, func(o *Options) { o.Ordered = mode == "ordered"; o.Aggregate = mode == "aggregated" })
					if err != nil {
						t.Fatal(err)
					}
					werr := s.Write(t.Context(), Entry{Data: []byte("x"), PartitionKey: "k"}, shardflow.Ack{})
					if err := s.Flush(t.Context()); err != nil {
						t.Fatal(err)
					}
					if tc.wantErr == nil {
						if werr != nil || len(storedRecords(t, f)) != 1 {
							t.Errorf("Write = %v, %d records stored; want the record written", werr, len(storedRecords(t, f)))
						}
					} else if !tc.wantErr(werr) {
						t.Errorf("Write = %v; not the error wanted", werr)
					}
					if f.Calls("ListShards") != tc.wantCalls {
						t.Errorf("%d ListShards calls, want %d", f.Calls("ListShards"), tc.wantCalls)
					}
					_ = s.Close(t.Context())
				})
			})
		}
	}
}
