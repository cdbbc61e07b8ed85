package memory_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"

	"github.com/shardflow/shardflow/checkpoint/memory"
)

// Store.Calls counts the table operations of a store's Instances by the
// DynamoDB call each would be: here the first sync of one instance over
// three new shards creates the heartbeat item (PutItem), writes its
// heartbeat (UpdateItem), reads the three lease items (one BatchGetItem)
// and creates the three leases (PutItem).
func ExampleStore_Calls() {
	store := memory.New()
	in, err := store.Instance("a", func(o *memory.InstanceOptions) { o.Logger = slog.New(slog.DiscardHandler) })
	if err != nil {
		panic(err)
	}
	if _, err := in.SyncLeases(context.Background(), "orders", []string{"s0", "s1", "s2"}); err != nil {
		panic(err)
	}
	calls := store.Calls()
	for _, name := range slices.Sorted(maps.Keys(calls)) {
		fmt.Println(name, calls[name])
	}
	// Output:
	// BatchGetItem 1
	// PutItem 4
	// UpdateItem 1
}
