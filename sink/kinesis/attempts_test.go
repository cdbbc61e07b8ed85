package kinesissink

import (
	"errors"
	"testing"
	"testing/synctest"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow/internal/awserr"
)

func TestARequestLevelFailureCountsTheAttemptThatCarriedTheRecord(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.InjectError(func(op string, _ any) error {
			if op == "PutRecords" {
				return &types.ResourceNotFoundException{Message: aws.String("gone")}
			}
			return nil
		})
		p, _ := NewProducer(f, testStream)
		var res Result
		_ = p.PutEntry(t.Context(), Entry{Data: []byte("x"), PartitionKey: "k"}, func(r Result) { res = r })
		_ = p.Flush(t.Context())
		pe, ok := errors.AsType[*PutError](res.Err)
		if !ok || pe.Attempts != 1 || f.Calls("PutRecords") != 1 {
			t.Fatalf("result %v after %d calls; want a *PutError after 1 attempt", res.Err, f.Calls("PutRecords"))
		}
		_ = p.Close(t.Context())
	})
}

// noResponse is an error like the SDK's for a request that got no response
// (a reset connection): a response error with status 0.
type noResponse struct{}

func (noResponse) Error() string       { return "request send failed: connection reset by peer" }
func (noResponse) HTTPStatusCode() int { return 0 }

func TestARequestThatGotNoResponseIsRetried(t *testing.T) {
	if !awserr.Classify(noResponse{}).Retryable() {
		t.Errorf("a request that got no response (status 0) is not retried")
	}
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		calls := 0
		f.InjectError(func(op string, _ any) error {
			if op == "PutRecords" {
				if calls++; calls <= 2 {
					return noResponse{}
				}
			}
			return nil
		})
		p, _ := NewProducer(f, testStream)
		var res Result
		_ = p.PutEntry(t.Context(), Entry{Data: []byte("x"), PartitionKey: "k"}, func(r Result) { res = r })
		if err := p.Flush(t.Context()); err != nil || res.Err != nil || res.SequenceNumber == "" {
			t.Fatalf("Flush = %v, result %+v; want the record written on the third call", err, res)
		}
		_ = p.Close(t.Context())
	})
}
