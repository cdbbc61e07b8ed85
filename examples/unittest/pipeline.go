// Package unittest shows how to unit-test a shardflow pipeline with no AWS:
// the pipeline is built by a function that takes its source and sink, so
// production code passes the Kinesis ones and tests pass the test kit's.
package unittest

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/shardflow/shardflow"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
)

// Order is what the input stream carries, as JSON.
type Order struct {
	ID       string `json:"id"`
	Customer string `json:"customer"`
	Amount   int    `json:"amount"`
}

// LargeOrders relays the orders of at least minAmount to the sink, keyed by
// customer. Records that are not valid JSON go to deadLetter.
func LargeOrders(src shardflow.ShardSource[shardflow.Record], sink shardflow.Sink[kinesissink.Entry],
	minAmount int, deadLetter func(ctx context.Context, r shardflow.Record, err error) error) *shardflow.Pipeline {
	return shardflow.Source(src).
		DeadLetter(deadLetter).
		Map(decode, shardflow.WithName("decode")).
		Filter(func(_ context.Context, o Order) (bool, error) { return o.Amount >= minAmount, nil }).
		Map(encode).
		Sink(sink)
}

func decode(_ context.Context, r shardflow.Record) (Order, error) {
	var o Order
	if err := json.Unmarshal(r.Data, &o); err != nil {
		return Order{}, shardflow.Permanent(fmt.Errorf("decode: %w", err))
	}
	return o, nil
}

func encode(_ context.Context, o Order) (kinesissink.Entry, error) {
	data, err := json.Marshal(o)
	return kinesissink.Entry{Data: data, PartitionKey: o.Customer}, err
}
