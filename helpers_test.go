package shardflow_test

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/shardflow/shardflow"
)

// holdSink accepts values and keeps their acks for the test to complete, in
// any order.
type holdSink[T any] struct {
	mu   sync.Mutex
	vals []T
	acks []shardflow.Ack
}

func (s *holdSink[T]) Write(_ context.Context, v T, ack shardflow.Ack) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.vals = append(s.vals, v)
	s.acks = append(s.acks, ack)
	return nil
}

func (s *holdSink[T]) Flush(context.Context) error { return nil }

func (s *holdSink[T]) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.vals)
}

// ack completes the acks of the values at the given indexes (in arrival
// order).
func (s *holdSink[T]) ack(err error, idx ...int) {
	s.mu.Lock()
	acks := make([]shardflow.Ack, len(idx))
	for i, j := range idx {
		acks[i] = s.acks[j]
	}
	s.mu.Unlock()
	for _, a := range acks {
		a.Done(err)
	}
}

// ints returns 1..n.
func ints(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i + 1
	}
	return out
}

func seq(n int) shardflow.Checkpoint {
	return shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: strconv.Itoa(n)}}
}

// runAsync runs pl and returns the channel its error arrives on.
func runAsync(ctx context.Context, pl *shardflow.Pipeline) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- pl.Run(ctx) }()
	return errc
}

func fastRetry(o *shardflow.Options) { o.Retry = shardflow.NoRetry }

func mustRun(t *testing.T, pl *shardflow.Pipeline) {
	t.Helper()
	if err := pl.Run(t.Context()); err != nil {
		t.Fatalf("Run: %v", err)
	}
}
