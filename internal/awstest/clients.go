package awstest

import (
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
)

// Region is the region every awstest client uses. The emulators accept any region, but
// kinesis-local namespaces streams by region, so all tests must agree on one.
const Region = "us-east-1"

// KinesisClient returns a Kinesis client for the emulator at [KinesisEndpoint], skipping
// or failing the test as that function does. optFns run last and may change anything
// (for example [KinesisNoRetries]) except that the resulting BaseEndpoint must still be
// a loopback URL, or the test fails.
//
// The default retryer is the SDK's standard retryer (3 attempts) with the retry quota
// disabled and backoff capped at 1 s: the emulators never throttle, so retries only
// smooth over a busy CI machine.
func KinesisClient(t testing.TB, optFns ...func(*kinesis.Options)) *kinesis.Client {
	t.Helper()
	opts := kinesis.Options{
		Region:                Region,
		Credentials:           fakeCredentials(),
		BaseEndpoint:          aws.String(KinesisEndpoint(t)),
		Retryer:               defaultRetryer(),
		HTTPClient:            httpClient(),
		AccountIDEndpointMode: aws.AccountIDEndpointModeDisabled,
	}
	for _, fn := range optFns {
		fn(&opts)
	}
	mustBeLoopback(t, "Kinesis", opts.BaseEndpoint)
	return kinesis.New(opts)
}

// DynamoDBClient returns a DynamoDB client for the emulator at [DynamoDBEndpoint], with
// the same defaults and optFns rules as [KinesisClient].
func DynamoDBClient(t testing.TB, optFns ...func(*dynamodb.Options)) *dynamodb.Client {
	t.Helper()
	opts := dynamodb.Options{
		Region:                Region,
		Credentials:           fakeCredentials(),
		BaseEndpoint:          aws.String(DynamoDBEndpoint(t)),
		Retryer:               defaultRetryer(),
		HTTPClient:            httpClient(),
		AccountIDEndpointMode: aws.AccountIDEndpointModeDisabled,
	}
	for _, fn := range optFns {
		fn(&opts)
	}
	mustBeLoopback(t, "DynamoDB", opts.BaseEndpoint)
	return dynamodb.New(opts)
}

// KinesisNoRetries is a [KinesisClient] option that makes every failure surface on the
// first attempt, for tests of error handling.
func KinesisNoRetries(o *kinesis.Options) { o.Retryer = aws.NopRetryer{} }

// DynamoDBNoRetries is a [DynamoDBClient] option that makes every failure surface on the
// first attempt, for tests of error handling.
func DynamoDBNoRetries(o *dynamodb.Options) { o.Retryer = aws.NopRetryer{} }

func fakeCredentials() aws.CredentialsProvider {
	return credentials.NewStaticCredentialsProvider("fake", "fake", "")
}

func defaultRetryer() aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = 3
		o.MaxBackoff = time.Second
		o.RateLimiter = ratelimit.None
	})
}

// httpClient is the SDK's default client minus proxy support: an HTTP(S)_PROXY in the
// environment must not route test traffic off the machine.
func httpClient() *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.Proxy = nil
	})
}

func mustBeLoopback(t testing.TB, service string, endpoint *string) {
	t.Helper()
	if endpoint == nil {
		t.Fatalf("awstest: %s client options left BaseEndpoint nil; it must point at the local emulator", service)
	}
	if err := CheckLoopback(*endpoint); err != nil {
		t.Fatalf("awstest: %s client options: %v", service, err)
	}
}

// ChildOptions returns client options for a process that a test started
// (the re-exec pattern), which has no testing.TB: the emulators' endpoints
// from the environment variables, checked to be loopback addresses, fake
// static credentials, no SDK retries (shardflow retries on its own), and the
// proxy-free HTTP client. Wrap the HTTP clients with KinesisFaults or
// DynamoDBFaults to inject faults.
func ChildOptions() (kinesis.Options, dynamodb.Options, error) {
	kEndpoint, dEndpoint := os.Getenv(KinesisEndpointEnv), os.Getenv(DynamoDBEndpointEnv)
	for _, e := range []string{kEndpoint, dEndpoint} {
		if err := CheckLoopback(e); err != nil {
			return kinesis.Options{}, dynamodb.Options{}, err
		}
	}
	k := kinesis.Options{Region: Region, Credentials: fakeCredentials(), BaseEndpoint: aws.String(kEndpoint),
		Retryer: aws.NopRetryer{}, HTTPClient: httpClient(), AccountIDEndpointMode: aws.AccountIDEndpointModeDisabled}
	d := dynamodb.Options{Region: Region, Credentials: fakeCredentials(), BaseEndpoint: aws.String(dEndpoint),
		Retryer: aws.NopRetryer{}, HTTPClient: httpClient(), AccountIDEndpointMode: aws.AccountIDEndpointModeDisabled}
	return k, d, nil
}
