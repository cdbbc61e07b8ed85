//go:build !linux

package main

import "time"

// cpuTime returns -1: process CPU time is only read on Linux, and the CPU
// columns then show n/a.
func cpuTime() time.Duration { return -1 }
