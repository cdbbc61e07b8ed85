package kinesisfake

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/schemas"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/eventstream"
	"github.com/aws/smithy-go/transport/http/protocol/awsjson"
)

// subscription is one open SubscribeToShard event stream.
type subscription struct {
	c     *consumer
	st    *stream
	shard *shard
	pos   int // index of the first record to send

	done       chan struct{} // closed by end
	err        error         // why end ended it, sent to the reader
	readerGone chan struct{} // closed when the reader closed the stream
	goneOnce   sync.Once
}

// end ends the subscription with err, an exception sent to its reader.
// Called with f.mu held.
func (s *subscription) end(err error) {
	select {
	case <-s.done:
	default:
		s.err = err
		close(s.done)
	}
}

// InjectSubscriptionError makes every open and later subscription call fn
// before each event it sends, with the consumer's ARN and the shard id; a
// non-nil error ends that subscription. An error of a type Kinesis sends
// inside the event stream (*types.ResourceInUseException,
// *types.ResourceNotFoundException, *types.InternalFailureException, the
// KMS exceptions) reaches the reader as that type from the stream's Err; any
// other error breaks the connection, as a network failure does, and reaches
// the reader as the SDK's error of a broken event stream. nil removes it.
func (f *Fake) InjectSubscriptionError(fn func(consumerARN, shardID string) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.injectSub = fn
}

// Subscriptions returns how many subscriptions are open: those whose event
// stream neither ended nor was closed by its reader.
func (f *Fake) Subscriptions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

// SubscribeToShard subscribes the consumer given by ConsumerARN to a shard,
// from StartingPosition (any type GetShardIterator takes, with
// SequenceNumber or Timestamp). Errors are those of Kinesis: a consumer or
// shard that does not exist fails with ResourceNotFoundException; a
// consumer that is not ACTIVE, or a second call for the same consumer and
// shard within ResubscribeInterval of a successful one, with
// ResourceInUseException. A later call takes the subscription over: the
// older one ends with ResourceInUseException.
//
// The output is the AWS SDK's own: its GetStream() yields
// *types.SubscribeToShardEventStreamMemberSubscribeToShardEvent values,
// encoded in Kinesis' event stream format (initial-response first) and
// decoded by the SDK's event stream reader, so code reads the fake exactly as
// it reads Kinesis. Each event carries the records read (at most
// MaxEventBytes), ContinuationSequenceNumber (the sequence number after which
// a new subscription, AFTER_SEQUENCE_NUMBER, goes on; the last record's when
// the event has records) and MillisBehindLatest. Records are pushed as
// they are written; with nothing new, an event with no records comes every
// EventInterval. At the end of a closed shard, the last event has the
// shard's ChildShards and no ContinuationSequenceNumber, and the stream
// ends. A subscription ends on its own after Options.SubscriptionDuration
// (Events closes, Err is nil). With Limits.FanOutBytesPerSecond (or
// Options.ReadLimits), events are paced at that rate per consumer and
// shard; with Limits.SubscribeToShardCallsPerSecond, calls past it for one
// consumer and shard fail with LimitExceededException. A reader that does not read
// holds the events back, as HTTP/2 flow control does.
//
// The stream ends when ctx ends, as the SDK's does. Close it when done.
func (f *Fake) SubscribeToShard(ctx context.Context, in *kinesis.SubscribeToShardInput, _ ...func(*kinesis.Options)) (*kinesis.SubscribeToShardOutput, error) {
	sub, err := f.subscribe(in)
	if err != nil {
		return nil, err
	}
	out, err := f.sdkClient().SubscribeToShard(context.WithValue(ctx, subscriptionKey{}, sub), in, freshProtocol)
	if err != nil {
		f.drop(sub)
		return nil, err
	}
	return out, nil
}

// freshProtocol gives one SDK call a protocol of its own: the event stream
// codec of a protocol keeps state that concurrent streams race on
// (aws/smithy-go#714), so each subscription gets its own.
func freshProtocol(o *kinesis.Options) { o.Protocol = awsjson.New11(schemas.Kinesis_20131202) }

