package shardflowtest_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest"
)

// A unit test of a pipeline: feed two shards, run the pipeline to the end,
// then check what the sink got and where each shard was checkpointed. In a
// real test, compare with cmp.Diff instead of printing.
func Example() {
	store := memory.New()
	src := shardflowtest.NewSource[shardflow.Record]("events", func(o *shardflowtest.SourceOptions) {
		o.Store = store
	}).
		AddShard("shard-0", shardflowtest.Records("events", "shard-0", "login", "click", "logout")...).
		AddShard("shard-1", shardflowtest.Records("events", "shard-1", "click")...)
	sink := shardflowtest.NewSink[string]()

	err := shardflow.Source(src).
		Filter(func(_ context.Context, r shardflow.Record) (bool, error) { return string(r.Data) != "click", nil }).
		Map(func(_ context.Context, r shardflow.Record) (string, error) {
			return r.ShardID + ":" + strings.ToUpper(string(r.Data)), nil
		}).
		Sink(sink).
		Run(context.Background())

	fmt.Println("err:", err)
	fmt.Println("sink:", sink.Items())
	fmt.Println("checkpoints:", store.Checkpoints("events"))
	// Output:
	// err: <nil>
	// sink: [shard-0:LOGIN shard-0:LOGOUT]
	// checkpoints: map[shard-0:{{3 0 false} false} shard-1:{{1 0 false} false}]
}
