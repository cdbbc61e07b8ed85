package awstest

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/aws/smithy-go/eventstream"
	"github.com/google/go-cmp/cmp"
)

type answer struct{ body []byte }

func (a answer) Do(req *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Body: io.NopCloser(bytes.NewReader(a.body)), Request: req}, nil
}

func event(t *testing.T, typ string) []byte {
	t.Helper()
	var msg eventstream.Message
	msg.Headers.Set(eventstream.MessageTypeHeader, eventstream.StringValue(eventstream.EventMessageType))
	msg.Headers.Set(eventstream.EventTypeHeader, eventstream.StringValue(typ))
	msg.Payload = []byte("{}")
	var b bytes.Buffer
	if err := eventstream.NewEncoder().Encode(&b, msg); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// eventTypes decodes a body into the types of its events.
func eventTypes(t *testing.T, body io.Reader) []string {
	t.Helper()
	var out []string
	for {
		msg, err := eventstream.NewDecoder().Decode(body, nil)
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, msg.Headers.Get(eventstream.EventTypeHeader).String())
	}
}

func TestInitialResponseClient(t *testing.T) {
	stream := append(event(t, "SubscribeToShardEvent"), event(t, "SubscribeToShardEvent")...)
	fixed := append(event(t, "initial-response"), stream...)
	tests := []struct {
		name   string
		target string
		body   []byte
		want   []string // event types of the body the SDK gets; nil: unchanged
	}{
		{"kinesis-local's stream gets an initial-response first", "Kinesis_20131202.SubscribeToShard", stream,
			[]string{"initial-response", "SubscribeToShardEvent", "SubscribeToShardEvent"}},
		{"a stream that has its initial-response is left as it is", "Kinesis_20131202.SubscribeToShard", fixed,
			[]string{"initial-response", "SubscribeToShardEvent", "SubscribeToShardEvent"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &InitialResponseClient{Base: answer{tc.body}}
			req, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1/", nil)
			req.Header.Set("X-Amz-Target", tc.target)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if diff := cmp.Diff(tc.want, eventTypes(t, resp.Body)); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("other operations pass unchanged", func(t *testing.T) {
		c := &InitialResponseClient{Base: answer{[]byte(`{"Shards":[]}`)}}
		req, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1/", nil)
		req.Header.Set("X-Amz-Target", "Kinesis_20131202.ListShards")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if b, _ := io.ReadAll(resp.Body); string(b) != `{"Shards":[]}` {
			t.Errorf("ListShards body %q; want it unchanged", b)
		}
	})
}
