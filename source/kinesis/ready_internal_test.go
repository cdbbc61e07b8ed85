package kinesissource

import (
	"strings"
	"testing"
)

func TestReadyNamesTheHeldShardsNoReaderReads(t *testing.T) {
	c := &coordinator{
		done:     make(chan struct{}),
		readers:  map[string]*reader{},
		eligible: map[string]startSpec{"a": {}, "b": {}, "c": {}},
		held:     []string{"d", "c", "b", "a"}, // d ended since the last decision
	}
	c.listed.Store(true)
	c.readers["a"] = &reader{stop: make(chan struct{})}
	stopping := &reader{stop: make(chan struct{})}
	stopping.requestStop()
	c.readers["c"] = stopping
	err := c.ready()
	if err == nil || !strings.Contains(err.Error(), "no reader runs for held shards [b c]") {
		t.Errorf("ready = %v; want it to name shards b (no reader) and c (its reader stops), and only them", err)
	}
	c.readers["b"] = &reader{stop: make(chan struct{})}
	c.readers["c"] = &reader{stop: make(chan struct{})}
	if err := c.ready(); err != nil {
		t.Errorf("ready with a reader for every held shard = %v; want nil", err)
	}
}
