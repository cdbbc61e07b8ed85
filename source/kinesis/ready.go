package kinesissource

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Ready reports whether the source is reading what it should, for a
// readiness probe (the CLI's /readyz calls it). It returns nil when all of
// these hold, for every stream it reads, and otherwise an error naming the
// stream and the first that does not:
//
//   - Run is running and not stopping (so before Run starts, and once its
//     context is cancelled or it failed, the source is not ready);
//   - Run has listed the stream's shards at least once;
//   - with a [shardflow.Leaser] store, its last successful lease sync was
//     less than the store's LeaseDuration ago (three LeaseSyncIntervals
//     when the store reports no lease duration): an instance cut off from
//     its lease table longer than that may have lost its leases;
//   - a reader runs for every shard the source holds now (every shard it
//     may read, without a Leaser), except shards that ended since.
//
// Ready is safe for concurrent use, does not block on I/O, and calls no
// API: it reads the state Run keeps.
func (s *Source) Ready() error {
	rs := s.cur.Load()
	if rs == nil {
		return fmt.Errorf("kinesis source of %s is not ready: it is not running", s.describe())
	}
	for _, c := range rs.coords {
		if err := c.ready(); err != nil {
			return fmt.Errorf("kinesis source of stream %q is not ready: %w", c.st.name, err)
		}
	}
	return nil
}

// describe names the source's streams, for messages.
func (s *Source) describe() string {
	if len(s.streams) == 1 {
		return fmt.Sprintf("stream %q", s.streams[0].name)
	}
	return fmt.Sprintf("streams %q", s.Streams())
}

func (c *coordinator) ready() error {
	select {
	case <-c.done:
		return errors.New("it is stopping")
	default:
	}
	if !c.listed.Load() {
		return errors.New("it has not listed the stream's shards yet")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leaser != nil {
		if c.synced.IsZero() {
			return errors.New("no lease sync has succeeded yet")
		}
		limit := c.leaser.LeaseDuration()
		if limit <= 0 {
			limit = 3 * c.leaser.LeaseSyncInterval()
		}
		if age := time.Since(c.synced); age >= limit {
			return fmt.Errorf("the last successful lease sync was %v ago, not within the lease duration %v", age.Round(time.Millisecond), limit)
		}
	}
	var idle []string
	for _, id := range c.held {
		if _, ok := c.eligible[id]; !ok {
			continue // ended since
		}
		if r := c.readers[id]; r == nil || r.stopping() {
			idle = append(idle, id)
		}
	}
	if len(idle) > 0 {
		slices.Sort(idle)
		return fmt.Errorf("no reader runs for held shards %v", idle)
	}
	return nil
}
