package scalesim

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint"
)

// The loss count sees a record that was written and never delivered: a
// sink that forgets one shard's records loses exactly those.
func TestSimCountsRecordsNeverDelivered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newSim(t, 4, checkpoint.LeaseOptions{})
		defer s.stop()
		s.drop = func(r shardflow.Record) bool { return r.ShardID == s.shards[0] }
		s.start(1)
		if _, ok := s.waitBalanced(time.Minute); !ok {
			t.Fatalf("one instance does not hold all 4 shards after a minute: %v", s.ownership())
		}
		stop := s.produce(func(int) int { return 2 })
		time.Sleep(5 * time.Second)
		stop()
		lost, written, _ := s.waitDelivered(30 * time.Second)
		s.mu.Lock()
		want := len(s.written[s.shards[0]])
		s.mu.Unlock()
		if want == 0 || written != 4*want {
			t.Fatalf("wrote %d records, %d to the first shard; want 2 a second to each of 4 shards", written, want)
		}
		if lost != want {
			t.Errorf("lost = %d; want %d, the records of the shard the sink forgot", lost, want)
		}
	})
}

func TestOwnershipBalanced(t *testing.T) {
	tests := []struct {
		name   string
		o      ownership
		shards int
		want   bool
	}{
		{"counts within 1 of the mean", ownership{counts: map[string]int{"a": 3, "b": 4, "c": 3}}, 10, true},
		{"a count 2 from the mean", ownership{counts: map[string]int{"a": 2, "b": 4, "c": 4}}, 10, false},
		{"a shard nobody holds", ownership{counts: map[string]int{"a": 5, "b": 4}, missing: 1}, 10, false},
		{"a shard held twice", ownership{counts: map[string]int{"a": 5, "b": 6}, doubled: 1}, 10, false},
		{"an instance not synced yet", ownership{counts: map[string]int{"a": 5, "b": 5}, unsynced: 1}, 10, false},
		{"no live instance", ownership{counts: map[string]int{}}, 10, false},
		{"counts apart but loads within 20%", ownership{counts: map[string]int{"a": 2, "b": 8}, loads: map[string]float64{"a": 1000, "b": 900}}, 10, true},
		{"loads 25% apart, counts within 1", ownership{counts: map[string]int{"a": 5, "b": 5}, loads: map[string]float64{"a": 1250, "b": 750}}, 10, true},
		{"loads and counts apart", ownership{counts: map[string]int{"a": 2, "b": 8}, loads: map[string]float64{"a": 1250, "b": 750}}, 10, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.o.balanced(tc.shards); got != tc.want {
				t.Errorf("balanced(%d) of %v = %v; want %v", tc.shards, tc.o, got, tc.want)
			}
		})
	}
}
