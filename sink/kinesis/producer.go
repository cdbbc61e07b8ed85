package kinesissink

import (
	"bytes"
	"context"
	"errors"
	"sync"

	"github.com/shardflow/shardflow"
)

// noAck is the Ack of records that report to a callback instead.
var noAck shardflow.Ack

// maxListed is how many failed records a BatchError lists.
const maxListed = 100

// Producer writes records to a Kinesis stream from code that is not a
// pipeline, like kinesis-python's producer.put: Put queues a record and
// returns, requests are batched and retried in the background exactly as by
// [Sink], and Flush and Close wait for the outcome. It is safe for
// concurrent use.
//
// Every record put ends in exactly one outcome. A record put with
// [Producer.PutEntry] and a callback reports it to the callback; a record put
// with [Producer.Put] that fails is reported by the next Flush or Close, in a
// *BatchError.
//
// Lifecycle: as a Sink's (no goroutine while idle). Call Close before the
// program exits, with a deadline: records still buffered when it passes are
// reported as not written.
type Producer struct {
	e *engine

	mu     sync.Mutex
	failed int
	errs   []*PutError
}

// NewProducer returns a producer writing to stream through client, with the
// options of [New]. [NewProducerFromConfig] is the easy way: it builds the
// client from an aws.Config. A nil Options.Logger means slog.Default().
func NewProducer(client API, stream string, optFns ...func(*Options)) (*Producer, error) {
	e, err := newEngine(client, stream, "kinesis.producer", optFns)
	if err != nil {
		return nil, err
	}
	p := &Producer{e: e}
	// Records put without a callback report here, failures only: no
	// callback, and no Result, per record written.
	e.collect = p.collect
	return p, nil
}

// Put queues data (copied) with a partition key. It blocks while the buffer
// is full, until ctx ends, and returns a *ValidationError for a record
// Kinesis would refuse, empty data included (nothing is sent; other records
// are not affected), ErrClosed after Close, the error of the shard map load
// (ordered and aggregating modes: permanent, or a spent Retry budget), or
// ctx's error. A nil error means the record is accepted; if it is not written in
// the end, the next Flush or Close reports it.
func (p *Producer) Put(ctx context.Context, data []byte, partitionKey string) error {
	return p.e.accept(ctx, Entry{Data: bytes.Clone(data), PartitionKey: partitionKey}, noAck, nil)
}

// PutEntry is Put for an Entry, whose Data is not copied: do not modify it
// until its outcome is known. When done is not nil it gets the record's
// outcome, exactly once, from another goroutine (written: shard and
// sequence number; else Result.Err holds a *PutError), and Flush and Close
// do not report it again. done must not block for long: it runs on a request
// goroutine.
func (p *Producer) PutEntry(ctx context.Context, e Entry, done func(Result)) error {
	return p.e.accept(ctx, e, noAck, done)
}

// collect keeps the failures of records put without a callback.
func (p *Producer) collect(r Result) {
	if r.Err == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failed++
	if len(p.errs) < maxListed {
		if pe, ok := errors.AsType[*PutError](r.Err); ok {
			p.errs = append(p.errs, pe)
		}
	}
}

// takeFailures returns and forgets the failures collected so far.
func (p *Producer) takeFailures() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failed == 0 {
		return nil
	}
	err := &BatchError{Errors: p.errs, Failed: p.failed}
	p.errs, p.failed = nil, 0
	return err
}

// Flush sends everything buffered now and waits until every record put
// before the call has its outcome, or ctx ends. It returns a *BatchError for
// records put without a callback that failed since the last Flush or Close,
// ctx's error if it ended first, and ErrClosed after Close. It may be called
// concurrently with Put and more than once.
func (p *Producer) Flush(ctx context.Context) error {
	if err := p.e.flush(ctx); err != nil {
		return err
	}
	return p.takeFailures()
}

// Close stops the producer (later Puts return ErrClosed), sends what is
// buffered and waits for every record's outcome until ctx ends; records
// still unwritten then fail with a *PutError wrapping ErrClosed. It returns
// nil when every record was written or reported to its callback; else the
// failures of records put without a callback (a *BatchError) and, if ctx
// ended first, an error saying how many records were not written. Close is
// idempotent; a second call returns the first one's result, without the
// failures it already reported.
func (p *Producer) Close(ctx context.Context) error {
	err := p.e.close(ctx)
	failures := p.takeFailures()
	switch {
	case err == nil:
		return failures
	case failures == nil:
		return err
	}
	return errors.Join(err, failures)
}
