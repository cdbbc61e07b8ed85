package awserr_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/awserr"
)

func apiErr(code string, fault smithy.ErrorFault) error {
	return &smithy.OperationError{ServiceID: "Kinesis", OperationName: "GetRecords",
		Err: &smithy.GenericAPIError{Code: code, Message: "m", Fault: fault}}
}

func httpErr(status int, err error) error {
	return &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}}, Err: err}
}

func TestClassify(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want awserr.Class
	}{
		{"typed throttling", &types.ProvisionedThroughputExceededException{}, awserr.Throttled},
		{"KMS throttling", apiErr("KMSThrottlingException", smithy.FaultClient), awserr.Throttled},
		{"a 429 with an unknown code", httpErr(429, apiErr("Whatever", smithy.FaultClient)), awserr.Throttled},
		{"internal failure", apiErr("InternalFailure", smithy.FaultServer), awserr.Transient},
		{"a request the SDK refused to send", &smithy.OperationError{ServiceID: "Kinesis", OperationName: "PutRecords",
			Err: func() error {
				var ip smithy.InvalidParamsError
				ip.Add(smithy.NewErrParamRequired("Records[0].Data"))
				return ip
			}()}, awserr.Permanent},
		{"an unknown server fault", apiErr("Odd", smithy.FaultServer), awserr.Transient},
		{"a stream being updated", apiErr("ResourceInUseException", smithy.FaultClient), awserr.Transient},
		{"no response at all", httpErr(0, errors.New("connection reset")), awserr.Transient},
		{"a 503 without a code", httpErr(503, errors.New("unavailable")), awserr.Transient},
		{"a network error", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, awserr.Transient},
		{"a bad request", apiErr("InvalidArgumentException", smithy.FaultClient), awserr.Permanent},
		{"a missing stream", &types.ResourceNotFoundException{}, awserr.Permanent},
		{"access denied", apiErr("AccessDeniedException", smithy.FaultClient), awserr.Permanent},
		{"a disabled KMS key", apiErr("KMSDisabledException", smithy.FaultClient), awserr.Permanent},
		{"an unknown client code", apiErr("Odd", smithy.FaultClient), awserr.Permanent},
		{"an expired token", apiErr("ExpiredTokenException", smithy.FaultClient), awserr.Credentials},
		{"an unknown key id", apiErr("UnrecognizedClientException", smithy.FaultClient), awserr.Credentials},
		{"a bad signature", apiErr("InvalidSignatureException", smithy.FaultClient), awserr.Credentials},
		{"a 403 without a code", httpErr(403, errors.New("forbidden")), awserr.Credentials},
		{"already marked", fmt.Errorf("x: %w", shardflow.ErrCredentials), awserr.Credentials},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := awserr.Classify(tc.err); got != tc.want {
				t.Errorf("Classify(%v) = %v; want %v", tc.err, got, tc.want)
			}
		})
	}
}

// A client with no credentials at all fails in the SDK's identity step,
// before any request is sent: that is a credentials problem, not a network
// error to retry.
func TestClassifyNoCredentials(t *testing.T) {
	kc := kinesis.New(kinesis.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String("http://127.0.0.1:1"), // never reached
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{}, errors.New("no EC2 IMDS role found")
		}),
		Retryer: aws.NopRetryer{},
	})
	_, err := kc.ListShards(t.Context(), &kinesis.ListShardsInput{StreamName: aws.String("s")})
	if err == nil {
		t.Fatal("ListShards without credentials succeeded")
	}
	if got := awserr.Classify(err); got != awserr.Credentials {
		t.Errorf("Classify(%v) = %v; want credentials", err, got)
	}
	wrapped := awserr.CredentialsError("list shards", err)

	if !errors.Is(wrapped, shardflow.ErrCredentials) {
		t.Errorf("CredentialsError(%v) does not match ErrCredentials", wrapped)
	}
	if other := errors.New("boom"); awserr.CredentialsError("x", other) != other {
		t.Error("CredentialsError changed an error of another class")
	}
}

// Rotating credentials are refreshed inline by the SDK: a credentials
// service that throttles or fails on its side may answer next time, so the
// call is worth retrying; a refresh that finds no credentials is not.
func TestClassifyACredentialsRefreshThatFailedOnTheServiceSide(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cause error
		want  awserr.Class
	}{
		{"STS throttled", apiErr("Throttling", smithy.FaultClient), awserr.Throttled},
		{"STS failed", httpErr(503, apiErr("ServiceUnavailable", smithy.FaultServer)), awserr.Transient},
		{"no provider found", errors.New("no EC2 IMDS role found"), awserr.Credentials},
		{"refused", apiErr("ExpiredTokenException", smithy.FaultClient), awserr.Credentials},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kc := kinesis.New(kinesis.Options{
				Region:       "us-east-1",
				BaseEndpoint: aws.String("http://127.0.0.1:1"), // never reached
				Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
					return aws.Credentials{}, fmt.Errorf("refresh: %w", tc.cause)
				}),
				Retryer: aws.NopRetryer{},
			})
			_, err := kc.ListShards(t.Context(), &kinesis.ListShardsInput{StreamName: aws.String("s")})
			if got := awserr.Classify(err); got != tc.want {
				t.Errorf("Classify(%v) = %v; want %v", err, got, tc.want)
			}
		})
	}
}