// subscribe checks a SubscribeToShard call and opens its subscription.
func (f *Fake) subscribe(in *kinesis.SubscribeToShardInput) (*subscription, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("SubscribeToShard", in); err != nil {
		return nil, err
	}
	if aws.ToString(in.ConsumerARN) == "" || aws.ToString(in.ShardId) == "" || in.StartingPosition == nil {
		return nil, invalidArgument("ConsumerARN, ShardId and StartingPosition are required")
	}
	c, err := f.findConsumer(in.ConsumerARN, nil, nil)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if n := f.lim.SubscribeToShardCallsPerSecond; n > 0 {
		w := c.subCalls[aws.ToString(in.ShardId)]
		if w == nil {
			w = new(window)
			c.subCalls[aws.ToString(in.ShardId)] = w
		}
		if !w.admit(f.now(), n) {
			f.throttled["SubscribeToShard"]++
			return nil, &types.LimitExceededException{Message: aws.String("Rate exceeded for consumer " + c.arn + " and shard " + aws.ToString(in.ShardId) + ".")}
		}
	}
	if status, _ := f.status(c, now); status != types.ConsumerStatusActive {
		return nil, &types.ResourceInUseException{Message: aws.String("Consumer " + c.arn + " is " + string(status) + ", not ACTIVE.")}
	}
	st, err := f.lookup(aws.String(c.stream), nil)
	if err != nil {
		return nil, err
	}
	s := st.shard(aws.ToString(in.ShardId))
	if s == nil {
		return nil, &types.ResourceNotFoundException{Message: aws.String("Shard " + aws.ToString(in.ShardId) + " in stream " + st.name + " not found")}
	}
	sp := in.StartingPosition
	pos, err := startIndex(s, sp.Type, sp.SequenceNumber, sp.Timestamp)
	if err != nil {
		return nil, err
	}
	if last, ok := c.lastSub[s.id]; ok && now.Sub(last) < ResubscribeInterval {
		return nil, &types.ResourceInUseException{Message: aws.String("Another active subscription exists for consumer " + c.arn + " and shard " + s.id + ".")}
	}
	if old := c.live[s.id]; old != nil {
		old.end(&types.ResourceInUseException{Message: aws.String("The subscription of consumer " + c.arn + " to shard " + s.id + " was taken over by a new one.")})
	}
	sub := &subscription{c: c, st: st, shard: s, pos: pos, done: make(chan struct{}), readerGone: make(chan struct{})}
	c.live[s.id], c.lastSub[s.id] = sub, now
	f.subs[sub] = true
	return sub, nil
}

// drop forgets a subscription that ended.
func (f *Fake) drop(sub *subscription) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.subs, sub)
	if sub.c.live[sub.shard.id] == sub {
		delete(sub.c.live, sub.shard.id)
	}
}

type subscriptionKey struct{}

// sdkClient returns the SDK client that decodes the fake's event streams.
// Its HTTP client is the fake itself: nothing is ever dialed.
func (f *Fake) sdkClient() *kinesis.Client {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sdk == nil {
		f.sdk = kinesis.New(kinesis.Options{
			Region:       region,
			BaseEndpoint: aws.String("http://127.0.0.1"), // never dialed
			Credentials:  aws.AnonymousCredentials{},
			HTTPClient:   transport{f},
			Retryer:      aws.NopRetryer{},
		})
	}
	return f.sdk
}

// transport answers the SDK client's SubscribeToShard requests with the
// subscription's event stream.
type transport struct{ f *Fake }

func (t transport) Do(req *http.Request) (*http.Response, error) {
	sub, ok := req.Context().Value(subscriptionKey{}).(*subscription)
	if !ok {
		return nil, errors.New("kinesisfake: the fake's internal client serves SubscribeToShard only")
	}
	pr, pw := io.Pipe()
	go t.f.serve(req.Context(), sub, pw)
	h := http.Header{}
	h.Set("Content-Type", "application/vnd.amazon.eventstream")
	return &http.Response{Status: "200 OK", StatusCode: http.StatusOK, Proto: "HTTP/2.0", ProtoMajor: 2,
		Header: h, Body: &streamBody{PipeReader: pr, sub: sub}, ContentLength: -1, Request: req}, nil
}

// streamBody tells the subscription when its reader closed it.
type streamBody struct {
	*io.PipeReader
	sub *subscription
}

func (b *streamBody) Close() error {
	b.sub.goneOnce.Do(func() { close(b.sub.readerGone) })
	return b.PipeReader.Close()
}

// serve writes a subscription's event stream until it ends, its reader
// closes it, or ctx ends.
func (f *Fake) serve(ctx context.Context, sub *subscription, pw *io.PipeWriter) {
	defer f.drop(sub)
	w := &eventWriter{pw: pw, proto: awsjson.New11(schemas.Kinesis_20131202)}
	if err := w.initialResponse(); err != nil {
		return
	}
	expiry := time.NewTimer(f.opts.SubscriptionDuration)
	defer expiry.Stop()
	var last time.Time // when the last event was sent; zero: none was
	for {
		select {
		case <-sub.done:
			w.fail(sub.err)
			return
		case <-expiry.C:
			_ = pw.Close()
			return
		case <-sub.readerGone:
			return
		case <-ctx.Done():
			pw.CloseWithError(ctx.Err())
			return
		default:
		}
		f.mu.Lock()
		ev, final, changed := f.nextEvent(sub, last)
		var injected error
		var pace time.Duration
		if ev != nil {
			if f.injectSub != nil {
				injected = f.injectSub(sub.c.arn, sub.shard.id)
			}
			if rate := f.lim.FanOutBytesPerSecond; rate > 0 {
				pace = sub.c.reserve(sub.shard.id, recordBytes(ev.Records), rate)
			}
		}
		f.mu.Unlock()
		if injected != nil {
			w.fail(injected)
			return
		}
		var wake <-chan time.Time
		if ev == nil {
			wake = time.After(EventInterval - time.Since(last))
		} else if pace > 0 {
			wake = time.After(pace)
		}
		if wake != nil {
			select {
			case <-wake:
			case <-changed:
			case <-sub.done:
				continue
			case <-expiry.C:
				_ = pw.Close()
				return
			case <-sub.readerGone:
				return
			case <-ctx.Done():
				pw.CloseWithError(ctx.Err())
				return
			}
		}
		if ev == nil {
			continue
		}
		if err := w.event(ev); err != nil {
			return // the reader closed the stream
		}
		last = time.Now()
		if final {
			_ = pw.Close()
			return
		}
	}
}

