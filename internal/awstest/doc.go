// Package awstest connects integration tests to the local AWS emulators started by
// scripts/emulators.sh: Kinesis (npm kinesis-local) and DynamoDB (npm dynalite), both
// listening on 127.0.0.1 only.
//
// Quick start:
//
//	scripts/emulators.sh start                 # once per machine session; writes .emulators/env
//	go test ./internal/awstest/                # tests find .emulators/env on their own
//	scripts/emulators.sh stop
//
// and in a test:
//
//	func TestReadsEveryShard(t *testing.T) {
//		client := awstest.KinesisClient(t)
//		stream := awstest.CreateStream(t, client, 2) // ACTIVE; deleted by t.Cleanup
//		...
//	}
//
// # Finding the emulators
//
// [KinesisEndpoint] and [DynamoDBEndpoint] read SHARDFLOW_KINESIS_ENDPOINT and
// SHARDFLOW_DYNAMODB_ENDPOINT; when a variable is unset or empty they read the same key from
// the first .emulators/env file found walking up from the working directory to the module
// root (the directory holding go.mod). When no endpoint is configured the test is
// skipped with a loud SKIPPING message, unless the CI environment variable is non-empty, in
// which case it fails: in CI a missing emulator must never look like a pass. A configured
// endpoint that does not answer always fails the test.
//
// # Safety
//
// Every endpoint must be http or https on a loopback host (127.0.0.0/8, ::1 or localhost),
// otherwise the test fails before any request is made. Clients are built without
// config.LoadDefaultConfig, so no shared config or credentials files, environment
// credentials, SSO or EC2 instance metadata are ever consulted: they use region us-east-1,
// the static credentials "fake"/"fake" and an HTTP transport that ignores HTTP(S)_PROXY.
// Per-operation options that replace the endpoint are not checked; do not use them.
//
// # Emulator fidelity
//
// Neither emulator throttles or injects 5xx errors; test those paths with an HTTP client
// wrapper or an in-memory fake. kinesis-local accepts oversized PutRecords batches that AWS
// rejects, and its SubscribeToShard streams lack the initial-response event and never end
// a closed shard (give the client [KinesisLocalFanOut] to read it by enhanced fan-out);
// dynalite does not implement TransactWriteItems or ReturnValuesOnConditionCheckFailure.
// kinesis-local handles about
// 1,000 PutRecords entries per second, so use a fresh stream per test and keep volumes
// to a few thousand records.
//
// All functions are safe for concurrent use by parallel tests.
package awstest
