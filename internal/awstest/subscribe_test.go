package awstest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/smithy-go/eventstream"
	"github.com/google/go-cmp/cmp"
)

// emulator answers each operation with the body its test gives.
type emulator map[string][]byte

func (e emulator) Do(req *http.Request) (*http.Response, error) {
	op := req.Header.Get("X-Amz-Target")
	op = op[strings.LastIndexByte(op, '.')+1:]
	h := http.Header{}
	h.Set("Content-Type", "application/x-amz-json-1.1")
	return &http.Response{StatusCode: http.StatusOK, Header: h, Body: io.NopCloser(bytes.NewReader(e[op])), Request: req}, nil
}

func event(t *testing.T, typ, payload string) []byte {
	t.Helper()
	var msg eventstream.Message
	msg.Headers.Set(eventstream.MessageTypeHeader, eventstream.StringValue(eventstream.EventMessageType))
	msg.Headers.Set(eventstream.EventTypeHeader, eventstream.StringValue(typ))
	msg.Payload = []byte(payload)
	var b bytes.Buffer
	if err := eventstream.NewEncoder().Encode(&b, msg); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// events decodes a body into its events: "type payload".
func events(t *testing.T, body io.Reader) []string {
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
		out = append(out, msg.Headers.Get(eventstream.EventTypeHeader).String()+" "+string(msg.Payload))
	}
}

func subscribeRequest(t *testing.T) *http.Request {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"ConsumerARN": "arn:aws:kinesis:us-east-1:000000000000:stream/s/consumer/c:1", "ShardId": "shardId-000000000000"})
	req, err := http.NewRequest(http.MethodPost, "http://127.0.0.1:1/", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Amz-Target", "Kinesis_20131202.SubscribeToShard")
	return req
}

func TestLocalFanOutClient(t *testing.T) {
	const (
		withRecord = `{"Records":[{"Data":"eA==","PartitionKey":"k","SequenceNumber":"5"}],"ContinuationSequenceNumber":"5","MillisBehindLatest":0}`
		empty      = `{"Records":[],"ContinuationSequenceNumber":"5","MillisBehindLatest":0}`
		children   = `[{"HashKeyRange":{"EndingHashKey":"9","StartingHashKey":"0"},"ParentShards":["shardId-000000000000"],"ShardId":"shardId-000000000001"}]`
	)
	open := emulator{"GetShardIterator": []byte(`{"ShardIterator":"it"}`), "GetRecords": []byte(`{"Records":[],"NextShardIterator":"it2","MillisBehindLatest":0}`)}
	closed := emulator{"GetShardIterator": []byte(`{"ShardIterator":"it"}`), "GetRecords": []byte(`{"Records":[],"MillisBehindLatest":0,"ChildShards":` + children + `}`)}
	tests := []struct {
		name   string
		emu    emulator
		stream [][]byte
		want   []string
	}{
		{"an initial-response is prepended", open,
			[][]byte{event(t, "SubscribeToShardEvent", withRecord), event(t, "SubscribeToShardEvent", empty)},
			[]string{"initial-response {}", "SubscribeToShardEvent " + withRecord, "SubscribeToShardEvent " + empty}},
		{"a stream that has its initial-response keeps it alone", open,
			[][]byte{event(t, "initial-response", "{}"), event(t, "SubscribeToShardEvent", withRecord)},
			[]string{"initial-response {}", "SubscribeToShardEvent " + withRecord}},
		{"at the end of a closed shard the stream ends with its children", closed,
			[][]byte{event(t, "SubscribeToShardEvent", withRecord), event(t, "SubscribeToShardEvent", empty), event(t, "SubscribeToShardEvent", empty)},
			[]string{"initial-response {}", "SubscribeToShardEvent " + withRecord,
				`SubscribeToShardEvent {"ChildShards":` + children + `,"MillisBehindLatest":0,"Records":[]}`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			emu := emulator{"SubscribeToShard": bytes.Join(tc.stream, nil)}
			for op, b := range tc.emu {
				emu[op] = b
			}
			c := &LocalFanOutClient{Base: emu}
			resp, err := c.Do(subscribeRequest(t))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if diff := cmp.Diff(tc.want, events(t, resp.Body)); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("other operations pass unchanged", func(t *testing.T) {
		c := &LocalFanOutClient{Base: emulator{"ListShards": []byte(`{"Shards":[]}`)}}
		req, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1:1/", strings.NewReader("{}"))
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
