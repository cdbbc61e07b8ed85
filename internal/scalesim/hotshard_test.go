package scalesim

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow/checkpoint"
)

const (
	// loadGoal is how far from the mean the bytes/s read by any instance
	// may be once the group settled: ±20%.
	loadGoal = 0.20
	// hotFactor is how many times the records of every other shard the hot
	// shard gets.
	hotFactor = 10
	// loadWindow is the span over which bytes/s read are measured: long
	// enough that one poll more or less in it moves a shard's figure by
	// under 2%.
	loadWindow = time.Minute
	// settleBound is how long the test waits, from the first record
	// written, for a window within loadGoal.
	settleBound = 5 * time.Minute
)

// Hot shard: one shard gets hotFactor times the records of each other one
// (a record a second each, of recordBytes). Once the group settled, the
// bytes/s read by each instance must be within loadGoal of the mean: the
// instance reading the hot shard must hold fewer shards. That takes a lease
// store that balances by load; with one that balances by count only, the
// test reports its figures and skips the goal, saying so.
//
// With 1,000 shards and 20 instances one hot shard is within the goal even
// when leases are balanced by count only (its reader reads 59 shards' worth
// against a mean of 50.45, +17%), so the big size also runs with 10 hot
// shards: balanced by count, some instance almost always reads two of them
// (+25% or more), which only balancing by load avoids.
func TestHotShard(t *testing.T) {
	forSizes(t, func(t *testing.T, z size) {
		synctest.Test(t, func(t *testing.T) { hotShard(t, z, 1) })
	})
	t.Run("10hot_1000x20", func(t *testing.T) {
		z := size{shards: 1000, instances: 20, big: true}
		skipBig(t, z)
		synctest.Test(t, func(t *testing.T) { hotShard(t, z, 10) })
	})
}

func hotShard(t *testing.T, z size, hots int) {
	s := newSim(t, z.shards, checkpoint.LeaseOptions{})
	defer s.stop()
	var r report
	title := fmt.Sprintf("%d hot shard(s) (%d× the records of the others), %v (times are virtual)", hots, hotFactor, z)

	s.start(z.instances)
	if _, ok := s.waitBalanced(balanceBound); !ok {
		t.Fatalf("not balanced %v after a cold start: %v", balanceBound, s.ownership())
	}
	hot := map[int]bool{} // indexes of the hot shards, spread over the key space
	for i := range hots {
		hot[i*z.shards/hots+z.shards/(2*hots)] = true
	}
	stop := s.produce(func(i int) int {
		if hot[i] {
			return hotFactor
		}
		return 1
	})
	defer stop()

	// Measure window after window until one is within the goal, then one
	// more to show that it holds.
	start := time.Now()
	before := s.readBytes()
	var spread float64
	var rates map[string]float64
	settled := time.Duration(-1)
	for time.Since(start) < settleBound+loadWindow {
		time.Sleep(loadWindow)
		after := s.readBytes()
		spread, rates = loadSpread(before, after, loadWindow)
		before = after
		if settled >= 0 {
			break // the window after settling: the figure reported
		}
		if math.Abs(spread) <= loadGoal {
			settled = time.Since(start)
		}
	}
	met := settled >= 0 && math.Abs(spread) <= loadGoal
	if settled >= 0 {
		r.add("first window within ±20% ended after", "", "%v", settled.Round(poll))
	} else {
		r.add("first window within ±20% ended after", "", "none in %v", settleBound)
	}
	r.add("bytes/s read per instance, last window", goal("within ±20% of the mean", met), "%s", rateRange(rates))
	r.add("worst distance from the mean", "", "%+.1f%%", 100*spread)
	hotIDs := map[string]bool{}
	for i := range hot {
		hotIDs[s.shards[i]] = true
	}
	var holders []string
	for _, n := range s.live() {
		held, _ := n.gate.holding()
		k := 0
		for _, id := range held {
			if hotIDs[id] {
				k++
			}
		}
		if k > 0 {
			holders = append(holders, fmt.Sprintf("%s %d(%d)", n.name, len(held), k))
		}
	}
	slices.Sort(holders)
	loadMean := float64(z.shards+hots*(hotFactor-1)) / float64(z.instances)
	r.add("readers of hot shards: shards held (hot ones)", "", "%s", strings.Join(holders, " "))
	r.add("by load, a reader of 1 hot shard should hold", "", "%.1f shards (mean %.1f)", loadMean-(hotFactor-1), float64(z.shards)/float64(z.instances))
	countOnly := (math.Ceil(float64(z.shards)/float64(z.instances))+hotFactor-1)/loadMean - 1
	r.add("worst distance if balanced by count, 1 hot per reader", "", "%+.1f%% (computed)", 100*countOnly)

	stop()
	lost, written, dups := s.waitDelivered(deliverBound)
	r.add("records written / lost / read twice", goal("0 lost", lost == 0), "%d / %d / %d", written, lost, dups)
	r.log(t, title)
	s.logWarnings()

	if lost > 0 {
		t.Errorf("%d of %d records written were never delivered", lost, written)
	}
	if o := s.ownership(); o.missing > 0 || o.doubled > 0 {
		t.Errorf("shards not held exactly once at the end: %v", o)
	}
	if met {
		return
	}
	s.mu.Lock()
	in := s.nodes[0].gate.in
	s.mu.Unlock()
	if !balancesByLoad(in) {
		t.Skipf("GOAL NOT TESTED: checkpoint/memory's Instance does not take load reports (shardflow.LoadRecorder), so leases are balanced by count only; with it the bytes/s read per instance are %s, %+.1f%% from the mean at worst (goal ±20%%)", rateRange(rates), 100*spread)
	}
	t.Errorf("bytes/s read per instance %s, %+.1f%% from the mean at worst, %v after the first record; the goal is within ±20%% within %v", rateRange(rates), 100*spread, time.Since(start).Round(poll), settleBound)
}

// loadSpread returns each instance's bytes/s read between two readBytes
// snapshots d apart, and the largest relative distance of one from their
// mean (signed: negative when the worst is below the mean).
func loadSpread(before, after map[string]int64, d time.Duration) (float64, map[string]float64) {
	rates := map[string]float64{}
	var sum float64
	for name, b := range after {
		rates[name] = float64(b-before[name]) / d.Seconds()
		sum += rates[name]
	}
	if len(rates) == 0 || sum == 0 {
		return 0, rates
	}
	mean := sum / float64(len(rates))
	var worst float64
	for _, v := range rates {
		if d := (v - mean) / mean; math.Abs(d) > math.Abs(worst) {
			worst = d
		}
	}
	return worst, rates
}

// rateRange formats the lowest, mean and highest of rates.
func rateRange(rates map[string]float64) string {
	if len(rates) == 0 {
		return "none"
	}
	var lo, hi, sum float64
	first := true
	for _, v := range rates {
		if first || v < lo {
			lo = v
		}
		if first || v > hi {
			hi = v
		}
		first = false
		sum += v
	}
	return fmt.Sprintf("%.0f..%.0f B/s (mean %.0f)", lo, hi, sum/float64(len(rates)))
}
