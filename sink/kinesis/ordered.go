package kinesissink

import "time"

// orderedScheduler is the ordered mode: records are queued by predicted
// shard, at most one request per shard is in flight, and a request holds at
// most one entry per partition key (or one aggregate), so a failed entry is
// re-sent before any newer entry of its key. Its packer decides what one
// request of a shard holds: plain entries (plainPacker, below) or one KPL
// aggregate (aggregatePacker, ordered_aggregate.go).
//
// A shard is ready (in readyQ) when it is not busy and its queue is due:
// full by the packer's measure, its oldest record lingered Options.Linger,
// or a Flush or a writer waiting for space asks. A shard whose head records
// all have their key in flight on another shard (possible only after the
// shard map changed) is blocked until a job releases keys.
type orderedScheduler struct {
	e       *engine
	pack    packer
	queues  shardQueues
	readyQ  []*queue
	blocked map[*queue]bool
	keys    map[string]int // partition keys in flight
}

// packer builds the next request of an ordered shard.
type packer interface {
	// full reports whether q holds enough to send without lingering.
	full(q *queue) bool
	// need is the budget, in bytes, the next request of q needs at least
	// (Options.RateLimit): a shard waits until its budget allows it.
	need(q *queue) int
	// batchRecords is how many records of budget a shard held back waits
	// for: what makes a request worth sending.
	batchRecords(l *limiter, q *queue) int
	// take removes the next request's records from the head of q, skipping
	// every record whose key is in inFlight and every later record of a
	// skipped key, within what the shard's budget allows. It returns the
	// request's entries and their distinct partition keys; no entries when
	// every head record was skipped.
	take(q *queue, inFlight map[string]int, a allowance) (ws []wire, keys []string)
}

func newOrderedScheduler(e *engine, p packer) *orderedScheduler {
	return &orderedScheduler{e: e, pack: p, queues: make(shardQueues), blocked: make(map[*queue]bool), keys: make(map[string]int)}
}

func (s *orderedScheduler) routed() bool { return true }

func (s *orderedScheduler) add(r *record) {
	q := s.queues.get(s.e.smap.shardOf(r.hash))
	q.push(r)
	s.consider(q, r.accepted)
}

// consider marks a shard ready when it is free and due, or arms the timer
// for when its oldest record will be due.
func (s *orderedScheduler) consider(q *queue, now time.Time) {
	if q.busy || q.ready || len(q.recs) == 0 {
		return
	}
	deadline := q.recs[0].accepted.Add(s.e.o.linger)
	if s.e.urgentLocked() || s.pack.full(q) || !now.Before(deadline) {
		if s.e.lim != nil && q.id != "" {
			if need := s.pack.need(q); !s.e.lim.allowance(q.id, now).admits(0, 0, need) {
				// Over the shard's budget: wait for it (the timer
				// considers the shard again).
				q.held = len(q.recs)
				s.e.armLocked(now.Add(s.e.lim.wait(q.id, s.pack.batchRecords(s.e.lim, q), need, now)))
				return
			}
		}
		q.ready = true
		s.readyQ = append(s.readyQ, q)
		return
	}
	s.e.armLocked(deadline)
}

func (s *orderedScheduler) considerAll(now time.Time) {
	for _, q := range s.queues {
		s.consider(q, now)
	}
}

func (s *orderedScheduler) timer(now time.Time) { s.considerAll(now) }

func (s *orderedScheduler) flushOpen() { s.considerAll(time.Now()) }

func (s *orderedScheduler) pending() bool { return len(s.readyQ) > 0 }

