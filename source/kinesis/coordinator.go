package kinesissource

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/sync/errgroup"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/retry"
)

// shardInfo is what discovery knows of a shard.
type shardInfo struct {
	id        string
	parents   []string
	closed    bool
	startSeq  string
	hashRange hashRange
}

// coordinator decides which shards of one stream to read and starts their
// readers. A Run has one per stream; they share nothing but the source,
// its store and its metrics.
type coordinator struct {
	src    *Source
	st     *streamConf
	shards *shardflow.Shards[shardflow.Record]
	leaser shardflow.Leaser       // nil: read every eligible shard
	loads  shardflow.LoadRecorder // nil: the store wants no load reports
	reads  runReads               // the read mode's state for this Run; set before any reader starts

	met       *sourceMetrics
	streamObs []metric.ObserveOption // {stream}, of the shards.held gauge
	done      <-chan struct{}        // closed once Run stops
	listed    atomic.Bool            // a ListShards round succeeded

	mu        sync.Mutex
	readers   map[string]*reader   // running
	finished  map[string]bool      // SHARD_END known
	consumed  map[string]bool      // read by us, or checkpointed: its children start at TRIM_HORIZON
	eligible  map[string]startSpec // may be read now: unfinished, parents finished
	held      []string             // the shards this instance should read, as last decided
	synced    time.Time            // when the last lease sync succeeded; zero: none did
	wake      chan struct{}
	leaseWake chan struct{}
}

// run reads the coordinator's stream until ctx is done: once its read mode
// is ready (enhanced fan-out needs its consumer ACTIVE before any shard is
// read), it discovers the stream's shards, and syncs their leases with a
// Leaser store.
func (c *coordinator) run(ctx context.Context, g *errgroup.Group) error {
	reads, err := c.st.mode.begin(ctx, c.src, c.st)
	if err != nil {
		return err
	}
	c.reads = reads
	if c.leaser != nil {
		g.Go(func() error { return c.leaseLoop(ctx, g) })
	}
	return c.discoverLoop(ctx, g)
}

func (c *coordinator) discoverLoop(ctx context.Context, g *errgroup.Group) error {
	t := time.NewTicker(c.src.opts.DiscoveryInterval)
	defer t.Stop()
	for {
		if err := c.discover(ctx, g); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case <-c.wake:
		}
	}
}

// rediscover asks for a discovery round now (after a shard ended).
func (c *coordinator) rediscover() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// discover lists the shards and finds those that may be read now: not
// finished, every parent finished. Without a Leaser it starts their readers;
// with one, the lease loop starts the readers of the shards it holds.
func (c *coordinator) discover(ctx context.Context, g *errgroup.Group) error {
	list, err := c.src.listShards(ctx, c.st)
	if err != nil {
		return err
	}
	c.listed.Store(true)
	known := make(map[string]bool, len(list))
	for _, sh := range list {
		known[sh.id] = true
	}
	store := c.src.opts.Store
	for _, sh := range list {
		c.mu.Lock()
		skip := c.finished[sh.id] || c.readers[sh.id] != nil
		c.mu.Unlock()
		if skip {
			continue
		}
		// Only a closed shard can be checkpointed at SHARD_END: an open
		// one needs no read here (its reader loads the checkpoint when it
		// starts), which spares a store read per shard per round.
		var hasCP bool
		if sh.closed {
			cp, ok, err := c.load(ctx, store, sh.id)
			if err != nil {
				return err
			}
			if ok && cp.ShardEnd {
				c.markFinished(sh.id, true)
				continue
			}
			hasCP = ok
		}
		ready := true
		for _, p := range sh.parents {
			if !known[p] {
				continue // expired beyond retention: nothing left to read
			}
			done, err := c.parentFinished(ctx, store, p)
			if err != nil {
				return err
			}
			ready = ready && done
		}
		if !ready {
			continue
		}
		start := startSpec{initial: c.st.initial, hashRange: sh.hashRange}
		if c.anyConsumed(sh.parents) {
			start.initial = TrimHorizon()
		}
		if !hasCP && sh.closed && start.initial.typ == types.ShardIteratorTypeLatest {
			// Nothing will ever be written to a closed shard: LATEST reads
			// nothing of it. Its children start where Latest says too.
			c.markFinished(sh.id, false)
			continue
		}
		c.mu.Lock()
		c.eligible[sh.id] = start
		c.mu.Unlock()
	}
	if c.leaser != nil {
		select {
		case c.leaseWake <- struct{}{}:
		default:
		}
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.held = c.held[:0]
	for id, start := range c.eligible {
		c.held = append(c.held, id)
		if c.readers[id] == nil {
			c.startLocked(ctx, g, id, start)
		}
	}
	return nil
}

// startLocked starts the reader of a shard. Called with c.mu held.
func (c *coordinator) startLocked(ctx context.Context, g *errgroup.Group, id string, start startSpec) {
	r := &reader{src: c.src, c: c, st: c.st, shardID: id, start: start, stop: make(chan struct{}),
		log: c.st.log.With("shard_id", id)}
	r.met.init(c.met, c.reads.counters(c.met), c.st.name, id)
	c.readers[id] = r
	c.consumed[id] = true
	g.Go(func() error { return r.run(ctx) })
}

// leaseLoop syncs this instance's leases every renew interval and whenever
// discovery found shards, starts readers of shards it gained, and asks the
// readers of shards it no longer holds to hand them over.
func (c *coordinator) leaseLoop(ctx context.Context, g *errgroup.Group) error {
	t := time.NewTicker(c.leaser.LeaseSyncInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case <-c.leaseWake:
		}
		c.mu.Lock()
		ids := make([]string, 0, len(c.eligible))
		for id := range c.eligible {
			// A shard whose reader is still stopping is not offered: the
			// store must not give it back to this instance while the old
			// lane may still save its (possibly stale) position. It is
			// offered again once the reader is gone; a new reader then
			// starts from the store's checkpoint.
			if r := c.readers[id]; r == nil || !r.stopping() {
				ids = append(ids, id)
			}
		}
		c.mu.Unlock()
		slices.Sort(ids)
		held, err := c.leaser.SyncLeases(ctx, c.st.name, ids)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if retry.IsPermanent(err) {
				// A missing table, a wrong key schema, refused
				// credentials: no later sync can succeed.
				return fmt.Errorf("sync leases of stream %q: %w", c.st.name, err)
			}
			// A brief outage must not cost the leases: keep reading, and
			// let the fenced checkpoints catch a lease really lost.
			c.st.log.Warn("lease sync failed; retrying at the next interval", "err", err)
			continue
		}
		holds := make(map[string]bool, len(held))
		for _, id := range held {
			holds[id] = true
		}
		c.mu.Lock()
		c.synced, c.held = time.Now(), held
		for _, id := range held {
			if start, ok := c.eligible[id]; ok && c.readers[id] == nil {
				c.startLocked(ctx, g, id, start)
			}
		}
		for id, r := range c.readers {
			if !holds[id] {
				r.requestStop()
			}
		}
		c.mu.Unlock()
	}
}

