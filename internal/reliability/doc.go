// Package reliability holds the reliability suite: relay processes under
// injected faults, kill -9 and resharding, each round checked against its
// input. See reliability_test.go; `make test` runs it with the emulators.
package reliability
