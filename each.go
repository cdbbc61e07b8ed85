package shardflow

import (
	"context"
	"iter"
)

// Each runs src and yields its records one at a time, for a plain for loop
// in place of a pipeline's stages and sink:
//
//	for rec, err := range shardflow.Each(ctx, src) {
//		if err != nil {
//			return err // the source failed, or the options are invalid
//		}
//		handle(rec)
//	}
//
// It runs src as [Pipeline.Run] does, with the same lanes, checkpoints,
// leases and [Options] (optFns adjust them): the records of all shards come
// into the one loop, each shard's in order. A record is done, and its
// shard's checkpoint may pass it, once the loop asks for the next one (the
// loop body finished and did not break): after a restart the loop resumes
// after the last record it finished, and the record it was in when it
// broke out or crashed comes again (at-least-once).
//
// Breaking out of the loop, or cancelling ctx, stops reading, saves the
// final checkpoints (within [Options].DrainTimeout) and then ends the
// iteration; records read but not yet yielded are not done and are read
// again next time. A finite source's loop ends once every record was
// yielded and checkpointed. A failure of the source, or a
// [*ConfigError], is yielded as the last pair, with the zero T. A final
// checkpoint save that fails after the loop broke out cannot be yielded: it
// is logged at Error.
//
// The sequence can be iterated once.
func Each[T any](ctx context.Context, src ShardSource[T], optFns ...func(*Options)) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		stop, cut := context.WithCancel(ctx)
		defer cut()
		ch := make(chan delivery[T])
		pl := Source(src, optFns...).Sink(&loopSink[T]{ch: ch}, WithName("loop"))
		errc := make(chan error, 1)
		go func() { errc <- pl.run(ctx, stop) }()
		waited := false
		defer func() {
			if !waited { // the loop body panicked
				cut()
				<-errc
			}
		}()
		for {
			select {
			case d := <-ch:
				if stop.Err() != nil || !yield(d.v, nil) {
					cut()
					waited = true
					if err := <-errc; err != nil {
						// It cannot be yielded after a break.
						pl.p.opts.Logger.Error("final checkpoints after the loop ended", "component", "shardflow.pipeline", "err", err)
					}
					return
				}
				d.ack.Done(nil) // the loop asks for the next record
			case err := <-errc:
				waited = true
				if err != nil {
					var zero T
					yield(zero, err)
				}
				return
			}
		}
	}
}

// delivery is a record handed to the loop of Each with its Ack.
type delivery[T any] struct {
	v   T
	ack Ack
}

// loopSink hands each value to the loop of Each and returns once the loop
// took it: a shard's next value waits until the loop asked for it.
type loopSink[T any] struct {
	ch chan delivery[T]
}

func (s *loopSink[T]) Write(ctx context.Context, v T, ack Ack) error {
	select {
	case s.ch <- delivery[T]{v: v, ack: ack}:
		return nil
	case <-ctx.Done():
		return Permanent(context.Cause(ctx)) // the loop ended: nothing to retry
	}
}

func (s *loopSink[T]) Flush(context.Context) error { return nil }
