package kinesissource_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// On shutdown a shard's hand-over (wait for the records in flight, final
// checkpoint, lease release) ends within HandoffTimeout, by default half
// the store's LeaseDuration, so the lease is released before it could
// expire; and within the pipeline's DrainTimeout when that ends first.
// Here a record is stuck until the drain gives up on it.
func TestAShutdownReleasesTheLeaseWithinHandoffTimeoutAndTheDrain(t *testing.T) {
	tests := []struct {
		name         string
		drain        time.Duration
		releasedWith time.Duration // the latest release wanted, from the cancel
	}{
		{"a drain longer than the default HandoffTimeout (5s of a 10s lease)", 30 * time.Second, 5 * time.Second},
		{"a drain shorter than HandoffTimeout", 2 * time.Second, 2 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const shard = "shardId-000000000000"
				f := newStream(t, "in", 1)
				put(t, f, "in", 0, 50, 5)
				b := &leaseBoard{store: memory.New(), owner: map[string]string{}, want: map[string]string{shard: "a"}}
				src := newSource(t, f, "in", func(o *kinesissource.Options) {
					o.Store = leaseView{b, "a"} // LeaseDuration 10s
					o.InitialPosition = kinesissource.TrimHorizon()
				})
				stuck := func(ctx context.Context, _ shardflow.Record) error {
					<-ctx.Done() // until the drain ends
					return ctx.Err()
				}
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				errc := make(chan error, 1)
				go func() {
					errc <- shardflow.Source(src, func(o *shardflow.Options) { o.DrainTimeout = tc.drain }).
						Tap(stuck).Sink(&collector{}).Run(ctx)
				}()
				time.Sleep(2 * time.Second)
				owner := func() string {
					b.mu.Lock()
					defer b.mu.Unlock()
					return b.owner[shard]
				}
				if o := owner(); o != "a" {
					t.Fatalf("shard leased by %q before the shutdown; want a", o)
				}
				cancel()
				start := time.Now()
				for time.Since(start) < time.Hour {
					synctest.Wait() // what is due at this instant is done
					if owner() == "" {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if took := time.Since(start); took > tc.releasedWith {
					t.Errorf("lease released %v after the cancel; want within %v", took, tc.releasedWith)
				}
				if err := <-errc; !errors.Is(err, shardflow.ErrDrainTimeout) {
					t.Errorf("Run = %v; want ErrDrainTimeout (a record was stuck)", err)
				}
			})
		})
	}
}
