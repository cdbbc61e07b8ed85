package kinesissource_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/shardflowtest"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// TestTheArrivalTimeReachesTheFailureControls reads records put two hours
// ago through a stage whose MaxRecordAge is one hour: the failing handler is
// called once per record (no retries), and each dead letter carries the
// record's ApproximateArrivalTimestamp.
func TestTheArrivalTimeReachesTheFailureControls(t *testing.T) {
	for _, m := range readModes {
		t.Run(m.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newStream(t, "in", 1)
				putAt := time.Now()
				put(t, f, "in", 0, 3, 1)
				time.Sleep(2 * time.Hour)

				var mu sync.Mutex
				calls := 0
				var letters []*shardflow.DeadLetter
				fail := func(context.Context, shardflow.Record) (shardflow.Record, error) {
					mu.Lock()
					calls++
					mu.Unlock()
					return shardflow.Record{}, errors.New("down")
				}
				quarantine := func(_ context.Context, _ shardflow.Record, err error) error {
					var dl *shardflow.DeadLetter
					if !errors.As(err, &dl) {
						t.Errorf("dead-letter error %T; want a *shardflow.DeadLetter", err)
						return nil
					}
					mu.Lock()
					letters = append(letters, dl)
					mu.Unlock()
					return nil
				}
				src := m.newSource(t, f, "in", func(o *kinesissource.Options) {
					o.InitialPosition = kinesissource.TrimHorizon()
				})
				sink := shardflowtest.NewSink[shardflow.Record]()
				pl := shardflow.Source(src, func(o *shardflow.Options) {
					o.Retry = shardflow.RetryPolicy{MaxAttempts: 5, MaxRecordAge: time.Hour}
				}).DeadLetter(quarantine).Map(fail).Sink(sink)
				ctx, cancel := context.WithCancel(t.Context())
				done := make(chan error, 1)
				go func() { done <- pl.Run(ctx) }()
				for {
					mu.Lock()
					n := len(letters)
					mu.Unlock()
					if n == 3 {
						break
					}
					time.Sleep(time.Second)
				}
				cancel()
				if err := <-done; err != nil {
					t.Fatal(err)
				}
				if calls != 3 {
					t.Errorf("%d handler calls; want 3: records older than MaxRecordAge are not retried", calls)
				}
				for _, dl := range letters {
					if !dl.Arrival.Equal(putAt) || dl.Attempts != 1 {
						t.Errorf("dead letter of %s: arrival %v, %d attempts; want %v, 1", dl.Position.SequenceNumber, dl.Arrival, dl.Attempts, putAt)
					}
				}
			})
		})
	}
}
