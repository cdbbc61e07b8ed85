#!/usr/bin/env bash
# Runs every check and test of the repository, the way CI does:
# starts the local AWS emulators, checks formatting, runs go vet, staticcheck
# and go test -race ./..., and stops the emulators whatever happens.
set -euo pipefail

export GOTOOLCHAIN=go1.27.3
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
STATICCHECK_VERSION=v0.8.2

step() { printf '\n==> %s\n' "$*"; }

step "go toolchain"
go version

step "starting the local AWS emulators"
if bash scripts/emulators.sh status >/dev/null 2>&1; then
	echo "already running: using them, and leaving them running"
else
	trap 'bash scripts/emulators.sh stop || true' EXIT
	bash scripts/emulators.sh start
fi
# Tests find the endpoints in .emulators/env; exporting them as well makes a
# missing emulator a test failure, never a skip.
set -a
# shellcheck disable=SC1091
. .emulators/env
set +a

step "gofmt (the go1.27.3 toolchain's: older ones cannot parse generic methods)"
unformatted="$("$(go env GOROOT)/bin/gofmt" -l .)"
if [[ -n "$unformatted" ]]; then
	printf 'not gofmt-ed:\n%s\n' "$unformatted" >&2
	exit 1
fi

step "go vet"
go vet ./...

step "staticcheck $STATICCHECK_VERSION"
GOBIN="$ROOT/bin" go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
"$ROOT/bin/staticcheck" ./...

step "go test -race ./..."
go test -race -count=1 ./...
