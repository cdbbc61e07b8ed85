//go:build !race

package scalesim

// raceEnabled reports whether the race detector is on.
const raceEnabled = false
