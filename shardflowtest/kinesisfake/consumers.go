package kinesisfake

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
)

// consumer is a registered enhanced fan-out consumer of a stream.
type consumer struct {
	name, arn, stream string
	created           time.Time
	deleted           time.Time // zero while registered

	lastSub  map[string]time.Time     // shard -> last successful SubscribeToShard
	live     map[string]*subscription // shard -> the subscription that reads it now
	nextSend map[string]time.Time     // shard -> when the next event may go, with Limits.FanOutBytesPerSecond
	subCalls map[string]*window       // shard -> SubscribeToShard calls, with Limits.SubscribeToShardCallsPerSecond
}

// status returns the consumer's status at now, and false once a
// deregistered consumer is gone.
func (f *Fake) status(c *consumer, now time.Time) (types.ConsumerStatus, bool) {
	d := f.opts.ConsumerStatusDelay
	switch {
	case !c.deleted.IsZero() && now.Sub(c.deleted) >= d:
		return "", false
	case !c.deleted.IsZero():
		return types.ConsumerStatusDeleting, true
	case now.Sub(c.created) < d:
		return types.ConsumerStatusCreating, true
	}
	return types.ConsumerStatusActive, true
}

// streamConsumers returns the consumers of a stream that exist at now, in
// the order they were registered. Called with f.mu held.
func (f *Fake) streamConsumers(stream string, now time.Time) []*consumer {
	var out []*consumer
	for _, c := range f.consumers {
		if _, ok := f.status(c, now); ok && c.stream == stream {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b *consumer) int {
		if c := a.created.Compare(b.created); c != 0 {
			return c
		}
		return strings.Compare(a.arn, b.arn)
	})
	return out
}

// findConsumer finds an existing consumer by its ARN, or by its stream's
// ARN and its name. Called with f.mu held.
func (f *Fake) findConsumer(consumerARN, streamARN, name *string) (*consumer, error) {
	now := time.Now()
	if a := aws.ToString(consumerARN); a != "" {
		if c, ok := f.consumers[a]; ok {
			if _, exists := f.status(c, now); exists {
				return c, nil
			}
		}
		return nil, &types.ResourceNotFoundException{Message: aws.String("Consumer " + a + " not found.")}
	}
	if aws.ToString(streamARN) == "" || aws.ToString(name) == "" {
		return nil, invalidArgument("either ConsumerARN, or StreamARN and ConsumerName, are required")
	}
	st, err := f.lookup(nil, streamARN)
	if err != nil {
		return nil, err
	}
	for _, c := range f.streamConsumers(st.name, now) {
		if c.name == aws.ToString(name) {
			return c, nil
		}
	}
	return nil, &types.ResourceNotFoundException{Message: aws.String("Consumer " + aws.ToString(name) + " under stream " + st.name + " not found.")}
}

// RegisterStreamConsumer registers a consumer of the stream given by
// StreamARN. It is CREATING for Options.ConsumerStatusDelay, then ACTIVE.
// A name already registered to the stream fails with
// ResourceInUseException; a stream with MaxConsumersPerStream consumers
// fails with LimitExceededException, and so do calls past
// Limits.RegisterStreamConsumerCallsPerSecond.
func (f *Fake) RegisterStreamConsumer(_ context.Context, in *kinesis.RegisterStreamConsumerInput, _ ...func(*kinesis.Options)) (*kinesis.RegisterStreamConsumerOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("RegisterStreamConsumer", in); err != nil {
		return nil, err
	}
	name := aws.ToString(in.ConsumerName)
	if aws.ToString(in.StreamARN) == "" || name == "" {
		return nil, invalidArgument("StreamARN and ConsumerName are required")
	}
	st, err := f.lookup(nil, in.StreamARN)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if n := f.lim.RegisterStreamConsumerCallsPerSecond; n > 0 && !f.registerConsumer.admit(f.now(), n) {
		f.throttled["RegisterStreamConsumer"]++
		return nil, streamLimitExceeded(st.name)
	}
	existing := f.streamConsumers(st.name, now)
	for _, c := range existing {
		if c.name == name {
			return nil, &types.ResourceInUseException{Message: aws.String("Consumer " + name + " under stream " + st.name + " already exists.")}
		}
	}
	if len(existing) >= MaxConsumersPerStream {
		return nil, &types.LimitExceededException{Message: aws.String(fmt.Sprintf("Consumer limit of %d reached for stream %s.", MaxConsumersPerStream, st.name))}
	}
	// Kinesis puts the creation time, in seconds, at the end of the ARN, so
	// that a consumer registered again under the same name has a new one.
	ts := now.Unix()
	arn := ""
	for {
		arn = StreamARN(st.name) + "/consumer/" + name + ":" + strconv.FormatInt(ts, 10)
		if _, taken := f.consumers[arn]; !taken {
			break
		}
		ts++
	}
	c := &consumer{name: name, arn: arn, stream: st.name, created: now,
		lastSub: make(map[string]time.Time), live: make(map[string]*subscription), nextSend: make(map[string]time.Time), subCalls: make(map[string]*window)}
	f.consumers[arn] = c
	status, _ := f.status(c, now)
	return &kinesis.RegisterStreamConsumerOutput{Consumer: &types.Consumer{
		ConsumerARN: aws.String(arn), ConsumerName: aws.String(name), ConsumerStatus: status, ConsumerCreationTimestamp: aws.Time(now),
	}}, nil
}

