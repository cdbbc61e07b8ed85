package main

import (
	"math"
	"testing"
)

func TestNonLoopbackEndpointsAreRefused(t *testing.T) {
	for _, endpoint := range []string{
		"http://10.0.0.1:4567",
		"https://kinesis.us-east-1.amazonaws.com",
		"http://user:pw@127.0.0.1:4567",
		"ftp://127.0.0.1:4567",
	} {
		if _, err := newWireBench(endpoint); err == nil {
			t.Errorf("newWireBench(%q) accepted a non-loopback endpoint", endpoint)
		}
	}
}

func TestMedianIsTheMiddleValue(t *testing.T) {
	tests := []struct {
		name string
		vals []float64
		want float64
	}{
		{"odd count", []float64{5, 1, 3}, 3},
		{"even count averages the middle two", []float64{4, 1, 3, 2}, 2.5},
		{"one value", []float64{7}, 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := median(tc.vals); got != tc.want {
				t.Errorf("median(%v) = %v; want %v", tc.vals, got, tc.want)
			}
		})
	}
	if got := median(nil); !math.IsNaN(got) {
		t.Errorf("median(nil) = %v; want NaN", got)
	}
}

func TestFiguresThatPrintAsZeroHaveNoRatio(t *testing.T) {
	tab := newTable("t")
	zero := []sample{{records: 1000, wall: 1000, mallocs: 1}}
	tab.add("case", zero, zero, allocsPerRecord)
	if got := tab.rows[0][4]; got != "-" {
		t.Errorf("ratio of 0.00 to 0.00 allocs/record = %q; want -", got)
	}
}
