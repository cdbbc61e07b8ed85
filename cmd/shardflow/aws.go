package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/shardflow/shardflow/internal/awsclient"
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

// callHealth follows the AWS calls of a command, so that a command stopped
// by a signal can tell whether it was stopped while failing: the source and
// the stores retry for minutes, and Ctrl-C during those retries must not
// look like success. Its zero value is ready; it is safe for concurrent use.
//
// For each operation (ListShards, GetRecords, UpdateItem, ...) it keeps the
// latest call's error when that error is one the callers retry (network,
// server, throttling: awserr says which) or refused credentials; a success
// clears it. Other errors (a refused conditional write, say) are answers,
// not outages. A call still waiting for its answer counts for nothing: a
// healthy call may be in flight at any moment, and responseHeaderTimeout
// turns one that never gets an answer into a failure.
type callHealth struct {
	mu      sync.Mutex
	frozen  bool
	failed  map[string]error // by operation
	verdict error
}

// track is an APIOptions entry: it records the outcome of every call.
func (h *callHealth) track(stack *middleware.Stack) error {
	return stack.Initialize.Add(middleware.InitializeMiddlewareFunc("shardflowCallHealth",
		func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
			op := awsmiddleware.GetOperationName(ctx)
			out, md, err := next.HandleInitialize(ctx, in)
			h.end(ctx, op, err)
			return out, md, err
		}), middleware.After)
}

func (h *callHealth) end(ctx context.Context, op string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.frozen || (err != nil && errors.Is(context.Cause(ctx), context.Canceled)) {
		return // stopping: calls cut short say nothing about the service
	}
	if err != nil {
		if c := awserr.Classify(err); !c.Retryable() && c != awserr.Credentials {
			err = nil
		}
	}
	if h.failed == nil {
		h.failed = map[string]error{}
	}
	h.failed[op] = err
}

// freeze takes the verdict now (when the command was told to stop) and
// ignores later calls, which shutdown cuts short.
func (h *callHealth) freeze() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.frozen {
		return
	}
	h.frozen = true
	for _, op := range slices.Sorted(maps.Keys(h.failed)) {
		if err := h.failed[op]; err != nil {
			h.verdict = fmt.Errorf("%s was failing: %w", op, err)
			return
		}
	}
}

// failing returns why the command's AWS calls were failing when freeze was
// called (or now, if it was not), or nil.
func (h *callHealth) failing() error {
	h.freeze()
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.verdict
}
