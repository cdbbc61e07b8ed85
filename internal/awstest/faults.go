package awstest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
)

// Fault is what a [FaultClient] does to one request.
type Fault int

const (
	// Pass sends the request to the emulator unchanged.
	Pass Fault = iota
	// Throttle answers 400 ProvisionedThroughputExceededException without
	// sending the request.
	Throttle
	// ServerError answers 500 InternalFailure without sending the request.
	ServerError
	// ResetBefore fails with a connection reset without sending the request.
	ResetBefore
	// ResetAfter sends the request, then fails with a connection reset: the
	// emulator did the work but the caller never hears of it.
	ResetAfter
	// Slow sends the request after a delay of FaultClient.SlowDelay.
	Slow
	// PartialFailure, for PutRecords, sends the emulator only some of the
	// request's entries (about a third fail, chosen at random) and answers
	// the others with a per-entry ProvisionedThroughputExceededException,
	// as Kinesis does under load. Other operations pass unchanged.
	PartialFailure
	// SlowAnswer sends the request at once, then holds the answer back for
	// FaultClient.SlowDelay: a caller that gives up meanwhile (a cancelled
	// context, a timeout) never hears that the emulator did the work.
	SlowAnswer
)

func (f Fault) String() string {
	return [...]string{"pass", "throttle", "500", "reset-before", "reset-after", "slow", "partial", "slow-answer"}[f]
}

// FaultClient is an HTTP client for the SDK (kinesis.Options.HTTPClient,
// dynamodb.Options.HTTPClient) that injects faults around an emulator, since
// no emulator throttles or fails on its own. Decide picks the fault of each
// request from the API operation ("GetRecords", "PutRecords", "PutItem", ...)
// and the count of that operation's requests so far (from 1). It is safe for
// concurrent use and counts what it injected.
type FaultClient struct {
	Base interface {
		Do(*http.Request) (*http.Response, error)
	}
	Decide    func(op string, n int) Fault
	SlowDelay time.Duration

	mu       sync.Mutex
	rng      *rand.Rand
	calls    map[string]int
	injected map[Fault]int
}

// Do applies the fault Decide picks.
func (c *FaultClient) Do(req *http.Request) (*http.Response, error) {
	op := req.Header.Get("X-Amz-Target")
	if i := strings.LastIndexByte(op, '.'); i >= 0 {
		op = op[i+1:]
	}
	c.mu.Lock()
	if c.calls == nil {
		c.calls, c.injected = make(map[string]int), make(map[Fault]int)
	}
	c.calls[op]++
	n := c.calls[op]
	f := Pass
	if c.Decide != nil {
		f = c.Decide(op, n)
	}
	c.injected[f]++
	c.mu.Unlock()

	switch f {
	case Throttle:
		return errorResponse(req, http.StatusBadRequest, "ProvisionedThroughputExceededException", "Rate exceeded for shard (injected)"), nil
	case ServerError:
		return errorResponse(req, http.StatusInternalServerError, "InternalFailure", "injected server error"), nil
	case ResetBefore:
		return nil, fmt.Errorf("injected: %w", syscall.ECONNRESET)
	case ResetAfter:
		resp, err := c.Base.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return nil, fmt.Errorf("injected after the request was served: %w", syscall.ECONNRESET)
	case SlowAnswer:
		resp, err := c.Base.Do(req)
		if err != nil {
			return nil, err
		}
		t := time.NewTimer(c.SlowDelay)
		defer t.Stop()
		select {
		case <-req.Context().Done():
			resp.Body.Close()
			return nil, req.Context().Err()
		case <-t.C:
		}
		return resp, nil
	case PartialFailure:
		if op == "PutRecords" {
			return c.partial(req)
		}
	case Slow:
		t := time.NewTimer(c.SlowDelay)
		defer t.Stop()
		select {
		case <-req.Context().Done():
			return nil, req.Context().Err()
		case <-t.C:
		}
	}
	return c.Base.Do(req)
}

