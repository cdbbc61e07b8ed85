package kinesissource

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/retry"
)

// EnhancedFanOut configures reading by enhanced fan-out
// (Options.EnhancedFanOut). Set exactly one of ConsumerName and ConsumerARN.
//
// With enhanced fan-out, Kinesis pushes each shard's records to a
// registered consumer over a SubscribeToShard subscription: 2 MiB/s per
// shard for that consumer alone (polling readers share 2 MiB/s and 5
// GetRecords calls per second per shard between them all), and records
// arrive about 70ms after they were written (polling: up to IdleInterval,
// 1s by default). AWS charges for it per consumer-shard hour and per GB
// pushed, on top of the stream's price; polling costs nothing more. A
// stream has at most 20 consumers, and Kinesis refuses a subscription of a
// consumer to a shard within 5 seconds of the last one (the source waits,
// and retries the ResourceInUseException of another instance's recent
// subscription under Options.Retry).
//
// Each subscription lasts 5 minutes; the source renews it from the last
// event's ContinuationSequenceNumber, so nothing is skipped or read twice.
// While the pipeline is slow the source stops reading the subscription
// (Kinesis then holds the records back) rather than buffer them.
type EnhancedFanOut struct {
	// ConsumerName names the consumer the source reads through. Run
	// registers it (RegisterStreamConsumer) when the stream has no
	// consumer of that name, and waits until it is ACTIVE. All instances
	// of one application use the same name; each application its own.
	// 1 to 128 characters of letters, digits, '_', '.' and '-'.
	ConsumerName string

	// ConsumerARN, instead of ConsumerName, names a consumer registered
	// beforehand (by infrastructure code, say): Run never registers one,
	// and stops with a *ConsumerDeletedError if it does not exist.
	ConsumerARN string

	// DeregisterOnClose deregisters the consumer when Run returns, if Run
	// registered it: for short-lived readers such as `shardflow tail`,
	// so that a consumer left behind does not go on costing. Leave it
	// false when several instances share the consumer: one instance
	// stopping would end the others' subscriptions (they then stop with a
	// *ConsumerDeletedError). A consumer that existed before Run, or
	// given by ConsumerARN, is never deregistered. A source of several
	// streams (NewStreams) deregisters its consumers 5 a second, the
	// most Kinesis allows an account: with MaxStreams streams Run returns
	// up to 10 seconds later. Default: false.
	DeregisterOnClose bool
}

// FanOutAPI is what a client must implement for Options.EnhancedFanOut, on
// top of API, with the exact aws-sdk-go-v2 signatures: a *kinesis.Client
// satisfies it, and so does the in-memory fake of package
// shardflowtest/kinesisfake.
type FanOutAPI interface {
	API
	DescribeStreamSummary(ctx context.Context, in *kinesis.DescribeStreamSummaryInput, optFns ...func(*kinesis.Options)) (*kinesis.DescribeStreamSummaryOutput, error)
	RegisterStreamConsumer(ctx context.Context, in *kinesis.RegisterStreamConsumerInput, optFns ...func(*kinesis.Options)) (*kinesis.RegisterStreamConsumerOutput, error)
	DescribeStreamConsumer(ctx context.Context, in *kinesis.DescribeStreamConsumerInput, optFns ...func(*kinesis.Options)) (*kinesis.DescribeStreamConsumerOutput, error)
	DeregisterStreamConsumer(ctx context.Context, in *kinesis.DeregisterStreamConsumerInput, optFns ...func(*kinesis.Options)) (*kinesis.DeregisterStreamConsumerOutput, error)
	ListStreamConsumers(ctx context.Context, in *kinesis.ListStreamConsumersInput, optFns ...func(*kinesis.Options)) (*kinesis.ListStreamConsumersOutput, error)
	SubscribeToShard(ctx context.Context, in *kinesis.SubscribeToShardInput, optFns ...func(*kinesis.Options)) (*kinesis.SubscribeToShardOutput, error)
}

var _ FanOutAPI = (*kinesis.Client)(nil)

