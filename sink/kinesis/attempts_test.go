package kinesissink

import (
	"errors"
	"testing"
	"testing/synctest"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
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
