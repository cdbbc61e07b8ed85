package shardflow_test

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/shardflowtest"
)

const stallTimeout = time.Minute

// stallLog collects the watchdog's reports with the (fake) time of each.
type stallLog struct {
	mu      sync.Mutex
	reports []shardflow.StallReport
	at      []time.Time
	ch      chan shardflow.StallReport
}

func newStallLog() *stallLog { return &stallLog{ch: make(chan shardflow.StallReport, 16)} }

func (s *stallLog) on(r shardflow.StallReport) {
	s.mu.Lock()
	s.reports = append(s.reports, r)
	s.at = append(s.at, time.Now())
	s.mu.Unlock()
	s.ch <- r
}

func (s *stallLog) all() []shardflow.StallReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]shardflow.StallReport(nil), s.reports...)
}

func (s *stallLog) options(o *shardflow.Options) {
	o.StallTimeout = stallTimeout
	o.OnStall = s.on
}

// waitStall waits for the first report and checks it came within 2 ×
// StallTimeout of since.
func waitStall(t *testing.T, s *stallLog, since time.Time) shardflow.StallReport {
	t.Helper()
	select {
	case r := <-s.ch:
		if d := time.Since(since); d > 2*stallTimeout {
			t.Errorf("stall reported %v after it began; want within %v", d, 2*stallTimeout)
		}
		if r.Recovered {
			t.Fatalf("first report is a recovery: %+v", r)
		}
		return r
	case <-time.After(10 * stallTimeout):
		t.Fatalf("no stall reported within %v", 10*stallTimeout)
	}
	return shardflow.StallReport{}
}

// blockOnFifth is a handler that blocks on the fifth record until release
// is closed.
type blockOnFifth struct {
	release chan struct{}
	blocked chan time.Time
}

func (b *blockOnFifth) decode(ctx context.Context, v int) (int, error) {
	if v == 5 {
		b.blocked <- time.Now()
		select {
		case <-b.release:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return v, nil
}

func TestWatchdogReportsABlockedHandlerAndItsStage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := newStallLog()
		b := &blockOnFifth{release: make(chan struct{}), blocked: make(chan time.Time, 1)}
		src := shardflowtest.NewSource[int]("orders", func(o *shardflowtest.SourceOptions) { o.Follow = true }).
			AddShard("shard-1", ints(9)...)
		sink := shardflowtest.NewSink[int]()
		pl := shardflow.Source(src, log.options, quiet).
			Map(b.decode, shardflow.WithName("decode")).Sink(sink)
		ctx, cancel := context.WithCancel(t.Context())
		errc := runAsync(ctx, pl)

		since := <-b.blocked
		r := waitStall(t, log, since)
		if r.Stage != "decode" || r.ShardID != "shard-1" || r.Stream != "orders" || r.Position.SequenceNumber != "5" {
			t.Errorf("report = %+v; want stage decode, orders/shard-1 at sequence number 5", r)
		}
		if !strings.Contains(r.Detail, "blockOnFifth") || !strings.Contains(r.Detail, "decode") {
			t.Errorf("detail %q does not name the blocked handler", r.Detail)
		}
		if r.InFlight != 5 || r.For < stallTimeout {
			t.Errorf("in flight %d for %v; want 5 for at least %v", r.InFlight, r.For, stallTimeout)
		}
		st := pl.Status()
		if len(st.Shards) != 1 || st.Shards[0].Stall == nil || st.Shards[0].CheckpointLag < stallTimeout {
			t.Errorf("status = %+v; want the stalled shard with its lag", st)
		}
		if err := pl.Ready(); err == nil || !strings.Contains(err.Error(), "shard-1") || !strings.Contains(err.Error(), "decode") {
			t.Errorf("Ready while stalled = %v; want the stalled shard and stage", err)
		}

		close(b.release)
		select {
		case r := <-log.ch:
			if !r.Recovered || r.Stage != "decode" {
				t.Errorf("after the release: %+v; want decode recovered", r)
			}
		case <-time.After(10 * stallTimeout):
			t.Fatal("no recovery reported")
		}
		if err := sink.WaitFor(ctx, 9); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the last acknowledgement follows the value into the sink
		if err := pl.Ready(); err != nil {
			t.Errorf("Ready once the shard moves = %v; want nil", err)
		}
		if st := pl.Status(); !st.Running || st.Draining || len(st.Shards) != 1 || st.Shards[0].Stall != nil ||
			st.Shards[0].InFlight != 0 || st.Shards[0].Checkpoint.SequenceNumber != "9" {
			t.Errorf("status once every record is done = %+v; want running, shard-1 at 9, nothing in flight, no stall", st)
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("Run: %v", err)
		}
		if st := pl.Status(); st.Running || len(st.Shards) != 0 {
			t.Errorf("status after Run = %+v; want not running, no shards", st)
		}
	})
}

