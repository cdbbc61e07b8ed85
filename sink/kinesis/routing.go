package kinesissink

import (
	"context"
	"fmt"
	"time"

	"github.com/shardflow/shardflow/internal/awserr"
	"github.com/shardflow/shardflow/internal/retry"
)

// The engine's shard map, for the schedulers that route records by shard
// (ordered and aggregating modes): loaded before the first record is
// accepted, reloaded when an entry lands on another shard than predicted.

// loadShardMapOnce loads the shard map unless it is loaded.
func (e *engine) loadShardMapOnce(ctx context.Context) error {
	e.mu.Lock()
	m := e.smap
	e.mu.Unlock()
	if m != nil {
		return nil
	}
	select {
	case e.mapSem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("wait for the shard map: %w", context.Cause(ctx))
	}
	defer func() { <-e.mapSem }()
	e.mu.Lock()
	m = e.smap
	e.mu.Unlock()
	if m != nil {
		return nil
	}
	m, err := e.loadShardMap(ctx)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.installLocked(m, time.Now())
	e.mu.Unlock()
	e.mapReady.Store(true)
	e.logger().Info("shard map loaded", "open_shards", len(m.open))
	return nil
}

// refreshShardMap reloads the shard map unless it was loaded after since,
// and returns the current one.
func (e *engine) refreshShardMap(since time.Time) (*shardMap, error) {
	select {
	case e.mapSem <- struct{}{}:
	case <-e.life.Done():
		return e.currentMap(), context.Cause(e.life)
	}
	defer func() { <-e.mapSem }()
	e.mu.Lock()
	fresh := e.mapLoaded.After(since)
	m := e.smap
	e.mu.Unlock()
	if fresh {
		return m, nil
	}
	m, err := e.loadShardMap(e.life)
	if err != nil {
		return e.currentMap(), err
	}
	e.mu.Lock()
	e.installLocked(m, time.Now())
	e.mu.Unlock()
	e.logger().Info("shard map refreshed", "open_shards", len(m.open))
	return m, nil
}

// loadShardMap lists the stream's shards, retrying throttling, server and
// network errors with Options.Retry. Its errors, but for ctx ending, are
// marked permanent: refused credentials (wrapping shardflow.ErrCredentials),
// a missing stream, missing permissions, or a spent budget.
func (e *engine) loadShardMap(ctx context.Context) (*shardMap, error) {
	var m *shardMap
	load := func() error {
		var err error
		m, err = loadShardMap(ctx, e.client, e.stream)
		return awserr.Mark("load the shard map", err)
	}
	err := retry.Do(ctx, e.o.retry, load(), load, func(attempt int, err error, wait time.Duration) {
		e.logger().Warn("list shards failed; retrying", "attempt", attempt, "wait", wait, "err", err)
	})
	switch {
	case err == nil:
		return m, nil
	case ctx.Err() != nil || retry.IsPermanent(err):
		return nil, err
	}
	return nil, retry.Permanent(err) // the retry budget is spent
}

func (e *engine) currentMap() *shardMap {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.smap
}

// installLocked switches to a new shard map and lets the scheduler move
// queued records to the queues of their new shards.
func (e *engine) installLocked(m *shardMap, at time.Time) {
	old := e.smap
	e.smap, e.mapLoaded = m, at
	if old == nil {
		return
	}
	e.lim.remap(m)
	e.sched.remap(m)
	e.kickLocked()
}
