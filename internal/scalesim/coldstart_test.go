package scalesim

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow/checkpoint"
)

// Goals of the lease algorithm at scale, in virtual time.
const (
	// balanceGoal is how soon a group must be balanced after a cold start
	// or after instances crashed.
	balanceGoal = 30 * time.Second
	// idleCallsGoal is the most DynamoDB-equivalent calls per shard per
	// minute of a settled group reading idle shards.
	idleCallsGoal = 2.0
	// balanceBound is how long the test waits for a balance at all: past
	// it the group is called unbalanced, a failure of correctness rather
	// than a missed goal.
	balanceBound = 10 * time.Minute
	// deliverBound is how long, once the producer stopped, the test waits
	// for every record written to be delivered.
	deliverBound = 2 * time.Minute
)

// Cold start: every instance starts at once on a stream whose shards have
// no lease yet. The group must divide the shards (each held by exactly one
// instance, counts within ±1 of the mean) within balanceGoal, and then,
// idle, cost at most idleCallsGoal table calls per shard per minute.
// Busy (a record a second on every shard, checkpoints every 5s), the calls
// are reported, and every record written must be delivered.
func TestColdStart(t *testing.T) {
	forSizes(t, func(t *testing.T, z size) {
		synctest.Test(t, func(t *testing.T) { coldStart(t, z) })
	})
}

func coldStart(t *testing.T, z size) {
	s := newSim(t, z.shards, checkpoint.LeaseOptions{})
	defer s.stop()
	var r report

	s.start(z.instances)
	r.add("balanced means", "", "%s", s.criterion())
	held, ok := s.waitFor(balanceBound, func(o ownership) bool { return o.missing == 0 && o.doubled == 0 && o.unsynced == 0 })
	r.add("cold start: every shard held after", "", "%v (%v)", held.Round(poll), s.ownership())
	took, ok2 := s.waitBalanced(balanceBound - held)
	took += held
	ok = ok && ok2
	r.add("cold start: balanced after", goal("≤ 30s", took <= balanceGoal), "%v", took.Round(poll))
	if !ok {
		r.log(t, "cold start, "+z.String())
		t.Fatalf("not balanced %v after a cold start: %v", balanceBound, s.ownership())
	}

	// Let hand-overs in progress end, then measure a quiet group.
	time.Sleep(30 * time.Second)
	s.resetGaps()
	idle, idleBy := s.callsPerShardMinute(3 * time.Minute)
	r.add("idle: table calls / shard / minute", goal("≤ 2", idle <= idleCallsGoal), "%.2f (%s)", idle, formatCalls(idleBy))
	gap, _ := s.longestGap()
	r.add("idle: longest a shard went unread", "", "%v", gap.Round(poll))
	if o := s.ownership(); !o.balanced(z.shards) {
		t.Errorf("no longer balanced after 3 idle minutes: %v", o)
	}
	s.checkTable()

	stop := s.produce(func(int) int { return 1 })
	time.Sleep(30 * time.Second)
	busy, busyBy := s.callsPerShardMinute(2 * time.Minute)
	r.add("busy (1 record/s/shard): table calls / shard / minute", "", "%.2f (%s)", busy, formatCalls(busyBy))
	stop()
	lost, written, dups := s.waitDelivered(deliverBound)
	r.add("records written / lost / duplicates", goal("0 lost", lost == 0), "%d / %d / %d", written, lost, dups)
	r.log(t, "cold start, "+z.String()+" (times are virtual)")
	s.logWarnings()

	if took > balanceGoal {
		t.Errorf("balanced %v after a cold start; the goal is %v", took.Round(poll), balanceGoal)
	}
	if idle > idleCallsGoal {
		t.Errorf("%.2f table calls per shard per minute when idle (%s); the goal is at most %v", idle, formatCalls(idleBy), idleCallsGoal)
	}
	if lost > 0 {
		t.Errorf("%d of %d records written were never delivered", lost, written)
	}
}