// DescribeStreamConsumer describes a consumer given by its ARN, or by its
// stream's ARN and its name. A consumer that does not exist (never did, or
// was deregistered and is gone) fails with ResourceNotFoundException.
func (f *Fake) DescribeStreamConsumer(_ context.Context, in *kinesis.DescribeStreamConsumerInput, _ ...func(*kinesis.Options)) (*kinesis.DescribeStreamConsumerOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("DescribeStreamConsumer", in); err != nil {
		return nil, err
	}
	c, err := f.findConsumer(in.ConsumerARN, in.StreamARN, in.ConsumerName)
	if err != nil {
		return nil, err
	}
	status, _ := f.status(c, time.Now())
	return &kinesis.DescribeStreamConsumerOutput{ConsumerDescription: &types.ConsumerDescription{
		ConsumerARN: aws.String(c.arn), ConsumerName: aws.String(c.name), ConsumerStatus: status,
		ConsumerCreationTimestamp: aws.Time(c.created), StreamARN: aws.String(StreamARN(c.stream)),
	}}, nil
}

// DeregisterStreamConsumer deregisters a consumer given by its ARN, or by
// its stream's ARN and its name: it is DELETING for
// Options.ConsumerStatusDelay, then gone. Its open subscriptions end at
// once with ResourceNotFoundException.
func (f *Fake) DeregisterStreamConsumer(_ context.Context, in *kinesis.DeregisterStreamConsumerInput, _ ...func(*kinesis.Options)) (*kinesis.DeregisterStreamConsumerOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("DeregisterStreamConsumer", in); err != nil {
		return nil, err
	}
	c, err := f.findConsumer(in.ConsumerARN, in.StreamARN, in.ConsumerName)
	if err != nil {
		return nil, err
	}
	if !c.deleted.IsZero() {
		return nil, &types.ResourceNotFoundException{Message: aws.String("Consumer " + c.arn + " is being deleted.")}
	}
	c.deleted = time.Now()
	for _, sub := range c.live {
		sub.end(&types.ResourceNotFoundException{Message: aws.String("Consumer " + c.arn + " was deregistered.")})
	}
	return &kinesis.DeregisterStreamConsumerOutput{}, nil
}

// ListStreamConsumers lists the consumers of the stream given by
// StreamARN, in the order they were registered, at most MaxResults
// (default 100) per page.
func (f *Fake) ListStreamConsumers(_ context.Context, in *kinesis.ListStreamConsumersInput, _ ...func(*kinesis.Options)) (*kinesis.ListStreamConsumersOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("ListStreamConsumers", in); err != nil {
		return nil, err
	}
	st, err := f.lookup(nil, in.StreamARN)
	if err != nil {
		return nil, err
	}
	from := 0
	if tok := aws.ToString(in.NextToken); tok != "" {
		if from, err = strconv.Atoi(tok); err != nil || from < 0 {
			return nil, invalidArgument("invalid NextToken")
		}
	}
	limit := int(aws.ToInt32(in.MaxResults))
	if limit <= 0 || limit > 10000 {
		limit = 100
	}
	now := time.Now()
	all := f.streamConsumers(st.name, now)
	out := &kinesis.ListStreamConsumersOutput{}
	for i := from; i < len(all) && i < from+limit; i++ {
		c := all[i]
		status, _ := f.status(c, now)
		out.Consumers = append(out.Consumers, types.Consumer{ConsumerARN: aws.String(c.arn), ConsumerName: aws.String(c.name),
			ConsumerStatus: status, ConsumerCreationTimestamp: aws.Time(c.created)})
	}
	if from+limit < len(all) {
		out.NextToken = aws.String(strconv.Itoa(from + limit))
	}
	return out, nil
}
