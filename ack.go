package shardflow

import (
	"errors"
	"sync"
)

// errDoubleAck is the failure of a record whose Ack was completed twice.
var errDoubleAck = errors.New("record acknowledged more than once (Ack.Done must be called exactly once)")

// Ack completes one record handed to a [Sink]. The sink calls Done exactly
// once per record it accepted: with nil once the record is durable, or with
// the error that made it give up. Done may be called from any goroutine, in
// any order across records; the checkpoint still only advances over a
// contiguous run of done records. The zero Ack is valid and Done on it does
// nothing, so sinks can be used outside a pipeline.
type Ack struct {
	tok token
	h   ackFailer
}

// Done reports the outcome of the record. A nil err completes it; a non-nil
// err applies the sink stage's failure policy (dead-letter handler, or stop
// the pipeline). Sinks retry on their own before giving up: the stage's retry
// policy only applies to errors returned by Sink.Write.
func (a Ack) Done(err error) {
	switch {
	case err != nil && a.h != nil:
		a.h.ackFailed(a.tok, err)
	case err == nil && a.tok.g != nil:
		if len(a.tok.g.toks) > 0 && a.tok.g.toks[0].t != nil {
			a.tok.g.toks[0].t.addAcked()
		}
		a.tok.g.done(nil)
	case err == nil && a.tok.t != nil:
		a.tok.t.completeAcked(a.tok.idx, nil, true)
	default:
		a.tok.done(err)
	}
}

// ackFailer turns a sink's asynchronous failure into the stage's policy.
type ackFailer interface {
	ackFailed(tok token, err error)
}

// token ties a value flowing through the stages to the record(s) it came
// from: one tracker slot, or a group of tokens for a batch. It is passed by
// value and costs no allocation for a single record.
type token struct {
	t   *tracker
	idx uint64
	g   *group
}

// addRef declares n more completions of the token (a FlatMap fan-out).
func (k token) addRef(n int32) {
	switch {
	case k.g != nil:
		k.g.addRef(n)
	case k.t != nil:
		k.t.addRef(k.idx, n)
	}
}

// done completes one reference of the token.
func (k token) done(err error) {
	switch {
	case k.g != nil:
		k.g.done(err)
	case k.t != nil:
		k.t.complete(k.idx, err)
	}
}

// position returns the position of the token's (first) record.
func (k token) position() Position {
	switch {
	case k.g != nil:
		if len(k.g.toks) > 0 {
			return k.g.toks[0].position()
		}
	case k.t != nil:
		return k.t.position(k.idx)
	}
	return Position{}
}

// positions appends the positions of the token's records to dst, in order.
func (k token) positions(dst []Position) []Position {
	switch {
	case k.g != nil:
		for _, t := range k.g.toks {
			dst = t.positions(dst)
		}
	case k.t != nil:
		dst = append(dst, k.t.position(k.idx))
	}
	return dst
}

// arrival returns when the token's (first) record arrived in its stream
// (Unix ns; 0: unknown).
func (k token) arrival() int64 {
	switch {
	case k.g != nil:
		if len(k.g.toks) > 0 {
			return k.g.toks[0].arrival()
		}
	case k.t != nil:
		return k.t.arrival(k.idx)
	}
	return 0
}

// group is the token of a batch: done once every reference of the batch is,
// then it completes each member record.
type group struct {
	toks    []token
	mu      sync.Mutex
	pending int32
	failed  bool
}

func newGroup(toks []token) *group { return &group{toks: toks, pending: 1} }

func (g *group) addRef(n int32) {
	g.mu.Lock()
	g.pending += n
	g.mu.Unlock()
}

func (g *group) done(err error) {
	g.mu.Lock()
	g.pending--
	var complete, fail bool
	switch {
	case g.failed:
	case err != nil:
		g.failed, fail = true, true
	case g.pending == 0:
		complete = true
	}
	g.mu.Unlock()
	if fail {
		for _, t := range g.toks {
			t.done(err)
		}
	} else if complete {
		for _, t := range g.toks {
			t.done(nil)
		}
	}
}
