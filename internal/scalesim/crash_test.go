package scalesim

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow/checkpoint"
)

// Crash: a quarter of a balanced group (5 of 20) dies at once while records
// flow, without releasing a lease or saving a checkpoint. The survivors must
// hold every shard, balanced, within balanceGoal; no shard may go unread
// longer than gapBound; and every record written must be delivered at
// least once.
// gapSlack is the "little" a shard may go unread beyond the last poll of
// the crashed instance (up to IdleInterval before the crash) and the
// failover bound package checkpoint documents (LeaseDuration +
// RenewInterval): the new reader's start.
const gapSlack = 500 * time.Millisecond

func TestCrash(t *testing.T) {
	forSizes(t, func(t *testing.T, z size) {
		synctest.Test(t, func(t *testing.T) { crash(t, z) })
	})
}

func crash(t *testing.T, z size) {
	s := newSim(t, z.shards, checkpoint.LeaseOptions{})
	defer s.stop()
	var r report
	title := "crash of a quarter of the instances, " + z.String() + " (times are virtual)"

	s.start(z.instances)
	if _, ok := s.waitBalanced(balanceBound); !ok {
		t.Fatalf("not balanced %v after a cold start: %v", balanceBound, s.ownership())
	}
	stop := s.produce(func(int) int { return 1 })
	defer stop()
	// Records flow and checkpoints are saved. The crash comes between two
	// checkpoints (every 5s) and two writes (every second), so that the
	// crashed instances have read records they never checkpointed: the
	// survivors must read those again.
	time.Sleep(32*time.Second + 500*time.Millisecond)

	var victims []*node
	orphans := 0
	for i, n := range s.live() {
		if i%4 == 0 {
			victims = append(victims, n)
			held, _ := n.gate.holding()
			orphans += len(held)
		}
	}
	s.resetGaps()
	for _, v := range victims {
		s.crash(v)
	}
	r.add("instances crashed / shards they held", "", "%d / %d", len(victims), orphans)
	r.add("balanced means", "", "%s", s.criterion())

	held, ok := s.waitFor(balanceBound, func(o ownership) bool { return o.missing == 0 && o.doubled == 0 })
	r.add("every shard read again after", "", "%v", held.Round(poll))
	took, ok2 := s.waitBalanced(balanceBound - held)
	took += held
	r.add("survivors balanced after", goal("≤ 30s", took <= balanceGoal), "%v", took.Round(poll))
	if !ok || !ok2 {
		r.log(t, title)
		t.Fatalf("survivors not balanced %v after the crash: %v", balanceBound, s.ownership())
	}

	time.Sleep(30 * time.Second)
	// Checked while records flow: a store that balances by load is judged
	// by load then (see ownership.balanced).
	stillBalanced := s.ownership()
	s.checkTable()
	stop()
	lost, written, dups := s.waitDelivered(deliverBound)
	gap, which := s.longestGap()
	duration, renew := s.leaseTimes()
	gapBound := idleInterval + duration + renew + gapSlack
	r.add("longest a shard went unread", goal("≤ "+gapBound.Round(poll).String(), gap <= gapBound), "%v (%s)", gap.Round(poll), which)
	r.add("records written / lost / read twice", goal("0 lost", lost == 0), "%d / %d / %d", written, lost, dups)
	r.log(t, title)
	s.logWarnings()

	if took > balanceGoal {
		t.Errorf("survivors balanced %v after the crash; the goal is %v", took.Round(poll), balanceGoal)
	}
	if gap > gapBound {
		t.Errorf("shard %s went unread for %v; want at most IdleInterval + LeaseDuration + RenewInterval + %v = %v", which, gap.Round(poll), gapSlack, gapBound.Round(poll))
	}
	if lost > 0 {
		t.Errorf("%d of %d records written were never delivered", lost, written)
	}
	if !stillBalanced.balanced(z.shards) {
		t.Errorf("no longer balanced 30s after the survivors balanced: %v", stillBalanced)
	}
}
