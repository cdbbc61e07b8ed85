package memory_test

import (
	"errors"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow/internal/logtest"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint/memory"
)

func TestZeroValuedInstanceOptionsValidateAndRunWithTheDocumentedDefaults(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memory.New()
		a, err := store.Instance("a", func(o *memory.InstanceOptions) { *o = memory.InstanceOptions{} })
		if err != nil {
			t.Fatalf("Instance with zero InstanceOptions = %v", err)
		}
		if a.LeaseDuration() != 8*time.Second || a.LeaseSyncInterval() != 8*time.Second/3/2 {
			t.Errorf("LeaseDuration, LeaseSyncInterval = %v, %v; want 8s and LeaseDuration/3/2", a.LeaseDuration(), a.LeaseSyncInterval())
		}
		ctx := t.Context()
		if held, err := a.SyncLeases(ctx, "st", []string{"s0"}); err != nil || len(held) != 1 {
			t.Fatalf("SyncLeases = %v, %v", held, err)
		}
		cp := shardflow.Checkpoint{Position: shardflow.Position{SequenceNumber: "3"}}
		if err := a.Save(ctx, "st", "s0", cp); err != nil {
			t.Fatal(err)
		}
		// The default lease duration, on the bubble's clock: another
		// instance takes the lease of one that stopped syncing (and so
		// writing its heartbeat) no sooner than 8s less a renew interval
		// after its last heartbeat, and at most a sync interval after 8s.
		b, err := store.Instance("b")
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for {
			held, err := b.SyncLeases(ctx, "st", []string{"s0"})
			if err != nil {
				t.Fatal(err)
			}
			if len(held) == 1 {
				break
			}
			time.Sleep(b.LeaseSyncInterval())
		}
		ld, ri := 8*time.Second, 8*time.Second/3
		if took := time.Since(start); took < ld-ri || took > ld+ri/2 {
			t.Errorf("b took the lease after %v; want within [LeaseDuration-RenewInterval, LeaseDuration+RenewInterval/2] of the defaults", took)
		}
		if got, _, err := b.Load(ctx, "st", "s0"); err != nil || got != cp {
			t.Errorf("Load = %+v, %v; want %+v", got, err, cp)
		}
	})
}

func TestBadInstanceOptionsAreConfigErrorsNamingTheField(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fn    func(*memory.InstanceOptions)
		field string
	}{
		{"a negative lease duration", func(o *memory.InstanceOptions) { o.LeaseDuration = -time.Second }, "InstanceOptions.LeaseDuration"},
		{"a negative renew interval", func(o *memory.InstanceOptions) { o.RenewInterval = -time.Second }, "InstanceOptions.RenewInterval"},
		{"a renew interval over half the lease", func(o *memory.InstanceOptions) { o.RenewInterval = 6 * time.Second }, "InstanceOptions.RenewInterval"},
		{"a negative handoff timeout", func(o *memory.InstanceOptions) { o.HandoffTimeout = -1 }, "InstanceOptions.HandoffTimeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := memory.New().Instance("a", tc.fn)
			ce, ok := errors.AsType[*shardflow.ConfigError](err)
			if !ok || ce.Field != tc.field {
				t.Errorf("Instance = %v; want a *shardflow.ConfigError for %s", err, tc.field)
			}
		})
	}
}

func TestANilInstanceLoggerLogsToThePipelinesLoggerElseSlogDefault(t *testing.T) {
	const taken = "memory.store: lease taken"
	syncOne := func(t *testing.T, in *memory.Instance) {
		t.Helper()
		if held, err := in.SyncLeases(t.Context(), "st", []string{"a"}); err != nil || len(held) != 1 {
			t.Fatalf("SyncLeases = %v, %v", held, err)
		}
	}
	t.Run("in a pipeline, the pipeline's logger", func(t *testing.T) {
		in, err := memory.New().Instance("a")
		if err != nil {
			t.Fatal(err)
		}
		pipeline := logtest.NewCapture()
		in.UsePipelineLogger(slog.New(pipeline))
		syncOne(t, in)
		if !pipeline.Has(taken) {
			t.Errorf("the pipeline's logger got %q; want %q", pipeline.Messages(), taken)
		}
	})
	t.Run("a logger of its own is kept", func(t *testing.T) {
		own, pipeline := logtest.NewCapture(), logtest.NewCapture()
		in, err := memory.New().Instance("a", func(o *memory.InstanceOptions) { o.Logger = slog.New(own) })
		if err != nil {
			t.Fatal(err)
		}
		in.UsePipelineLogger(slog.New(pipeline))
		syncOne(t, in)
		if !own.Has(taken) || len(pipeline.Messages()) != 0 {
			t.Errorf("own logger got %q, pipeline's %q; want everything in its own", own.Messages(), pipeline.Messages())
		}
	})
	t.Run("outside a pipeline, slog.Default()", func(t *testing.T) {
		def := logtest.NewCapture()
		old := slog.Default()
		slog.SetDefault(slog.New(def))
		t.Cleanup(func() { slog.SetDefault(old) })
		in, err := memory.New().Instance("a")
		if err != nil {
			t.Fatal(err)
		}
		syncOne(t, in)
		if !def.Has(taken) {
			t.Errorf("slog.Default() got %q; want %q", def.Messages(), taken)
		}
	})
}

func TestInstancesOfTwoStoresDoNotShareLeases(t *testing.T) {
	a, err := memory.New().Instance("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := memory.New().Instance("b")
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []*memory.Instance{a, b} {
		if held, err := in.SyncLeases(t.Context(), "st", []string{"s0"}); err != nil || len(held) != 1 {
			t.Errorf("%s.SyncLeases = %v, %v; want the shard: the stores are apart", in.Owner(), held, err)
		}
	}
}
