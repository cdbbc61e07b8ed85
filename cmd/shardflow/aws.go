package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/smithy-go/middleware"
	"github.com/shardflow/shardflow/internal/awsclient"
	"github.com/shardflow/shardflow/internal/awserr"
)

// responseHeaderTimeout bounds the wait for an AWS answer's headers, so an
// endpoint that accepts connections and never answers shows up as a failed
// call (retried, and logged at WARN) instead of a silent hang. Kinesis and
// DynamoDB answer in well under a second; large GetRecords bodies are not
// bounded by it, only their headers.
const responseHeaderTimeout = 30 * time.Second

// awsFlags are the AWS CLI-like flags of the commands that call AWS. Each
// command registers only the endpoints of the services it calls.
type awsFlags struct {
	endpoint, dynamoEndpoint, region, profile string

	health callHealth
}

// register adds the flags; kinesis and dynamo say which services' endpoint
// flags the command has.
func (a *awsFlags) register(fs *flag.FlagSet, kinesis, dynamo bool) {
	if kinesis {
		fs.StringVar(&a.endpoint, "endpoint-url", "", "Kinesis endpoint URL (default: AWS)")
	}
	if dynamo {
		fs.StringVar(&a.dynamoEndpoint, "dynamodb-endpoint-url", "", "DynamoDB endpoint URL (default: AWS)")
	}
	fs.StringVar(&a.region, "region", "", "AWS region (default: from the AWS config)")
	fs.StringVar(&a.profile, "profile", "", "AWS shared config profile")
}

func (a *awsFlags) config(ctx context.Context) (aws.Config, error) {
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
			tr.ResponseHeaderTimeout = responseHeaderTimeout
		})),
	}
	if a.region != "" {
		opts = append(opts, config.WithRegion(a.region))
	}
	if a.profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(a.profile))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return cfg, fmt.Errorf("load AWS config: %w", err)
	}
	if cfg.Region == "" {
		return cfg, usagef("no AWS region: set --region, AWS_REGION or a profile's region")
	}
	cfg.APIOptions = append(cfg.APIOptions, a.health.track)
	return cfg, nil
}

// kinesis returns a Kinesis client that leaves retries to shardflow (see
// internal/awsclient).
func (a *awsFlags) kinesis(ctx context.Context) (*kinesis.Client, error) {
	cfg, err := a.config(ctx)
	if err != nil {
		return nil, err
	}
	return awsclient.Kinesis(cfg, func(o *kinesis.Options) {
		if a.endpoint != "" {
			o.BaseEndpoint = aws.String(a.endpoint)
		}
	}), nil
}

func (a *awsFlags) dynamodb(ctx context.Context) (*dynamodb.Client, error) {
	cfg, err := a.config(ctx)
	if err != nil {
		return nil, err
	}
	return awsclient.DynamoDB(cfg, func(o *dynamodb.Options) {
		if a.dynamoEndpoint != "" {
			o.BaseEndpoint = aws.String(a.dynamoEndpoint)
		}
	}), nil
}

// slowCall is how long an AWS call may wait for its answer before
// callHealth logs a WARN that it is still waiting, and before a stop counts
// it as failing. Kinesis and DynamoDB answer in well under a second;
// without it, an endpoint that accepts connections and never answers would
// be silent until responseHeaderTimeout.
const slowCall = 5 * time.Second

// callHealth follows the AWS calls of a command, so that a command stopped
// by a signal can tell whether it was stopped while failing: the source and
// the stores retry for minutes, and Ctrl-C during those retries must not
// look like success. Its zero value is ready; it is safe for concurrent use.
//
// For each operation (ListShards, GetRecords, UpdateItem, ...) it keeps the
// latest call's error when that error is one the callers retry (network,
// server, throttling: awserr says which) or refused credentials; a success
// clears it. Other errors (a refused conditional write, say) are answers,
// not outages. A call still waiting for its answer counts for nothing until
// it waited slowCall: then it is logged at WARN, and a stop counts it as
// failing. It also notes which operations ever succeeded, so a command can
// tell that it never read its stream.
//
// The verdict is taken once, when the command's context ends (watch): calls
// cut short by the stop say nothing more about the service, but a call
// still waiting then does. So that a call cut short is still seen waiting,
// the first call to end after the stop takes the verdict before it leaves.
type callHealth struct {
	log *slog.Logger // WARN about slow calls; nil: none

	mu        sync.Mutex
	stop      context.Context // the command's; nil until watch
	frozen    bool
	failed    map[string]error // by operation
	succeeded map[string]bool  // operations that succeeded at least once
	pending   map[*awsCall]struct{}
	verdict   error  // the first failing operation's error
	waiting   string // the longest waiting call at the stop ("" if none)
	hung      bool   // it had waited slowCall or more
}