func TestWatchdogReportsASinkThatNeverAcknowledges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := newStallLog()
		src := shardflowtest.NewSource[int]("orders", func(o *shardflowtest.SourceOptions) { o.Follow = true }).
			AddShard("shard-1", ints(3)...)
		sink := &holdSink[int]{}
		pl := shardflow.Source(src, log.options, quiet, func(o *shardflow.Options) { o.DrainTimeout = time.Second }).
			Sink(sink, shardflow.WithName("archive"))
		ctx, cancel := context.WithCancel(t.Context())
		errc := runAsync(ctx, pl)
		synctest.Wait()
		if sink.len() != 3 {
			t.Fatalf("the sink has %d values; want 3", sink.len())
		}
		r := waitStall(t, log, time.Now())
		if r.Stage != "archive" || r.Position.SequenceNumber != "1" || r.InFlight != 3 ||
			!strings.Contains(r.Detail, "not acknowledged") {
			t.Errorf("report = %+v; want stage archive, sequence number 1, 3 in flight, not acknowledged", r)
		}
		cancel()
		<-errc // the drain times out: the sink never acknowledges
	})
}

// hangingSource reads one shard: its reader succeeds twice, one record
// each, then hangs (no successful read) until the context ends.
type hangingSource struct{ hung chan time.Time }

func (s *hangingSource) Run(ctx context.Context, shards *shardflow.Shards[int]) error {
	lane, err := shards.Open("orders", "shard-1", nil)
	if err != nil {
		return err
	}
	for i := 1; i <= 2; i++ {
		lane.Heartbeat()
		if err := lane.Emit(ctx, shardflow.Position{SequenceNumber: strconv.Itoa(i)}, i); err != nil {
			return err
		}
		time.Sleep(time.Second)
	}
	s.hung <- time.Now()
	<-ctx.Done() // the read call hangs
	return nil
}

func TestWatchdogReportsASourceThatMakesNoSuccessfulRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := newStallLog()
		src := &hangingSource{hung: make(chan time.Time, 1)}
		pl := shardflow.Source[int](src, log.options, quiet).Sink(shardflowtest.NewSink[int]())
		ctx, cancel := context.WithCancel(t.Context())
		errc := runAsync(ctx, pl)
		since := <-src.hung
		r := waitStall(t, log, since.Add(-time.Second)) // the last read was a second before
		if r.Stage != "source" || r.ShardID != "shard-1" || r.InFlight != 0 {
			t.Errorf("report = %+v; want stage source, nothing in flight", r)
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("Run: %v", err)
		}
	})
}

// trickleSource reads one record every 30s (each read a success), and its
// handler takes 40s per record: slow, but never stalled for a minute.
type trickleSource struct{ n int }

