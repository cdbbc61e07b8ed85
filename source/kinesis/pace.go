package kinesissource

import (
	"context"
	"sync"
	"time"
)

// Kinesis limits some calls per account rather than per stream or shard:
// every stream of a source (NewStreams) read by enhanced fan-out makes
// them when Run starts, all at once, and with DeregisterOnClose when Run
// returns.
const (
	// describeStreamSummaryPerSecond: DescribeStreamSummary, 20 per
	// second per account (DescribeStreamSummary API reference).
	describeStreamSummaryPerSecond = 20
	// registerStreamConsumerPerSecond: RegisterStreamConsumer, 5 per
	// second per account (RegisterStreamConsumer API reference).
	registerStreamConsumerPerSecond = 5
	// deregisterStreamConsumerPerSecond: DeregisterStreamConsumer, 5
	// per second per account (DeregisterStreamConsumer API reference).
	deregisterStreamConsumerPerSecond = 5
)

// accountPace spaces a source's calls that Kinesis limits per account, so
// that its streams together stay within the limits instead of being
// throttled and retried. Other processes of the account may still spend
// the allowance: a throttled call is then retried as any other.
type accountPace struct {
	describeStreamSummary    pacer
	registerStreamConsumer   pacer
	deregisterStreamConsumer pacer
}

func newAccountPace() *accountPace {
	return &accountPace{
		describeStreamSummary:  pacer{gap: time.Second / describeStreamSummaryPerSecond},
		registerStreamConsumer: pacer{gap: time.Second / registerStreamConsumerPerSecond},

		deregisterStreamConsumer: pacer{gap: time.Second / deregisterStreamConsumerPerSecond},
	}
}

// pacer hands out turns at least gap apart: at most one call per gap
// however many goroutines ask. It is safe for concurrent use.
type pacer struct {
	gap time.Duration

	mu   sync.Mutex
	next time.Time // the earliest time of the next turn
}

// wait blocks until the caller's turn, or until ctx is done (it then
// returns ctx's error; the turn it had is lost, which only spaces later
// calls more).
func (p *pacer) wait(ctx context.Context) error {
	p.mu.Lock()
	now := time.Now()
	at := p.next
	if at.Before(now) {
		at = now
	}
	p.next = at.Add(p.gap)
	p.mu.Unlock()
	return sleepOr(ctx, time.Until(at), nil)
}
