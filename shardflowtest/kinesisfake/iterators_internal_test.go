package kinesisfake

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
)

// A long run must not keep every iterator it was ever given: expired ones
// are forgotten, and still answered as expired.
func TestExpiredIteratorsAreForgottenAndStillExpired(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := New()
		ctx := t.Context()
		if _, err := f.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String("s"), ShardCount: aws.Int32(1)}); err != nil {
			t.Fatal(err)
		}
		iter := func() *string {
			out, err := f.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: aws.String("s"),
				ShardId: aws.String(shardID(0)), ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
			if err != nil {
				t.Fatal(err)
			}
			return out.ShardIterator
		}
		old := iter()
		time.Sleep(IteratorLifetime + time.Second)
		for range 5000 {
			iter()
		}
		f.mu.Lock()
		n := len(f.iterators)
		f.mu.Unlock()
		if n != 5000 {
			t.Errorf("the fake keeps %d iterators after 5,001 were issued and the first expired; want 5,000: the expired one forgotten", n)
		}
		_, err := f.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: old})
		if _, ok := errors.AsType[*types.ExpiredIteratorException](err); !ok {
			t.Errorf("GetRecords with a forgotten iterator = %v; want ExpiredIteratorException", err)
		}
		_, err = f.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: aws.String("iter-999999")})
		if _, ok := errors.AsType[*types.InvalidArgumentException](err); !ok {
			t.Errorf("GetRecords with an iterator never issued = %v; want InvalidArgumentException", err)
		}
	})
}
