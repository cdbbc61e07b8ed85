#!/usr/bin/env bash
# The main job on the local emulators: starts them (unless they run already),
# creates two streams and a table, produces sample records, relays them
# through a pipeline with DynamoDB checkpoints and leases, prints what
# happened, and stops the emulators it started.
set -euo pipefail

export GOTOOLCHAIN=go1.27.3
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

if ! bash scripts/emulators.sh status >/dev/null 2>&1; then
	trap 'bash scripts/emulators.sh stop || true' EXIT
	bash scripts/emulators.sh start >/dev/null
fi
set -a
# shellcheck disable=SC1091
. .emulators/env
set +a

suffix="$(date +%s)-$$"
# .emulators/env exported AWS_ENDPOINT_URL_KINESIS, AWS_ENDPOINT_URL_DYNAMODB,
# a region and fake credentials: the relay loads its AWS config as any program does.
go run ./examples/relay -demo \
	-in "demo-in-$suffix" -out "demo-out-$suffix" -table "demo-state-$suffix" "$@"
