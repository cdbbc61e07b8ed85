package kinesissource_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// flakyLeases is a memory Instance whose lease syncs fail while down is
// set, as a lease table out of reach does.
type flakyLeases struct {
	*memory.Instance
	down atomic.Bool
}

func (f *flakyLeases) SyncLeases(ctx context.Context, stream string, eligible []string) ([]string, error) {
	if f.down.Load() {
		return nil, errors.New("injected: lease table unreachable")
	}
	return f.Instance.SyncLeases(ctx, stream, eligible)
}

// waitReady waits until src is ready, for at most a minute of virtual time.
func waitReady(t *testing.T, src *kinesissource.Source) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for src.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("source not ready after a minute: %v", src.Ready())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// wantNotReady checks that src is not ready, for the reason named.
func wantNotReady(t *testing.T, src *kinesissource.Source, reason string) {
	t.Helper()
	err := src.Ready()
	if err == nil || !strings.Contains(err.Error(), reason) {
		t.Errorf("Ready = %v; want an error saying %q", err, reason)
	}
}

func TestReadyReportsWhichConditionFails(t *testing.T) {
	t.Run("with a lease store: not running, no listing yet, lease syncs failing, then not running again", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newStream(t, "in", 2)
			var listDown atomic.Bool
			listDown.Store(true)
			f.InjectError(func(op string, _ any) error {
				if op == "ListShards" && listDown.Load() {
					return &types.InternalFailureException{Message: aws.String("injected")}
				}
				return nil
			})
			in, err := memory.New().Instance("a") // LeaseDuration 10s
			if err != nil {
				t.Fatal(err)
			}
			store := &flakyLeases{Instance: in}
			src := newSource(t, f, "in", func(o *kinesissource.Options) { o.Store = store })
			wantNotReady(t, src, "not running")

			ctx, cancel := context.WithCancel(t.Context())
			errc := make(chan error, 1)
			go func() { errc <- shardflow.Source(src).Sink(&collector{}).Run(ctx) }()
			time.Sleep(2 * time.Second) // ListShards fails and is retried meanwhile
			wantNotReady(t, src, "has not listed the stream's shards")

			listDown.Store(false)
			waitReady(t, src)

			// A brief outage of the lease table is no reason to stop
			// being ready; one longer than the lease duration is.
			store.down.Store(true)
			time.Sleep(5 * time.Second)
			if err := src.Ready(); err != nil {
				t.Errorf("Ready 5s into a lease table outage = %v; want nil within the lease duration", err)
			}
			time.Sleep(6 * time.Second)
			wantNotReady(t, src, "last successful lease sync")
			store.down.Store(false)
			waitReady(t, src)

			cancel()
			if err := <-errc; err != nil {
				t.Fatalf("Run = %v", err)
			}
			wantNotReady(t, src, "not running")
		})
	})
	t.Run("without a lease store: ready once the shards are listed and read", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			src := newSource(t, newStream(t, "in", 3), "in")
			ctx, cancel := context.WithCancel(t.Context())
			errc := make(chan error, 1)
			go func() { errc <- shardflow.Source(src).Sink(&collector{}).Run(ctx) }()
			waitReady(t, src)
			time.Sleep(time.Minute)
			if err := src.Ready(); err != nil {
				t.Errorf("Ready a minute on = %v; want nil", err)
			}
			cancel()
			if err := <-errc; err != nil {
				t.Fatalf("Run = %v", err)
			}
			wantNotReady(t, src, "not running")
		})
	})
	t.Run("a source whose Run failed is not ready", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			src := newSource(t, newStream(t, "in", 1), "missing")
			if err := shardflow.Source(src).Sink(&collector{}).Run(t.Context()); err == nil {
				t.Fatal("Run over a missing stream succeeded")
			}
			wantNotReady(t, src, "not running")
		})
	})
}
