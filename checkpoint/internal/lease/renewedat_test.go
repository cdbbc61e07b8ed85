package lease_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/internal/lease"
)

// item returns a copy of the table's lease of shard s0 of stream st.
func (t *table) item(tb *testing.T) lease.Lease {
	tb.Helper()
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.items["st/s0"]
	if l == nil {
		tb.Fatal("no lease item for s0")
	}
	return *l
}

// Each take of a lease (the take that creates the item, the take of a free
// item) writes the owner's time of it; a checkpoint and later syncs leave
// it (the heartbeat, not the lease item, proves the owner alive); a release
// removes it. In the bubble no time passes within a Sync, so the time written is
// exactly time.Now() around it.
func TestATakeWritesTheOwnersTimeAndAReleaseRemovesIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := newTable()
		a, b := newManager(t, tb, "a"), newManager(t, tb, "b")
		ctx := t.Context()
		shards := []string{"s0"}
		check := func(step string, want lease.Lease) {
			t.Helper()
			if diff := cmp.Diff(want, tb.item(t)); diff != "" {
				t.Errorf("%s: lease mismatch (-want +got):\n%s", step, diff)
			}
		}

		taken := time.Now()
		if held, err := a.Sync(ctx, "st", shards); err != nil || len(held) != 1 {
			t.Fatalf("a's first Sync = %v, %v; want s0", held, err)
		}
		check("take by creation", lease.Lease{ShardID: "s0", Owner: "a", Counter: 1, RenewedAt: taken})

		for range 4 { // syncs with and without a heartbeat due
			time.Sleep(a.SyncInterval())
			if _, err := a.Sync(ctx, "st", shards); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Checkpoint(ctx, "st", "s0", shardflow.Checkpoint{SequenceNumber: "7"}); err != nil {
			t.Fatal(err)
		}
		check("heartbeats, then a checkpoint", lease.Lease{ShardID: "s0", Owner: "a", Counter: 1, RenewedAt: taken})

		if err := a.Release(ctx, "st", "s0"); err != nil {
			t.Fatal(err)
		}
		check("release", lease.Lease{ShardID: "s0", Counter: 2})

		time.Sleep(time.Second)
		takenByB := time.Now()
		if held, err := b.Sync(ctx, "st", shards); err != nil || len(held) != 1 {
			t.Fatalf("b's Sync = %v, %v; want s0", held, err)
		}
		check("take of a free lease", lease.Lease{ShardID: "s0", Owner: "b", Counter: 3, RenewedAt: takenByB})
	})
}

// A take refused by its condition (another instance wrote the
// item between this one's read and its write) writes no renewal time: the
// item is as the other instance left it.
func TestATakeRefusedByItsConditionWritesNoRenewalTime(t *testing.T) {
	theirs := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC) // b's time, unlike any in the bubble
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, tb *table, a *lease.Manager)
	}{
		{"take of a free lease", func(t *testing.T, tb *table, a *lease.Manager) {
			tb.items["st/s0"] = &lease.Lease{ShardID: "s0", Counter: 6}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tb := newTable()
				a := newManager(t, tb, "a")
				tc.setup(t, tb, a)
				updates := 0
				tb.fail = func(op string) (error, bool) {
					if op != "Update" {
						return nil, false
					}
					updates++
					if updates == 1 { // b gets there first (tb.mu is held)
						tb.items["st/s0"] = &lease.Lease{ShardID: "s0", Owner: "b", Counter: 9, RenewedAt: theirs}
					}
					return nil, false
				}
				held, err := a.Sync(t.Context(), "st", []string{"s0"})
				if err != nil || len(held) != 0 {
					t.Errorf("Sync = %v, %v; want no lease: b holds it", held, err)
				}
				if updates != 1 {
					t.Errorf("a made %d writes; want the one refused", updates)
				}
				want := lease.Lease{ShardID: "s0", Owner: "b", Counter: 9, RenewedAt: theirs}
				if diff := cmp.Diff(want, tb.item(t)); diff != "" {
					t.Errorf("lease mismatch (-want +got):\n%s", diff)
				}
			})
		})
	}
}
