package awstest

import (
	"bytes"
	"io"
	"net/http"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/smithy-go/eventstream"
)

// KinesisInitialResponse is a [KinesisClient] option (apply it to
// [ChildOptions]' Kinesis options too) that makes SubscribeToShard work on
// kinesis-local: the emulator starts its event stream with the first
// SubscribeToShardEvent, while aws-sdk-go-v2, as for every RPC protocol,
// first reads an initial-response message and fails without one ("expected
// initial-response"). The client's HTTP client is wrapped in an
// [InitialResponseClient], which prepends one. Test code only: Kinesis sends
// it.
func KinesisInitialResponse(o *kinesis.Options) {
	o.HTTPClient = &InitialResponseClient{Base: o.HTTPClient}
}

// InitialResponseClient is an HTTP client for the SDK that prepends an
// initial-response event to the body of every successful SubscribeToShard
// response that does not start with one. Other requests pass unchanged. It
// is safe for concurrent use.
type InitialResponseClient struct {
	Base interface {
		Do(*http.Request) (*http.Response, error)
	}
}

// Do sends req through Base and fixes the answer of a SubscribeToShard.
func (c *InitialResponseClient) Do(req *http.Request) (*http.Response, error) {
	resp, err := c.Base.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK || !strings.HasSuffix(req.Header.Get("X-Amz-Target"), ".SubscribeToShard") {
		return resp, err
	}
	// Read the first message, to leave a stream that has its
	// initial-response (a fixed emulator) as it is.
	var first bytes.Buffer
	msg, err := eventstream.NewDecoder().Decode(io.TeeReader(resp.Body, &first), nil)
	if err != nil {
		_ = resp.Body.Close()
		return nil, err
	}
	head := io.Reader(&first)
	if t := msg.Headers.Get(eventstream.EventTypeHeader); t == nil || t.String() != "initial-response" {
		head = io.MultiReader(bytes.NewReader(initialResponse), &first)
	}
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(head, resp.Body), resp.Body}
	resp.ContentLength = -1
	return resp, nil
}

// initialResponse is the event stream message Kinesis starts a
// SubscribeToShard response with: an event of type initial-response whose
// payload is the operation's (empty) output.
var initialResponse = func() []byte {
	var msg eventstream.Message
	msg.Headers.Set(eventstream.MessageTypeHeader, eventstream.StringValue(eventstream.EventMessageType))
	msg.Headers.Set(eventstream.EventTypeHeader, eventstream.StringValue("initial-response"))
	msg.Headers.Set(eventstream.ContentTypeHeader, eventstream.StringValue("application/json"))
	msg.Payload = []byte("{}")
	var b bytes.Buffer
	if err := eventstream.NewEncoder().Encode(&b, msg); err != nil {
		panic(err) // a constant message: cannot fail
	}
	return b.Bytes()
}()