func (s *trickleSource) Run(ctx context.Context, shards *shardflow.Shards[int]) error {
	lane, err := shards.Open("orders", "shard-1", nil)
	if err != nil {
		return err
	}
	for i := 1; i <= s.n; i++ {
		lane.Heartbeat()
		if err := lane.Emit(ctx, shardflow.Position{SequenceNumber: strconv.Itoa(i)}, i); err != nil {
			return err
		}
		select {
		case <-time.After(30 * time.Second):
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

func TestWatchdogDoesNotReportAHealthySlowShard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := newStallLog()
		slow := func(_ context.Context, v int) (int, error) {
			time.Sleep(40 * time.Second)
			return v, nil
		}
		sink := shardflowtest.NewSink[int]()
		pl := shardflow.Source[int](&trickleSource{n: 30}, log.options, quiet,
			func(o *shardflow.Options) { o.DrainTimeout = time.Hour }). // the handler is behind when the source ends
			Map(slow).Sink(sink)
		if err := pl.Run(t.Context()); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if len(sink.Items()) != 30 {
			t.Fatalf("the sink got %d values; want 30", len(sink.Items()))
		}
		if r := log.all(); len(r) != 0 {
			t.Errorf("a slow but moving shard was reported: %+v", r)
		}
	})
}

// quiet sends the pipeline's log lines nowhere.
func quiet(o *shardflow.Options) { o.Logger = slog.New(slog.DiscardHandler) }

// readySource is a source that follows (reads nothing, waits) and reports
// readiness as told.
type readySource struct {
	shardflowtest.Source[int]
	err error
}

func (s *readySource) Ready() error { return s.err }

func TestReadyAsksTheSourceAndFollowsTheRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &readySource{Source: *shardflowtest.NewSource[int]("s", func(o *shardflowtest.SourceOptions) { o.Follow = true })}
		pl := shardflow.Source[int](src, quiet).Sink(shardflowtest.NewSink[int]())
		if err := pl.Ready(); err == nil || !strings.Contains(err.Error(), "not running") {
			t.Errorf("Ready before Run = %v; want not running", err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		errc := runAsync(ctx, pl)
		synctest.Wait()
		if err := pl.Ready(); err != nil {
			t.Errorf("Ready while running = %v; want nil", err)
		}
		src.err = errors.New("lease table unreachable")
		if err := pl.Ready(); err == nil || !strings.Contains(err.Error(), "lease table unreachable") {
			t.Errorf("Ready with the source not ready = %v; want the source's reason", err)
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if err := pl.Ready(); err == nil {
			t.Error("Ready after Run = nil; want not running")
		}
	})
}

// backlogSource reads a backlog in one successful call, as a Kinesis reader
// does with a large Limit, then emits it: Emit blocks at MaxInFlight while
// the pipeline works through it, so no read (and no heartbeat) comes for
// longer than StallTimeout although the shard keeps moving.
type backlogSource struct{ n int }

func (s *backlogSource) Run(ctx context.Context, shards *shardflow.Shards[int]) error {
	lane, err := shards.Open("orders", "shard-1", nil)
	if err != nil {
		return err
	}
	lane.Heartbeat()
	for i := 1; i <= s.n; i++ {
		if err := lane.Emit(ctx, shardflow.Position{SequenceNumber: strconv.Itoa(i)}, i); err != nil {
			return err
		}
	}
	lane.Heartbeat()
	<-ctx.Done()
	return nil
}

func TestWatchdogDoesNotReportASourceWaitingForAPipelineThatMoves(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := newStallLog()
		slow := func(_ context.Context, v int) (int, error) {
			time.Sleep(time.Second)
			return v, nil
		}
		sink := shardflowtest.NewSink[int]()
		pl := shardflow.Source[int](&backlogSource{n: 300}, log.options, quiet,
			func(o *shardflow.Options) { o.MaxInFlight = 10 }).Map(slow).Sink(sink)
		ctx, cancel := context.WithCancel(t.Context())
		errc := runAsync(ctx, pl)
		if err := sink.WaitFor(ctx, 300); err != nil { // five minutes of work, a record a second
			t.Fatal(err)
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("Run: %v", err)
		}
		if r := log.all(); len(r) != 0 {
			t.Errorf("a shard working through its backlog was reported: %+v", r)
		}
	})
}
