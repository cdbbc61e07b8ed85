package lease

import (
	"math"
	"slices"
	"sync/atomic"
	"time"
)

// Load balancing constants.
const (
	// loadTau is the time constant of the per-shard load average (an
	// exponentially weighted moving average).
	loadTau = 30 * time.Second
	// loadFloor is the total load of a stream, in bytes per second, below
	// which leases are balanced by count rather than by load.
	loadFloor = 1024
	// hysteresis is how far above the mean load the busiest instance must
	// be before an instance below the mean asks it for a lease (above
	// mean×(1+h)), so that leases do not flap.
	hysteresis = 0.1
)

// load is the measured load of one shard: the counts RecordLoad adds to,
// and the average rates taken from them at each heartbeat (under
// Manager.mu).
type load struct {
	bytes, records atomic.Int64

	lastB, lastR int64
	at           time.Time
	rb, rr       float64 // bytes and records per second
	measured     bool
}

// RecordLoad adds what one read of a shard returned to the shard's load. It
// is cheap (two atomic adds once the shard is known) and never blocks on
// the table.
func (m *Manager) RecordLoad(stream, shard string, records, bytes int) {
	k := key{stream, shard}
	v, ok := m.loads.Load(k)
	if !ok {
		v, _ = m.loads.LoadOrStore(k, &load{})
	}
	l := v.(*load)
	l.records.Add(int64(records))
	l.bytes.Add(int64(bytes))
}

// rate updates and returns the shard's average load, in bytes and records
// per second. Called with m.mu held.
func (m *Manager) rate(k key, now time.Time) (float64, float64) {
	v, ok := m.loads.Load(k)
	if !ok {
		return 0, 0
	}
	l := v.(*load)
	b, r := l.bytes.Load(), l.records.Load()
	if l.at.IsZero() {
		l.at, l.lastB, l.lastR = now, b, r
		return l.rb, l.rr
	}
	dt := now.Sub(l.at)
	if dt < time.Millisecond {
		return l.rb, l.rr
	}
	ib := float64(b-l.lastB) / dt.Seconds()
	ir := float64(r-l.lastR) / dt.Seconds()
	if !l.measured {
		if l.rb == 0 && l.rr == 0 {
			l.rb, l.rr = ib, ir // the first interval is the best guess
		}
		l.measured = true
	} else {
		a := 1 - math.Exp(-dt.Seconds()/loadTau.Seconds())
		l.rb += a * (ib - l.rb)
		l.rr += a * (ir - l.rr)
	}
	l.at, l.lastB, l.lastR = now, b, r
	return l.rb, l.rr
}

// seedLocked starts the load average of a shard just taken at what its last
// owner published. Called with m.mu held.
func (m *Manager) seedLocked(k key, bytesPerSec int64) {
	v, _ := m.loads.LoadOrStore(k, &load{})
	l := v.(*load)
	l.rb = float64(bytesPerSec)
	l.at = time.Time{} // measure from the next heartbeat on
	l.measured = bytesPerSec > 0
}

// loaded reports whether stream's total published load is above the floor
// under which leases are balanced by count.
func (m *Manager) loaded(stream string, live map[string]StreamInfo) bool {
	total := m.ownLoad(stream, nil)
	for _, si := range live {
		total += float64(si.Bytes)
	}
	return total >= loadFloor
}

// ownLoad is this instance's load of stream as last measured, in bytes per
// second: of the shards it reads (those in mine, when not nil).
func (m *Manager) ownLoad(stream string, mine map[string]*held) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	total := 0.0
	for k, h := range m.held {
		if k.stream != stream || !h.renewing.Load() || mine != nil && mine[k.shard] != h {
			continue
		}
		if v, ok := m.loads.Load(k); ok {
			total += v.(*load).rb
		}
	}
	return total
}

// pickByLoad chooses, when this instance's load of stream is below the
// mean, the busiest member above the mean by more than the hysteresis, and the shards of that member that best narrow both gaps
// without overshooting: never a shard whose load is more than half their
// difference (a hot shard stays put; the others move away from its owner).
func (m *Manager) pickByLoad(stream string, mine map[string]*held, live map[string]StreamInfo) (string, []string) {
	if !m.loaded(stream, live) {
		return "", nil
	}
	my := m.ownLoad(stream, mine)
	total := my
	for _, si := range live {
		total += float64(si.Bytes)
	}
	mean := total / float64(len(live)+1)
	// Below the mean is enough to ask, as long as the busiest member is
	// above it by more than the hysteresis: when the others are all a
	// little below the mean (a hot shard's owner holds their excess), none
	// of them would be below it by the hysteresis, and the busiest would
	// never be relieved. Each move takes at most half the two members'
	// difference, so no lease goes back.
	if my >= mean {
		return "", nil
	}
	owners := sortedKeys(live)
	slices.SortStableFunc(owners, func(a, b string) int { return int(live[b].Bytes - live[a].Bytes) })
	room := math.MaxInt // shards this instance may still take
	if m.o.MaxLeasesPerInstance > 0 {
		room = m.o.MaxLeasesPerInstance - m.activeCount(mine)
	}
	for _, owner := range owners {
		lb := float64(live[owner].Bytes)
		if lb <= mean*(1+hysteresis) {
			break
		}
		d := lb - my
		budget := min(mean-my, lb-mean) // what would bring one of the two to the mean
		ids := sortedKeys(live[owner].Shards)
		slices.SortStableFunc(ids, func(a, b string) int {
			return int(live[owner].Shards[b] - live[owner].Shards[a])
		})
		var pick []string
		moved := 0.0
		for _, id := range ids {
			x := float64(live[owner].Shards[id])
			if x <= 0 || 2*x > d || moved+x > budget || len(pick) >= room {
				continue
			}
			pick = append(pick, id)
			moved += x
		}
		if len(pick) == 0 {
			// No shard fits the budget: the one closest to it that does
			// not overshoot, if it narrows the gap by a tenth at least.
			best, bestDiff := "", math.Inf(1)
			for _, id := range ids {
				x := float64(live[owner].Shards[id])
				if x <= 0 || 2*x > d || x < d*hysteresis/2 {
					continue
				}
				if diff := math.Abs(x - budget); diff < bestDiff {
					best, bestDiff = id, diff
				}
			}
			if best == "" || room <= 0 {
				continue
			}
			pick = []string{best}
		}
		slices.Sort(pick)
		return owner, pick
	}
	return "", nil
}

// activeCount is how many leases of mine are held and read.
func (m *Manager) activeCount(mine map[string]*held) int {
	n := 0
	for _, h := range mine {
		h.io.Lock()
		if !h.gone && h.givingUp.IsZero() {
			n++
		}
		h.io.Unlock()
	}
	return n
}