func (s *orderedScheduler) next() (job, bool) {
	for len(s.readyQ) > 0 {
		q := s.readyQ[0]
		s.readyQ[0] = nil
		s.readyQ = s.readyQ[1:]
		q.ready = false
		if q.busy || len(q.recs) == 0 || s.queues[q.id] != q {
			continue
		}
		a := unlimited
		now := time.Now()
		if s.e.lim != nil && q.id != "" {
			// Retries charged since the shard was found ready may have
			// spent its budget.
			if a = s.e.lim.allowance(q.id, now); !a.admits(0, 0, s.pack.need(q)) {
				s.consider(q, now)
				continue
			}
		}
		ws, keys := s.pack.take(q, s.keys, a)
		if len(ws) == 0 {
			// Every record at the head has a key still in flight on
			// another shard (after a shard map refresh): try again when
			// those keys are released.
			s.blocked[q] = true
			continue
		}
		q.busy = true
		for _, k := range keys {
			s.keys[k]++
		}
		if s.e.lim != nil && q.id != "" {
			n := 0
			for i := range ws {
				s.e.lim.charge(q.id, 1, ws[i].size, now)
				n += len(ws[i].members())
			}
			if n = min(n, q.held); n > 0 {
				q.held -= n
				s.e.lim.noteHeld(n)
			}
		}
		return job{wires: ws, q: q, keys: keys}, true
	}
	return job{}, false
}

// release frees a job's shard and keys, and lets the shard (and any shard
// that waited for these keys) send again.
func (s *orderedScheduler) release(j job) {
	j.q.busy = false
	for _, k := range j.keys {
		if n := s.keys[k] - 1; n > 0 {
			s.keys[k] = n
		} else {
			delete(s.keys, k)
		}
	}
	now := time.Now()
	if s.queues[j.q.id] == j.q {
		s.consider(j.q, now)
	}
	for q := range s.blocked {
		delete(s.blocked, q)
		if s.queues[q.id] == q {
			s.consider(q, now)
		}
	}
}

func (s *orderedScheduler) requeue(recs []*record) {
	now := time.Now()
	for _, q := range s.queues.requeue(s.e.smap, recs) {
		s.consider(q, now)
	}
}

// remap moves the queued records to their new shards. Busy shards stay busy
// through their job (the job holds the old queue), and the keys in flight
// keep a moved record from overtaking an older one of its key.
func (s *orderedScheduler) remap(m *shardMap) {
	s.queues = s.queues.remap(m)
	s.readyQ = nil
	clear(s.blocked)
	s.considerAll(time.Now())
}

func (s *orderedScheduler) drain() []*record {
	s.readyQ = nil
	return s.queues.drain()
}

// plainPacker makes an ordered request of plain entries: up to
// Options.MaxRequestEntries and MaxRequestBytes, one per partition key.
type plainPacker struct {
	maxEntries, maxBytes int
}

func (p *plainPacker) full(q *queue) bool {
	return len(q.recs) >= p.maxEntries || q.bytes >= p.maxBytes
}

func (p *plainPacker) need(q *queue) int { return q.recs[0].size }

func (p *plainPacker) batchRecords(l *limiter, q *queue) int {
	return l.batchRecords(min(len(q.recs), p.maxEntries))
}

func (p *plainPacker) take(q *queue, inFlight map[string]int, a allowance) (ws []wire, keys []string) {
	seen := make(map[string]struct{})
	limit := min(len(q.recs), 4*p.maxEntries) // bound the scan past skipped records
	old := q.recs
	kept := q.recs[:0]
	bytes := 0
	i := 0
	for ; i < limit && len(ws) < p.maxEntries; i++ {
		r := q.recs[i]
		k := r.e.PartitionKey
		_, dup := seen[k]
		if dup || inFlight[k] > 0 {
			// A later record of a key held back, or a key in flight.
			seen[k] = struct{}{}
			kept = append(kept, r)
			continue
		}
		if bytes+r.size > p.maxBytes || !a.admits(len(ws), bytes, r.size) {
			break // the request is full; r stays at the head of the rest
		}
		seen[k] = struct{}{}
		bytes += r.size
		q.bytes -= r.size
		ws = append(ws, routedWire(r, q.id))
		keys = append(keys, k)
	}
	q.recs = append(kept, old[i:]...)
	clear(old[len(q.recs):])
	return ws, keys
}