// MaxConsumersPerStream is how many consumers Kinesis lets a stream have
// registered at once.
const MaxConsumersPerStream = 20

// consumerPollInterval spaces the DescribeStreamConsumer calls of Run
// waiting for a consumer to be ACTIVE.
const consumerPollInterval = time.Second

// deregisterTimeout bounds the deregistration of a consumer when Run
// returns (DeregisterOnClose).
const deregisterTimeout = 10 * time.Second

// readMode is how a source's readers receive records, chosen by New:
// polling (the default), or enhanced fan-out.
type readMode interface {
	// begin prepares a Run's reading of stream st, before any of its
	// shards is read (enhanced fan-out makes sure its consumer exists
	// and is ACTIVE), and returns the mode's state for that stream in
	// that Run.
	begin(ctx context.Context, s *Source, st *streamConf) (runReads, error)
}

// runReads is a read mode's state for one stream in one Run.
type runReads interface {
	newFetcher(r *reader) fetcher
	// counters are the mode's read counters among m's.
	counters(m *sourceMetrics) *readCounters
	// end runs when Run returns, after every reader stopped.
	end(ctx context.Context)
}

var consumerNameRE = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,128}$`)

// fanOut is the enhanced fan-out read mode of a stream.
type fanOut struct {
	client FanOutAPI
	opts   EnhancedFanOut
	pace   *accountPace // shared by the streams of a source
}

// newFanOut checks the enhanced fan-out options of a source, or of one of
// its streams, found in field. pace is the source's, shared by its
// streams.
func newFanOut(client API, o EnhancedFanOut, field string, pace *accountPace) (*fanOut, error) {
	bad := func(name, reason string) error {
		return &shardflow.ConfigError{Field: field + "." + name, Reason: reason}
	}
	fc, ok := client.(FanOutAPI)
	if !ok {
		return nil, &shardflow.ConfigError{Field: "client", Reason: fmt.Sprintf("%T lacks the calls of enhanced fan-out (FanOutAPI: SubscribeToShard, RegisterStreamConsumer, ...)", client)}
	}
	switch {
	case o.ConsumerName == "" && o.ConsumerARN == "":
		return nil, bad("ConsumerName", "set ConsumerName or ConsumerARN")
	case o.ConsumerName != "" && o.ConsumerARN != "":
		return nil, bad("ConsumerARN", "set ConsumerName or ConsumerARN, not both")
	case o.ConsumerName != "" && !consumerNameRE.MatchString(o.ConsumerName):
		return nil, bad("ConsumerName", fmt.Sprintf("%q is not 1 to 128 letters, digits, '_', '.' or '-'", o.ConsumerName))
	case o.ConsumerARN != "" && (!strings.HasPrefix(o.ConsumerARN, "arn:") || !strings.Contains(o.ConsumerARN, "/consumer/")):
		return nil, bad("ConsumerARN", fmt.Sprintf("%q is not a Kinesis stream consumer's ARN", o.ConsumerARN))
	}
	return &fanOut{client: fc, opts: o, pace: pace}, nil
}

func (m *fanOut) begin(ctx context.Context, s *Source, st *streamConf) (runReads, error) {
	arn, registered, err := m.consumer(ctx, s, st)
	if err != nil {
		return nil, err
	}
	st.log.Info("reading by enhanced fan-out", "consumer_arn", arn, "registered", registered)
	return &fanOutRun{s: s, st: st, client: m.client, pace: m.pace, arn: arn, registered: registered, deregister: m.opts.DeregisterOnClose}, nil
}

// consumer returns the ARN of the source's consumer once it is ACTIVE,
// registering it first when it is named and missing, and whether it did.
func (m *fanOut) consumer(ctx context.Context, s *Source, st *streamConf) (arn string, registered bool, err error) {
	in := &kinesis.DescribeStreamConsumerInput{}
	streamARN := ""
	if m.opts.ConsumerARN != "" {
		in.ConsumerARN = aws.String(m.opts.ConsumerARN)
	} else {
		if streamARN, err = m.streamARN(ctx, s, st); err != nil {
			return "", false, err
		}
		in.StreamARN, in.ConsumerName = aws.String(streamARN), aws.String(m.opts.ConsumerName)
	}
	start := time.Now()
	for {
		var d *types.ConsumerDescription
		err := s.call(ctx, st.log, "describe stream consumer", func(ctx context.Context) error {
			out, err := m.client.DescribeStreamConsumer(ctx, in)
			if err == nil {
				d = out.ConsumerDescription
			}
			return err
		})
		switch {
		case isNotFound(err) && m.opts.ConsumerARN != "":
			return "", false, &ConsumerDeletedError{Stream: st.name, ConsumerARN: m.opts.ConsumerARN, Err: err}
		case isNotFound(err):
			arn, err := m.register(ctx, s, st, streamARN)
			if errors.Is(err, errConsumerExists) {
				continue // another instance registered it meanwhile
			}
			if err != nil {
				return "", false, err
			}
			registered = true
			in = &kinesis.DescribeStreamConsumerInput{ConsumerARN: aws.String(arn)}
			continue
		case err != nil:
			return "", false, fmt.Errorf("describe the enhanced fan-out consumer of stream %q: %w", st.name, err)
		case d.ConsumerStatus == types.ConsumerStatusActive:
			return aws.ToString(d.ConsumerARN), registered, nil
		}
		// CREATING; or DELETING, a consumer of that name being deregistered,
		// registered anew once it is gone.
		if s.policy.MaxElapsed > 0 && time.Since(start) >= s.policy.MaxElapsed {
			return "", false, fmt.Errorf("enhanced fan-out consumer %s of stream %q still %s after %v", aws.ToString(d.ConsumerARN), st.name, d.ConsumerStatus, time.Since(start).Round(time.Second))
		}
		st.log.Info("waiting for the enhanced fan-out consumer to be ACTIVE", "consumer_arn", aws.ToString(d.ConsumerARN), "status", d.ConsumerStatus)
		if err := sleepOr(ctx, consumerPollInterval, nil); err != nil {
			return "", false, err
		}
	}
}

// errConsumerExists: RegisterStreamConsumer found the name taken, by
// another instance registering it at the same time.
var errConsumerExists = errors.New("consumer already registered")

// register registers the source's consumer and returns its ARN.
func (m *fanOut) register(ctx context.Context, s *Source, st *streamConf, streamARN string) (string, error) {
	var arn string
	err := s.call(ctx, st.log, "register stream consumer", func(ctx context.Context) error {
		if err := m.pace.registerStreamConsumer.wait(ctx); err != nil {
			return err
		}
		out, err := m.client.RegisterStreamConsumer(ctx, &kinesis.RegisterStreamConsumerInput{StreamARN: aws.String(streamARN), ConsumerName: aws.String(m.opts.ConsumerName)})
		switch {
		case err == nil:
			arn = aws.ToString(out.Consumer.ConsumerARN)
			return nil
		case isResourceInUse(err):
			return retry.Permanent(errConsumerExists)
		case isLimitExceeded(err):
			// The same code means a call rate exceeded (retried) or a
			// stream with all the consumers it may have (permanent):
			// count them to know.
			if n, lerr := m.countConsumers(ctx, streamARN); lerr == nil && n >= MaxConsumersPerStream {
				return retry.Permanent(&ConsumerLimitError{Stream: st.name, ConsumerName: m.opts.ConsumerName, Consumers: n, Err: err})
			}
		}
		return err
	})
	if err != nil {
		return "", fmt.Errorf("register enhanced fan-out consumer %q of stream %q: %w", m.opts.ConsumerName, st.name, err)
	}
	st.log.Info("registered enhanced fan-out consumer", "consumer_arn", arn)
	return arn, nil
}

// countConsumers counts the consumers registered to the stream.
func (m *fanOut) countConsumers(ctx context.Context, streamARN string) (int, error) {
	n := 0
	in := &kinesis.ListStreamConsumersInput{StreamARN: aws.String(streamARN)}
	for {
		out, err := m.client.ListStreamConsumers(ctx, in)
		if err != nil {
			return 0, err
		}
		n += len(out.Consumers)
		if aws.ToString(out.NextToken) == "" {
			return n, nil
		}
		in = &kinesis.ListStreamConsumersInput{NextToken: out.NextToken}
	}
}

// streamARN returns the ARN of stream st, which consumers are
// registered to.
func (m *fanOut) streamARN(ctx context.Context, s *Source, st *streamConf) (string, error) {
	if st.arn != "" {
		return st.arn, nil
	}
	var arn string
	err := s.call(ctx, st.log, "describe stream summary", func(ctx context.Context) error {
		if err := m.pace.describeStreamSummary.wait(ctx); err != nil {
			return err
		}
		out, err := m.client.DescribeStreamSummary(ctx, &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(st.name)})
		if err == nil {
			arn = aws.ToString(out.StreamDescriptionSummary.StreamARN)
		}
		return err
	})
	if err != nil {
		return "", fmt.Errorf("describe stream %q: %w", st.name, err)
	}
	return arn, nil
}

// fanOutRun is enhanced fan-out's state for one Run.
type fanOutRun struct {
	s          *Source
	st         *streamConf
	client     FanOutAPI
	pace       *accountPace
	arn        string // the consumer's, ACTIVE
	registered bool   // by this Run
	deregister bool   // DeregisterOnClose
}

func (f *fanOutRun) newFetcher(r *reader) fetcher { return &fanOutFetcher{r: r, run: f} }

func (f *fanOutRun) counters(m *sourceMetrics) *readCounters { return &m.fanOut }

func (f *fanOutRun) end(ctx context.Context) {
	if !f.deregister || !f.registered {
		return
	}
	// Kinesis allows 5 deregistrations a second per account: the streams
	// of a source take turns, and each call has deregisterTimeout from
	// its turn on (so Run returns at most MaxStreams/5 seconds later).
	bg := context.WithoutCancel(ctx)
	_ = f.pace.deregisterStreamConsumer.wait(bg) // bg never ends
	dctx, cancel := context.WithTimeout(bg, deregisterTimeout)
	defer cancel()
	first := true
	err := f.s.call(dctx, f.st.log, "deregister stream consumer", func(ctx context.Context) error {
		if !first {
			if err := f.pace.deregisterStreamConsumer.wait(ctx); err != nil {
				return err
			}
		}
		first = false
		_, err := f.client.DeregisterStreamConsumer(ctx, &kinesis.DeregisterStreamConsumerInput{ConsumerARN: aws.String(f.arn)})
		return err
	})
	if err != nil {
		f.st.log.Warn("enhanced fan-out consumer not deregistered; it goes on costing until it is", "consumer_arn", f.arn, "err", err)
		return
	}
	f.st.log.Info("deregistered enhanced fan-out consumer", "consumer_arn", f.arn)
}

// consumerGone reports whether the run's consumer was deregistered: it no
// longer exists, or is being deleted.
func (f *fanOutRun) consumerGone(ctx context.Context) (bool, error) {
	var status types.ConsumerStatus
	err := f.s.call(ctx, f.st.log, "describe stream consumer", func(ctx context.Context) error {
		out, err := f.client.DescribeStreamConsumer(ctx, &kinesis.DescribeStreamConsumerInput{ConsumerARN: aws.String(f.arn)})
		if err == nil {
			status = out.ConsumerDescription.ConsumerStatus
		}
		return err
	})
	switch {
	case isNotFound(err):
		return true, nil
	case err != nil:
		return false, err
	}
	return status == types.ConsumerStatusDeleting, nil
}

func isNotFound(err error) bool {
	_, ok := errors.AsType[*types.ResourceNotFoundException](err)
	return ok
}

func isResourceInUse(err error) bool {
	_, ok := errors.AsType[*types.ResourceInUseException](err)
	return ok
}

func isLimitExceeded(err error) bool {
	_, ok := errors.AsType[*types.LimitExceededException](err)
	return ok
}