// awsCall is a call waiting for its answer.
type awsCall struct {
	service, op string
	start       time.Time
	warn        *time.Timer
}

// watch takes the verdict when ctx ends (see callHealth). The returned
// function stops watching.
func (h *callHealth) watch(ctx context.Context) (stop func() bool) {
	h.mu.Lock()
	h.stop = ctx
	h.mu.Unlock()
	return context.AfterFunc(ctx, h.freeze)
}

// track is an APIOptions entry: it records the outcome of every call.
func (h *callHealth) track(stack *middleware.Stack) error {
	return stack.Initialize.Add(middleware.InitializeMiddlewareFunc("shardflowCallHealth",
		func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
			c := h.begin(ctx)
			out, md, err := next.HandleInitialize(ctx, in)
			h.end(ctx, c, err)
			return out, md, err
		}), middleware.After)
}

func (h *callHealth) begin(ctx context.Context) *awsCall {
	c := &awsCall{service: awsmiddleware.GetServiceID(ctx), op: awsmiddleware.GetOperationName(ctx), start: time.Now()}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pending == nil {
		h.pending = map[*awsCall]struct{}{}
	}
	h.pending[c] = struct{}{}
	if log := h.log; log != nil {
		c.warn = time.AfterFunc(slowCall, func() {
			if ctx.Err() == nil {
				log.Warn("AWS call has had no answer yet; still waiting", "service", c.service, "operation", c.op,
					"waited", slowCall, "gives_up_after", responseHeaderTimeout)
			}
		})
	}
	return c
}

func (h *callHealth) end(ctx context.Context, c *awsCall, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.warn != nil {
		c.warn.Stop()
	}
	if h.stop != nil && h.stop.Err() != nil {
		h.freezeLocked() // before c leaves pending: it was waiting at the stop
	}
	delete(h.pending, c)
	if h.frozen || (err != nil && errors.Is(context.Cause(ctx), context.Canceled)) {
		return // stopping: calls cut short say nothing about the service
	}
	if err == nil {
		if h.succeeded == nil {
			h.succeeded = map[string]bool{}
		}
		h.succeeded[c.op] = true
	} else if cl := awserr.Classify(err); !cl.Retryable() && cl != awserr.Credentials {
		err = nil
	}
	if h.failed == nil {
		h.failed = map[string]error{}
	}
	h.failed[c.op] = err
}

// freeze takes the verdict now (when the command was told to stop) and
// ignores later calls, which shutdown cuts short.
func (h *callHealth) freeze() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.freezeLocked()
}

func (h *callHealth) freezeLocked() {
	if h.frozen {
		return
	}
	h.frozen = true
	for _, op := range slices.Sorted(maps.Keys(h.failed)) {
		if err := h.failed[op]; err != nil {
			h.verdict = fmt.Errorf("%s was failing: %w", op, err)
			break
		}
	}
	var oldest *awsCall
	for c := range h.pending {
		if oldest == nil || c.start.Before(oldest.start) {
			oldest = c
		}
	}
	if oldest != nil {
		waited := time.Since(oldest.start)
		h.waiting = fmt.Sprintf("%s had no answer for %v", oldest.op, waited.Round(100*time.Millisecond))
		h.hung = waited >= slowCall
	}
}

// stopError is the error of a command stopped by a signal, nil when it was
// working: why its AWS calls were failing (or one had no answer for
// slowCall), or, with mustRead set, why no GetRecords call of stream (nor
// SubscribeToShard, with enhanced fan-out) had succeeded. It takes the verdict now if the stop did not.
func (h *callHealth) stopError(mustRead bool, stream string) error {
	h.freeze()
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.verdict != nil:
		return fmt.Errorf("stopped while retrying: %w", h.verdict)
	case mustRead && !h.succeeded["GetRecords"] && !h.succeeded["SubscribeToShard"]:
		why := "no GetRecords or SubscribeToShard call had succeeded"
		if h.waiting != "" {
			why = h.waiting
		}
		return fmt.Errorf("stopped before reading stream %q: %s", stream, why)
	case h.hung:
		return fmt.Errorf("stopped while waiting for AWS: %s", h.waiting)
	}
	return nil
}
