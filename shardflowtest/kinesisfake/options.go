package kinesisfake

import (
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
)

// Limits of enhanced fan-out and of reads, as Kinesis has them. The read
// limits apply only with Options.ReadLimits; the others always.
const (
	// DefaultSubscriptionDuration is how long a subscription lasts before
	// Kinesis ends it: the default of Options.SubscriptionDuration.
	DefaultSubscriptionDuration = 5 * time.Minute
	// ResubscribeInterval is how long after a successful SubscribeToShard
	// call another one for the same consumer and shard is refused with
	// ResourceInUseException. A call after it takes the subscription
	// over, and the older one ends with ResourceInUseException.
	ResubscribeInterval = 5 * time.Second
	// EventInterval is how often a subscription with nothing new sends an
	// event anyway (no records, the same continuation), as Kinesis does.
	EventInterval = 5 * time.Second
	// MaxConsumersPerStream is the most consumers registered to a stream
	// at once: RegisterStreamConsumer beyond it fails with
	// LimitExceededException.
	MaxConsumersPerStream = 20
	// MaxEventBytes is the most record bytes (data and partition keys) the
	// fake puts in one SubscribeToShard event; an event holds at most
	// maxGetRecordsLimit records as well.
	MaxEventBytes = 1 << 20

	// MaxGetRecordsPerSecond is the most GetRecords calls per shard in any
	// second, all readers together, with ReadLimits.
	MaxGetRecordsPerSecond = 5
	// ShardReadBytesPerSecond is the rate of record bytes per shard that
	// all GetRecords callers share, with ReadLimits: a call that finds the
	// shard's allowance spent fails with
	// ProvisionedThroughputExceededException. A call may return more than
	// the allowance (up to MaxGetRecordsBytes); the calls after it are
	// refused until the debt is paid back at this rate, as Kinesis does.
	ShardReadBytesPerSecond = 2 << 20
	// MaxGetRecordsBytes is the most record bytes one GetRecords call
	// returns, with ReadLimits.
	MaxGetRecordsBytes = 10 << 20
	// FanOutBytesPerSecond is the rate at which a shard's records are
	// pushed to each consumer, with ReadLimits: every consumer has its
	// own, whatever the other consumers and pollers read.
	FanOutBytesPerSecond = 2 << 20
)

// Options configure a Fake. The zero value of every field means its
// documented default.
type Options struct {
	// SubscriptionDuration is how long a subscription lasts: the fake ends
	// its event stream (Events closes, Err is nil) this long after
	// SubscribeToShard returned, as Kinesis does after 5 minutes. Tests
	// shorten it to make subscriptions renew often. Default: 5m.
	SubscriptionDuration time.Duration

	// ConsumerStatusDelay is how long a registered consumer stays CREATING
	// before it is ACTIVE, and a deregistered one DELETING before it is
	// gone. SubscribeToShard refuses a consumer that is not ACTIVE with
	// ResourceInUseException. Default: 0, ACTIVE at once (Kinesis takes
	// a few seconds).
	ConsumerStatusDelay time.Duration

	// ReadLimits enforces the read limits Kinesis has per shard:
	// MaxGetRecordsPerSecond calls and ShardReadBytesPerSecond, shared by
	// every GetRecords caller, each call returning at most
	// MaxGetRecordsBytes; and FanOutBytesPerSecond pushed to each
	// consumer's subscription, whatever the others read. It is a shorthand
	// for the read fields of AWSLimits in Limits (where Limits sets one,
	// Limits' value wins). Default: false, no read limit (tests run as
	// fast as the machine allows).
	ReadLimits bool

	// Limits enforces the rate limits of Kinesis it sets: writes, reads
	// and control-plane calls, per shard, stream, consumer or account
	// (see Limits; AWSLimits returns them all at AWS's values). Refused
	// calls and entries fail with the errors Kinesis returns; ShardStats
	// and Throttled count them. Default: nil, no rate limit. The request
	// limits (MaxPutRecordsEntries, MaxPutRecordsBytes, MaxRecordBytes,
	// MaxPartitionKeyLen) are always enforced.
	Limits *Limits

	// Now is the clock of the rate limits of Limits and ReadLimits: a
	// test or simulation that drives time itself (a clock it advances by
	// hand, or a frozen one for a deterministic example) sets it. The
	// rest of the fake (iterator expiry, arrival timestamps, consumer
	// status, subscriptions and the pacing of their events) runs on the
	// time package, which testing/synctest makes virtual. Default:
	// time.Now. It is called with the fake's lock held, so it must not
	// call the Fake.
	Now func() time.Time
}

// recordBytes is what records count against the read limits: their data
// and partition keys.
func recordBytes(recs []types.Record) int {
	n := 0
	for i := range recs {
		n += len(recs[i].Data) + len(aws.ToString(recs[i].PartitionKey))
	}
	return n
}

// fitBytes returns how many of recs, from the first, fit in limit bytes;
// at least one when recs is not empty.
func fitBytes(recs []types.Record, limit int) int {
	n := 0
	for i := range recs {
		n += len(recs[i].Data) + len(aws.ToString(recs[i].PartitionKey))
		if n > limit && i > 0 {
			return i
		}
	}
	return len(recs)
}
