package awstest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	ktypes "github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/smithy-go/eventstream"
)

// KinesisLocalFanOut is a [KinesisClient] option (apply it to
// [ChildOptions]' Kinesis options too) that makes enhanced fan-out
// (SubscribeToShard) on kinesis-local behave as on Kinesis. The client's
// HTTP client is wrapped in a [LocalFanOutClient], which mends the two
// ways kinesis-local's event streams differ. Test code only: Kinesis needs
// neither.
func KinesisLocalFanOut(o *kinesis.Options) {
	o.HTTPClient = &LocalFanOutClient{Base: o.HTTPClient}
}

// LocalFanOutClient is an HTTP client for the SDK that mends kinesis-local's
// SubscribeToShard event streams; other requests pass unchanged. It is safe
// for concurrent use.
//
//   - kinesis-local starts the stream with the first SubscribeToShardEvent,
//     while aws-sdk-go-v2, as for every RPC protocol, first reads an
//     initial-response message and fails without one ("expected
//     initial-response"). The client prepends one, unless the stream has
//     it.
//   - At the end of a closed shard Kinesis sends a last event with the
//     shard's ChildShards and no ContinuationSequenceNumber, and ends the
//     stream; kinesis-local goes on sending empty events with the last
//     continuation forever. On each empty event the client asks the
//     emulator (GetShardIterator after the continuation, then GetRecords)
//     whether the shard is closed and read to its end, and if so replaces
//     the event with Kinesis' last event and ends the stream.
type LocalFanOutClient struct {
	Base interface {
		Do(*http.Request) (*http.Response, error)
	}

	once   sync.Once
	client *kinesis.Client // for the probes of a shard's end, made at the first subscription
}

// Do sends req through Base and mends the answer of a SubscribeToShard.
func (c *LocalFanOutClient) Do(req *http.Request) (*http.Response, error) {
	if !strings.HasSuffix(req.Header.Get("X-Amz-Target"), ".SubscribeToShard") || req.Body == nil {
		return c.Base.Do(req)
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, err
	}
	_ = req.Body.Close()
	req.Body = io.NopCloser(bytes.NewReader(body))
	var in struct{ ConsumerARN, ShardId string }
	_ = json.Unmarshal(body, &in) // a request the SDK made
	resp, err := c.Base.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	c.once.Do(func() {
		base := url.URL{Scheme: req.URL.Scheme, Host: req.URL.Host}
		c.client = kinesis.New(kinesis.Options{Region: Region, Credentials: fakeCredentials(), BaseEndpoint: aws.String(base.String()),
			HTTPClient: c.Base, Retryer: aws.NopRetryer{}, AccountIDEndpointMode: aws.AccountIDEndpointModeDisabled})
	})
	stream := in.ConsumerARN
	if i := strings.Index(stream, ":stream/"); i >= 0 {
		stream = stream[i+len(":stream/"):]
	}
	stream, _, _ = strings.Cut(stream, "/consumer/")
	pr, pw := io.Pipe()
	go c.mend(req.Context(), stream, in.ShardId, resp.Body, pw)
	resp.Body = &mendedBody{PipeReader: pr, orig: resp.Body}
	resp.ContentLength = -1
	return resp, nil
}

// mendedBody closes the emulator's body with the mended one.
type mendedBody struct {
	*io.PipeReader
	orig io.Closer
}

func (b *mendedBody) Close() error {
	_ = b.orig.Close()
	return b.PipeReader.Close()
}

// mend copies the emulator's event stream from orig to w, mended.
func (c *LocalFanOutClient) mend(ctx context.Context, stream, shard string, orig io.ReadCloser, w *io.PipeWriter) {
	defer orig.Close()
	dec, enc := eventstream.NewDecoder(), eventstream.NewEncoder()
	write := func(msg eventstream.Message) error {
		var b bytes.Buffer
		if err := enc.Encode(&b, msg); err != nil {
			return err
		}
		_, err := w.Write(b.Bytes())
		return err
	}
	for first := true; ; first = false {
		msg, err := dec.Decode(orig, nil)
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			w.CloseWithError(err) // nil: a clean end
			return
		}
		typ := ""
		if t := msg.Headers.Get(eventstream.EventTypeHeader); t != nil {
			typ = t.String()
		}
		if first && typ != "initial-response" {
			if err := write(initialResponseMessage()); err != nil {
				return
			}
		}
		last := false
		if typ == "SubscribeToShardEvent" {
			msg, last = c.endOfShard(ctx, stream, shard, msg)
		}
		if err := write(msg); err != nil {
			return // the reader closed the stream
		}
		if last {
			_ = w.Close()
			return
		}
	}
}

// endOfShard returns the event msg, or, when it has no records and the
// shard is closed and read to its end, Kinesis' last event of the shard and
// true.
func (c *LocalFanOutClient) endOfShard(ctx context.Context, stream, shard string, msg eventstream.Message) (eventstream.Message, bool) {
	var ev struct {
		Records                    []json.RawMessage
		ContinuationSequenceNumber *string
	}
	if json.Unmarshal(msg.Payload, &ev) != nil || len(ev.Records) > 0 || ev.ContinuationSequenceNumber == nil {
		return msg, false
	}
	it, err := c.client.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: aws.String(stream), ShardId: aws.String(shard),
		ShardIteratorType: ktypes.ShardIteratorTypeAfterSequenceNumber, StartingSequenceNumber: ev.ContinuationSequenceNumber})
	if err != nil {
		return msg, false
	}
	out, err := c.client.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: it.ShardIterator, Limit: aws.Int32(1)})
	if err != nil || len(out.Records) > 0 || out.NextShardIterator != nil {
		return msg, false // open, or not read to its end
	}
	payload, err := json.Marshal(map[string]any{"Records": []any{}, "MillisBehindLatest": 0, "ChildShards": out.ChildShards})
	if err != nil {
		return msg, false
	}
	msg.Payload = payload
	return msg, true
}

// initialResponseMessage is the event stream message Kinesis starts a
// SubscribeToShard response with: an event of type initial-response whose
// payload is the operation's (empty) output.
func initialResponseMessage() eventstream.Message {
	var msg eventstream.Message
	msg.Headers.Set(eventstream.MessageTypeHeader, eventstream.StringValue(eventstream.EventMessageType))
	msg.Headers.Set(eventstream.EventTypeHeader, eventstream.StringValue("initial-response"))
	msg.Headers.Set(eventstream.ContentTypeHeader, eventstream.StringValue("application/json"))
	msg.Payload = []byte("{}")
	return msg
}
