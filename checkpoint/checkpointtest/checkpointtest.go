// Package checkpointtest is the conformance suite every
// [shardflow.CheckpointStore] must pass. A store's tests call Run:
//
//	func TestConformance(t *testing.T) {
//		checkpointtest.Run(t, func(t *testing.T) shardflow.CheckpointStore { return memory.New() })
//	}
package checkpointtest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
)

// Run runs the suite. newStore returns a store that has no checkpoints for
// the streams the suite uses; each subtest gets its own, and uses stream
// names made unique with t.Name(), so stores backed by a shared table work.
func Run(t *testing.T, newStore func(t *testing.T) shardflow.CheckpointStore) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, newStore(t), streamName(t))
		})
	}
}

func streamName(t *testing.T) string {
	r := strings.NewReplacer("/", "-", " ", "_", "#", "-")
	return "cpt-" + r.Replace(t.Name())
}

var longSequence = "4" + strings.Repeat("9", 128) // 129 digits, the most Kinesis issues

var cases = []struct {
	name string
	run  func(t *testing.T, s shardflow.CheckpointStore, stream string)
}{
	{"loading a shard that has no checkpoint reports none without error", func(t *testing.T, s shardflow.CheckpointStore, stream string) {
		cp, ok, err := s.Load(t.Context(), stream, "shardId-000000000000")
		if err != nil || ok {
			t.Fatalf("Load = %+v, %v, %v; want none, false, nil", cp, ok, err)
		}
	}},
	{"a saved checkpoint loads back unchanged, including 129-digit sequence numbers", func(t *testing.T, s shardflow.CheckpointStore, stream string) {
		for _, want := range []shardflow.Checkpoint{
			{Position: shardflow.Position{SequenceNumber: "49590338271490256608559692538361571095921575989136588898"}},
			{Position: shardflow.Position{SequenceNumber: longSequence, SubSequenceNumber: 7, Partial: true}},
			{Position: shardflow.Position{SequenceNumber: "1", SubSequenceNumber: 3}},
			{Position: shardflow.Position{SequenceNumber: "12"}, ShardEnd: true},
			{ShardEnd: true},
		} {
			if err := s.Save(t.Context(), stream, "shardId-000000000001", want); err != nil {
				t.Fatalf("Save(%+v): %v", want, err)
			}
			got, ok, err := s.Load(t.Context(), stream, "shardId-000000000001")
			if err != nil || !ok {
				t.Fatalf("Load after Save(%+v) = _, %v, %v; want ok", want, ok, err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("checkpoint mismatch (-want +got):\n%s", diff)
			}
		}
	}},
	{"checkpoints of different shards and streams are independent", func(t *testing.T, s shardflow.CheckpointStore, stream string) {
		ctx := t.Context()
		other := stream + "-other"
		want := map[[2]string]shardflow.Checkpoint{}
		for i, k := range [][2]string{{stream, "a"}, {stream, "b"}, {other, "a"}} {
			cp := shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: fmt.Sprint(100 + i)}}
			if err := s.Save(ctx, k[0], k[1], cp); err != nil {
				t.Fatalf("Save(%v): %v", k, err)
			}
			want[k] = cp
		}
		for k, cp := range want {
			got, ok, err := s.Load(ctx, k[0], k[1])
			if err != nil || !ok {
				t.Fatalf("Load(%v) = _, %v, %v", k, ok, err)
			}
			if diff := cmp.Diff(cp, got); diff != "" {
				t.Errorf("Load(%v) mismatch (-want +got):\n%s", k, diff)
			}
		}
		if _, ok, _ := s.Load(ctx, stream, "c"); ok {
			t.Errorf("Load of a never-saved shard reported a checkpoint")
		}
	}},
	{"the last save wins", func(t *testing.T, s shardflow.CheckpointStore, stream string) {
		ctx := t.Context()
		for _, seq := range []string{"1", "2", "30"} {
			if err := s.Save(ctx, stream, "a", shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: seq}}); err != nil {
				t.Fatal(err)
			}
		}
		got, _, err := s.Load(ctx, stream, "a")
		if err != nil || got.SequenceNumber != "30" {
			t.Fatalf("Load = %+v, %v; want sequence 30", got, err)
		}
	}},
	{"concurrent saves of many shards all land", func(t *testing.T, s shardflow.CheckpointStore, stream string) {
		ctx := t.Context()
		const shards, saves = 8, 5
		var wg sync.WaitGroup
		errs := make(chan error, shards*saves)
		for i := range shards {
			wg.Go(func() {
				for j := 1; j <= saves; j++ {
					cp := shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: fmt.Sprint(j)}}
					if err := s.Save(ctx, stream, fmt.Sprintf("shard-%d", i), cp); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("Save: %v", err)
		}
		for i := range shards {
			got, ok, err := s.Load(ctx, stream, fmt.Sprintf("shard-%d", i))
			if err != nil || !ok || got.SequenceNumber != fmt.Sprint(saves) {
				t.Errorf("shard-%d: Load = %+v, %v, %v; want sequence %d", i, got, ok, err, saves)
			}
		}
	}},
	{"a cancelled context fails Save and Load and changes nothing", func(t *testing.T, s shardflow.CheckpointStore, stream string) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := s.Save(ctx, stream, "a", shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: "5"}}); err == nil {
			t.Errorf("Save with a cancelled context succeeded")
		}
		if _, _, err := s.Load(ctx, stream, "a"); err == nil {
			t.Errorf("Load with a cancelled context succeeded")
		}
		if _, ok, err := s.Load(t.Context(), stream, "a"); err != nil || ok {
			t.Errorf("after a cancelled Save, Load = ok %v, err %v; want no checkpoint", ok, err)
		}
	}},
}