// nextEvent returns the next event of sub, and whether it is the last of a
// closed shard, and moves sub on past its records. It returns nil when
// nothing is to be sent before the shard changes (the channel returned) or
// the next EventInterval since last. Called with f.mu held.
func (f *Fake) nextEvent(sub *subscription, last time.Time) (ev *types.SubscribeToShardEvent, final bool, changed <-chan struct{}) {
	s := sub.shard
	n := len(s.records)
	end := min(sub.pos+maxGetRecordsLimit, n)
	end = sub.pos + fitBytes(s.records[sub.pos:end], MaxEventBytes)
	switch {
	case end > sub.pos, s.closed(), last.IsZero(), time.Since(last) >= EventInterval:
	default:
		return nil, false, s.changed
	}
	ev = &types.SubscribeToShardEvent{Records: append([]types.Record{}, s.records[sub.pos:end]...), MillisBehindLatest: aws.Int64(behindLatest(s, end))}
	sub.pos = end
	if s.closed() && end == n {
		ev.ChildShards = sub.st.children(s)
		return ev, true, nil
	}
	cont := s.startSeq
	if end > 0 {
		cont = aws.ToString(s.records[end-1].SequenceNumber)
	}
	ev.ContinuationSequenceNumber = aws.String(cont)
	return ev, false, nil
}

// reserve books the sending of n bytes of shard's records to the consumer
// at rate bytes per second, and returns how long to wait before sending
// them. Called with f.mu held.
func (c *consumer) reserve(shard string, n, rate int) time.Duration {
	now := time.Now()
	at := c.nextSend[shard]
	if at.Before(now) {
		at = now
	}
	c.nextSend[shard] = at.Add(time.Duration(float64(n) / float64(rate) * float64(time.Second)))
	return at.Sub(now)
}

// eventWriter writes Kinesis' event stream messages.
type eventWriter struct {
	pw    *io.PipeWriter
	proto *awsjson.Protocol
	buf   bytes.Buffer
	enc   *eventstream.Encoder
}

// initialResponse writes the message every event stream of an RPC protocol
// starts with, which the SDK requires.
func (w *eventWriter) initialResponse() error {
	var msg eventstream.Message
	msg.Headers.Set(eventstream.MessageTypeHeader, eventstream.StringValue(eventstream.EventMessageType))
	msg.Headers.Set(eventstream.EventTypeHeader, eventstream.StringValue("initial-response"))
	msg.Headers.Set(eventstream.ContentTypeHeader, eventstream.StringValue("application/json"))
	msg.Payload = []byte("{}")
	return w.write(msg)
}

// event writes a SubscribeToShardEvent, encoded by the SDK's own protocol.
func (w *eventWriter) event(ev *types.SubscribeToShardEvent) error {
	w.buf.Reset()
	if err := w.proto.SerializeEventMessage(schemas.SubscribeToShardEventStream, schemas.SubscribeToShardEventStream_SubscribeToShardEvent, ev, &w.buf); err != nil {
		return err
	}
	_, err := w.pw.Write(w.buf.Bytes())
	return err
}

// fail ends the stream with err: as an exception message when Kinesis
// sends such errors in the stream, else as a broken connection.
func (w *eventWriter) fail(err error) {
	var ae smithy.APIError
	if errors.As(err, &ae) && schemas.SubscribeToShardEventStream.Member(ae.ErrorCode()) != nil {
		var msg eventstream.Message
		msg.Headers.Set(eventstream.MessageTypeHeader, eventstream.StringValue(eventstream.ExceptionMessageType))
		msg.Headers.Set(eventstream.ExceptionTypeHeader, eventstream.StringValue(ae.ErrorCode()))
		msg.Headers.Set(eventstream.ContentTypeHeader, eventstream.StringValue("application/json"))
		msg.Payload, _ = json.Marshal(map[string]string{"message": ae.ErrorMessage()})
		if w.write(msg) == nil {
			_ = w.pw.Close()
			return
		}
	}
	w.pw.CloseWithError(err)
}

func (w *eventWriter) write(msg eventstream.Message) error {
	if w.enc == nil {
		w.enc = eventstream.NewEncoder()
	}
	w.buf.Reset()
	if err := w.enc.Encode(&w.buf, msg); err != nil {
		return err
	}
	_, err := w.pw.Write(w.buf.Bytes())
	return err
}
