// Package telemetry holds what every shardflow package shares to record
// metrics through the OpenTelemetry metric API: the meter lookup with its
// default, the attribute keys and sets, and the error code of an AWS error.
// Each package names its own instruments (shardflow.<package>.<what>); the
// README's Operations section lists them all.
//
// Instruments never carry record data, partition keys or credentials: only
// stream names, shard ids, stage names and AWS error codes.
package telemetry

import (
	"errors"

	"github.com/aws/smithy-go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Scope is the instrumentation scope of every shardflow meter.
const Scope = "github.com/shardflow/shardflow"

// Meter returns shardflow's meter from mp, or from the global provider
// (otel.GetMeterProvider, a no-op until the application installs one) when
// mp is nil.
func Meter(mp metric.MeterProvider) metric.Meter {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return mp.Meter(Scope)
}

// Attribute keys. Values are names and codes only, never payloads or keys.
const (
	KeyStream    = attribute.Key("stream")
	KeyShard     = attribute.Key("shard")
	KeyStage     = attribute.Key("stage")
	KeyErrorCode = attribute.Key("error_code")
)

// Shard is the attribute set of one shard of a stream.
func Shard(stream, shard string) attribute.Set {
	return attribute.NewSet(KeyStream.String(stream), KeyShard.String(shard))
}

// Stream is the attribute set of a stream.
func Stream(stream string) attribute.Set {
	return attribute.NewSet(KeyStream.String(stream))
}

// ErrorCode returns the error_code attribute of an error: its AWS error
// code when it has one, else "other" (never the message, which may quote
// data).
func ErrorCode(code string) attribute.KeyValue {
	if code == "" {
		code = "other"
	}
	return KeyErrorCode.String(code)
}

// CodeOf returns the AWS error code of err ("ProvisionedThroughputExceededException",
// "InternalFailure", ...), or "" when err carries none.
func CodeOf(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}
