package memory_test

import (
	"testing"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/checkpointtest"
	"github.com/shardflow/shardflow/checkpoint/memory"
)

func TestConformance(t *testing.T) {
	checkpointtest.Run(t, func(*testing.T) shardflow.CheckpointStore { return memory.New() })
}

func TestAccessorsReportWhatWasSaved(t *testing.T) {
	s := memory.New()
	cp := shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: "9"}}
	if err := s.Save(t.Context(), "orders", "shard-1", cp); err != nil {
		t.Fatal(err)
	}
	if got, ok := s.Checkpoint("orders", "shard-1"); !ok || got != cp {
		t.Errorf("Checkpoint = %+v, %v; want %+v, true", got, ok, cp)
	}
	if got := s.Checkpoints("orders"); len(got) != 1 || got["shard-1"] != cp {
		t.Errorf("Checkpoints = %+v", got)
	}
	if got := s.Checkpoints("other"); len(got) != 0 {
		t.Errorf("Checkpoints of another stream = %+v; want none", got)
	}
	if s.Saves() != 1 {
		t.Errorf("Saves = %d; want 1", s.Saves())
	}
	s.Reset()
	if _, ok := s.Checkpoint("orders", "shard-1"); ok || s.Saves() != 0 {
		t.Errorf("Reset left a checkpoint or a count")
	}
}