// partial forwards a random subset of a PutRecords request's entries and
// merges the emulator's answer with injected per-entry failures. It keeps at
// least one entry failed, so every such request is a partial failure.
func (c *FaultClient) partial(req *http.Request) (*http.Response, error) {
	body, err := io.ReadAll(req.Body)
	req.Body.Close()
	if err != nil {
		return nil, err
	}
	var in map[string]json.RawMessage
	var entries []json.RawMessage
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, fmt.Errorf("partial failure: read PutRecords request: %w", err)
	}
	if err := json.Unmarshal(in["Records"], &entries); err != nil {
		return nil, fmt.Errorf("partial failure: read PutRecords entries: %w", err)
	}
	failed := make([]bool, len(entries))
	var kept []json.RawMessage
	c.mu.Lock()
	if c.rng == nil {
		c.rng = rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	}
	for i := range entries {
		failed[i] = c.rng.IntN(3) == 0
	}
	failed[c.rng.IntN(len(entries))] = true
	c.mu.Unlock()
	for i, e := range entries {
		if !failed[i] {
			kept = append(kept, e)
		}
	}
	type result struct {
		SequenceNumber string `json:",omitempty"`
		ShardId        string `json:",omitempty"`
		ErrorCode      string `json:",omitempty"`
		ErrorMessage   string `json:",omitempty"`
	}
	var served struct{ Records []result }
	if len(kept) > 0 {
		in["Records"], _ = json.Marshal(kept)
		b, _ := json.Marshal(in)
		fwd := req.Clone(req.Context())
		fwd.Body, fwd.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
		fwd.Header.Del("Content-Length")
		resp, err := c.Base.Do(fwd)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		rb, err := io.ReadAll(resp.Body)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body = io.NopCloser(bytes.NewReader(rb))
			return resp, nil // a request-level failure of the emulator's
		}
		if err := json.Unmarshal(rb, &served); err != nil || len(served.Records) != len(kept) {
			return nil, fmt.Errorf("partial failure: read PutRecords response (%d results for %d entries): %v", len(served.Records), len(kept), err)
		}
	}
	out := struct {
		FailedRecordCount int
		Records           []result
	}{}
	next := 0
	for i := range entries {
		if failed[i] {
			out.FailedRecordCount++
			out.Records = append(out.Records, result{ErrorCode: "ProvisionedThroughputExceededException", ErrorMessage: "Rate exceeded for shard (injected)"})
			continue
		}
		r := served.Records[next]
		next++
		if r.ErrorCode != "" {
			out.FailedRecordCount++
		}
		out.Records = append(out.Records, r)
	}
	b, _ := json.Marshal(out)
	h := http.Header{}
	h.Set("Content-Type", "application/x-amz-json-1.1")
	h.Set("X-Amzn-Requestid", "injected-partial")
	return &http.Response{Status: "200 OK", StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: io.NopCloser(bytes.NewReader(b)), ContentLength: int64(len(b)), Request: req}, nil
}

// Injected returns how many requests got fault f.
func (c *FaultClient) Injected(f Fault) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.injected[f]
}

func errorResponse(req *http.Request, status int, code, msg string) *http.Response {
	body := fmt.Sprintf(`{"__type":%q,"message":%q}`, code, msg)
	h := http.Header{}
	h.Set("Content-Type", "application/x-amz-json-1.1")
	h.Set("X-Amzn-ErrorType", code)
	h.Set("X-Amzn-Requestid", "injected")
	return &http.Response{
		Status: fmt.Sprintf("%d %s", status, http.StatusText(status)), StatusCode: status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: io.NopCloser(bytes.NewBufferString(body)), ContentLength: int64(len(body)),
		Request: req,
	}
}

// ErrInjected reports whether err came from a FaultClient reset.
func ErrInjected(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// KinesisFaults is a [KinesisClient] option that routes the client's
// requests through fc (and fc's through the client's own HTTP client).
func KinesisFaults(fc *FaultClient) func(*kinesis.Options) {
	return func(o *kinesis.Options) {
		fc.Base = o.HTTPClient
		o.HTTPClient = fc
	}
}

// DynamoDBFaults is the [DynamoDBClient] counterpart of [KinesisFaults].
func DynamoDBFaults(fc *FaultClient) func(*dynamodb.Options) {
	return func(o *dynamodb.Options) {
		fc.Base = o.HTTPClient
		o.HTTPClient = fc
	}
}
