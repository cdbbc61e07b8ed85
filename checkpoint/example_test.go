package checkpoint_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/shardflow/shardflow/checkpoint"
	"github.com/shardflow/shardflow/checkpoint/memory"
)

// A process that starts with the owner id of one still running takes its
// leases over; the older process's next sync fails with an
// *OwnerConflictError, for good, which stops its pipeline with a clear
// message instead of the two trading leases. (Memory Instances with one
// name stand for such two processes; with DynamoDB it is Options.Owner.)
func ExampleOwnerConflictError() {
	ctx := context.Background()
	quiet := func(o *memory.InstanceOptions) {
		o.Logger = slog.New(slog.DiscardHandler)
		o.RenewInterval = 2 * time.Millisecond // heartbeats due at once, for the example
		o.LeaseDuration = 4 * time.Millisecond
	}
	store := memory.New()
	first, _ := store.Instance("pod-1", quiet)
	if _, err := first.SyncLeases(ctx, "orders", []string{"s0"}); err != nil {
		panic(err)
	}
	second, _ := store.Instance("pod-1", quiet)
	held, _ := second.SyncLeases(ctx, "orders", []string{"s0"})
	fmt.Println("second holds", held)

	time.Sleep(5 * time.Millisecond) // the first one's next heartbeat is due
	_, err := first.SyncLeases(ctx, "orders", []string{"s0"})
	var oc *checkpoint.OwnerConflictError
	if errors.As(err, &oc) {
		fmt.Println("first:", oc.Owner, "taken over:", errors.Is(err, checkpoint.ErrOwnerTaken))
	}
	// Output:
	// second holds [s0]
	// first: pod-1 taken over: true
}
