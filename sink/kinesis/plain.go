package kinesissink

import "time"

// plainScheduler is the plain mode: entries go into requests as they come,
// in no particular shard, with no shard map. A request is due when it is
// full (Options.MaxRequestEntries, MaxRequestBytes) or its first entry
// lingered Options.Linger.
type plainScheduler struct {
	e *engine
	requests
}

func (s *plainScheduler) routed() bool { return false }

func (s *plainScheduler) add(r *record) {
	s.addWire(plainWire(r))
	s.armOrSeal(r.accepted)
}

// armOrSeal seals the open batch when it is due, else arms the timer for
// when it will be.
func (s *plainScheduler) armOrSeal(now time.Time) {
	if d, ok := s.batch.UntilNext(); ok && d > 0 {
		s.e.armLocked(now.Add(d))
	} else if ok {
		s.seal()
	}
}

func (s *plainScheduler) timer(now time.Time) { s.armOrSeal(now) }

func (s *plainScheduler) flushOpen() { s.seal() }

func (s *plainScheduler) release(job) {}

// requeue is not called in plain mode (entries are not routed, so none
// lands on an unexpected shard); records given are sent again all the same.
func (s *plainScheduler) requeue(recs []*record) {
	for _, r := range recs {
		s.addWire(plainWire(r))
	}
	s.seal()
}

func (s *plainScheduler) remap(*shardMap) {}
