//go:build race

package scalesim

// raceEnabled reports whether the race detector is on: the big sizes then
// take ten times the CPU and several GB of memory, and are skipped.
const raceEnabled = true
