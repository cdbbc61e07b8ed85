# The machine's Go may be older than go.mod's; the go command fetches this
# toolchain from the module proxy on first use.
export GOTOOLCHAIN := go1.27.3

.PHONY: demo quickstart test bench emulators-start emulators-stop

## demo: the main job: a Kinesis relay with DynamoDB checkpoints on the local emulators
demo:
	bash scripts/demo.sh

## quickstart: a pipeline over the in-memory test kit (no emulator)
quickstart:
	go run ./examples/quickstart

## test: start the emulators, check formatting, vet, staticcheck, go test -race ./..., stop them
test:
	bash scripts/test.sh

## bench: the pipeline core next to a hand-written loop
bench:
	go test -run '^$$' -bench . -benchmem -count 6 .

emulators-start:
	bash scripts/emulators.sh start

emulators-stop:
	bash scripts/emulators.sh stop

## bench-all: every benchmark next to its hand-written floor in one run, with the machine
## (starts the emulators if they are not running, and leaves them running; see BENCHMARKS.md)
.PHONY: bench-all
bench-all:
	bash scripts/emulators.sh start >/dev/null
	. ./.emulators/env && go run ./cmd/shardflow-bench -kinesis-endpoint "$$SHARDFLOW_KINESIS_ENDPOINT"