// stopping reports whether the reader was asked to stop.
func (r *reader) stopping() bool {
	select {
	case <-r.stop:
		return true
	default:
		return false
	}
}

func (c *coordinator) load(ctx context.Context, store shardflow.CheckpointStore, shardID string) (shardflow.Checkpoint, bool, error) {
	if store == nil {
		return shardflow.Checkpoint{}, false, nil
	}
	cp, ok, err := store.Load(ctx, c.st.name, shardID)
	if err != nil {
		return cp, ok, fmt.Errorf("load checkpoint of shard %s: %w", shardID, err)
	}
	return cp, ok, nil
}

func (c *coordinator) parentFinished(ctx context.Context, store shardflow.CheckpointStore, id string) (bool, error) {
	c.mu.Lock()
	done := c.finished[id]
	c.mu.Unlock()
	if done {
		return true, nil
	}
	cp, ok, err := c.load(ctx, store, id)
	if err != nil {
		return false, err
	}
	if ok && cp.ShardEnd {
		c.markFinished(id, true)
		return true, nil
	}
	return false, nil
}

func (c *coordinator) markFinished(id string, consumed bool) {
	c.mu.Lock()
	c.finished[id] = true
	if consumed {
		c.consumed[id] = true
	}
	delete(c.readers, id)
	delete(c.eligible, id)
	c.mu.Unlock()
}

// stopped notes that a reader stopped without finishing its shard (it was
// handed over or lost); the shard stays eligible, so a later round may start
// it again.
func (c *coordinator) stopped(r *reader) {
	c.mu.Lock()
	if c.readers[r.shardID] == r {
		delete(c.readers, r.shardID)
	}
	c.mu.Unlock()
}

func (c *coordinator) anyConsumed(ids []string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		if c.consumed[id] {
			return true
		}
	}
	return false
}

// listShards returns every shard of stream st, following NextToken,
// retrying throttling and transient errors.
func (s *Source) listShards(ctx context.Context, st *streamConf) ([]shardInfo, error) {
	var out []shardInfo
	in := &kinesis.ListShardsInput{StreamName: st.nameRef(), StreamARN: st.arnRef(), MaxResults: aws.Int32(s.opts.ListShardsPageSize)}
	for {
		var page *kinesis.ListShardsOutput
		err := s.call(ctx, st.log, "list shards", func(ctx context.Context) error {
			var err error
			page, err = s.client.ListShards(ctx, in)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("list shards of stream %q: %w", st.name, err)
		}
		for _, sh := range page.Shards {
			info := shardInfo{id: aws.ToString(sh.ShardId), hashRange: shardHashRange(sh.HashKeyRange)}
			if p := aws.ToString(sh.ParentShardId); p != "" {
				info.parents = append(info.parents, p)
			}
			if p := aws.ToString(sh.AdjacentParentShardId); p != "" {
				info.parents = append(info.parents, p)
			}
			if r := sh.SequenceNumberRange; r != nil {
				info.closed = r.EndingSequenceNumber != nil
				info.startSeq = aws.ToString(r.StartingSequenceNumber)
			}
			out = append(out, info)
		}
		if aws.ToString(page.NextToken) == "" {
			return out, nil
		}
		in = &kinesis.ListShardsInput{NextToken: page.NextToken, MaxResults: aws.Int32(s.opts.ListShardsPageSize)}
	}
}
