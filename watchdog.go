package shardflow

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow/internal/telemetry"
)

// clockTick is the resolution of the run clock that stamps each record as
// it is emitted (the checkpoint lag) and paces the lanes' metric publishes:
// reading a shared clock costs a record less than reading the time.
const clockTick = 10 * time.Millisecond

// ackPublishEvery is how often the monitor publishes the sink's
// acknowledgements of lanes whose goroutine sleeps.
const ackPublishEvery = time.Second

// laneWatch is what the watchdog and Status see of a lane at one moment.
type laneWatch struct {
	stream, shard string
	attrs         attribute.Set
	head, tail    uint64
	oldest        Position
	readAt        int64 // run clock when the oldest unfinished record was emitted; 0: none
	lastRead      int64 // run clock of the source's last Heartbeat; 0: never
	busySince     int64 // run clock when the lane's goroutine took the batch it is on; 0: idle
	taken         uint64
	closed        bool // the source will emit no more records into the lane
}

func (w laneWatch) lag(now int64) time.Duration {
	if w.readAt == 0 || w.head == w.tail {
		return 0
	}
	return time.Duration(max(now-w.readAt, 0))
}

// watch returns the lane's state for the watchdog.
func (l *Lane[T]) watch(int64) laneWatch {
	w := laneWatch{stream: l.stream, shard: l.shard, attrs: l.env.shardAttrs, lastRead: l.lastRead.Load()}
	w.head, w.tail, w.oldest, w.readAt = l.trk.oldest()
	l.qmu.Lock()
	w.busySince, w.taken, w.closed = l.busySince, l.taken, l.closed
	l.qmu.Unlock()
	return w
}

// stallState is the watchdog's memory of one lane. Only the monitor
// goroutine touches it, except report, which Status reads under r.mu.
type stallState struct {
	head        uint64
	movedAt     int64 // run clock when the watchdog saw head move, or nothing in flight
	headMovedAt int64 // run clock when the watchdog saw head move
	report      *StallReport
}

// monitor runs the run clock, publishes the sink's acknowledgements of
// sleeping lanes, and runs the stall watchdog, until ctx ends.
func (r *run) monitor(ctx context.Context) {
	t := time.NewTicker(clockTick)
	defer t.Stop()
	scanEvery := time.Duration(-1)
	if r.opts.StallTimeout > 0 {
		scanEvery = max(r.opts.StallTimeout/4, clockTick)
	}
	var lastScan, lastAcks int64
	if r.opts.OnStall != nil {
		r.stallReports = make(chan StallReport, stallQueue)
		delivered := make(chan struct{})
		go func() {
			defer close(delivered)
			r.deliverStalls(r.stallReports)
		}()
		defer func() {
			close(r.stallReports)
			<-delivered
		}()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := r.now()
		r.clock.Store(now)
		if time.Duration(now-lastAcks) >= ackPublishEvery {
			lastAcks = now
			for _, l := range r.openLanes() {
				l.publishAcks()
			}
		}
		if scanEvery > 0 && time.Duration(now-lastScan) >= scanEvery {
			lastScan = now
			r.scan(now)
		}
	}
}

// scan looks at every open lane for a stall: records in flight while the
// oldest of them has not finished for StallTimeout, or a source that made
// no successful read for StallTimeout. A stall is reported once when it is
// found and once when the shard moves again.
func (r *run) scan(now int64) {
	timeout := int64(r.opts.StallTimeout)
	r.mu.Lock()
	draining := r.closing // the source returned: it reads no more
	r.mu.Unlock()
	lanes := r.openLanes()
	var stacks stackDump
	seen := make(map[laneHandle]bool, len(lanes))
	for _, l := range lanes {
		seen[l] = true
		w := l.watch(now)
		r.mu.Lock()
		ss := r.stalls[l]
		if ss == nil {
			ss = &stallState{head: w.head, movedAt: now, headMovedAt: now}
			r.stalls[l] = ss
		}
		r.mu.Unlock()
		if w.head != ss.head {
			ss.headMovedAt = now
		}
		if w.head != ss.head || w.head == w.tail {
			ss.head, ss.movedAt = w.head, now
		}
		// A source that made no read for a while may only wait for the
		// pipeline (Emit blocks at MaxInFlight while it works through a
		// backlog): it is stalled only when the shard does not move either.
		sourceIdle := w.head == w.tail || now-ss.headMovedAt >= timeout
		var rep *StallReport
		switch {
		case w.head < w.tail && now-max(ss.movedAt, w.readAt) >= timeout:
			rep = r.attribute(l, w, now, &stacks)
			rep.For = time.Duration(now - max(ss.movedAt, w.readAt))
		case w.lastRead != 0 && !w.closed && !draining && sourceIdle && now-w.lastRead >= timeout:
			rep = &StallReport{Stage: "source", Detail: "the source made no successful read",
				For: time.Duration(now - w.lastRead)}
		}
		if rep != nil {
			rep.Stream, rep.ShardID, rep.InFlight = w.stream, w.shard, int(w.tail-w.head)
			if rep.Stage != "source" {
				rep.Position = w.oldest
			}
		}
		r.mu.Lock()
		prev := ss.report
		ss.report = rep
		r.mu.Unlock()
		switch {
		case rep != nil && prev == nil:
			r.metrics.stalls.Add(context.Background(), 1, withStage(w.attrs, rep.Stage))
			r.log.Warn("shard stalled", "stream", rep.Stream, "shard_id", rep.ShardID, "stage", rep.Stage,
				"for", rep.For.Round(time.Second), "in_flight", rep.InFlight,
				"sequence_number", rep.Position.SequenceNumber, "detail", rep.Detail)
			r.notifyStall(*rep)
		case rep == nil && prev != nil:
			moved := *prev
			moved.Recovered = true
			r.log.Info("shard moving again", "stream", moved.Stream, "shard_id", moved.ShardID, "stage", moved.Stage)
			r.notifyStall(moved)
		}
	}
	var gone []StallReport
	r.mu.Lock()
	for l, ss := range r.stalls {
		if !seen[l] {
			if ss.report != nil {
				gone = append(gone, *ss.report)
			}
			delete(r.stalls, l)
		}
	}
	r.mu.Unlock()
	for _, rep := range gone {
		// The shard's lane closed (handed over, lease lost, ended) while
		// stalled: the report ends, so that an alert opened by OnStall
		// resolves.
		rep.Recovered = true
		rep.Detail = "the shard is no longer read here"
		r.log.Info("stalled shard no longer read here", "stream", rep.Stream, "shard_id", rep.ShardID, "stage", rep.Stage)
		r.notifyStall(rep)
	}
}

func withStage(shard attribute.Set, stage string) metric.MeasurementOption {
	kvs := append(shard.ToSlice(), telemetry.KeyStage.String(stage))
	return metric.WithAttributeSet(attribute.NewSet(kvs...))
}

// notifyStall hands a report to OnStall on a goroutine of its own, in
// order: a slow OnStall must not hold the monitor, which drives the run
// clock. Reports beyond stallQueue waiting are dropped, and logged.
func (r *run) notifyStall(rep StallReport) {
	if r.opts.OnStall == nil {
		return
	}
	select {
	case r.stallReports <- rep:
	default:
		r.log.Warn("OnStall is slow: a stall report was not delivered", "stream", rep.Stream, "shard_id", rep.ShardID,
			"recovered", rep.Recovered)
	}
}

// stallQueue is how many stall reports may wait for a slow OnStall.
const stallQueue = 256

// deliverStalls calls OnStall with each report, until reports is closed.
func (r *run) deliverStalls(reports <-chan StallReport) {
	for rep := range reports {
		r.opts.OnStall(rep)
	}
}

// stallOf returns the current stall report of a lane, or nil.
func (r *run) stallOf(l laneHandle) *StallReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ss := r.stalls[l]; ss != nil && ss.report != nil {
		rep := *ss.report
		return &rep
	}
	return nil
}

// attribute finds where the oldest unfinished record of a stalled lane is
// held: in a handler the lane's goroutine (or a key worker's, with ByKey) is
// blocked in, in a Batch stage, waiting in the lane's queue (or a key
// worker's), or in the sink, not acknowledged.
func (r *run) attribute(l laneHandle, w laneWatch, now int64, stacks *stackDump) *StallReport {
	stages := l.stageNames()
	if stage, detail, ok := l.heldByKeyWorker(w.head, stacks); ok {
		// A key worker is on the record, or has it queued.
		return &StallReport{Stage: stage, Detail: detail}
	}
	if w.busySince != 0 && time.Duration(now-w.busySince) >= r.opts.StallTimeout/2 {
		// The lane's goroutine has been on one batch of records since
		// before the stall: it is blocked in a stage's call.
		if stage, detail, ok := l.blockedIn(stacks); ok {
			return &StallReport{Stage: stage, Detail: detail}
		}
	}
	if w.head >= w.taken {
		return &StallReport{Stage: "queue", Detail: "the record waits for the shard's goroutine"}
	}
	if name, ok := l.heldInBatch(w.head); ok {
		return &StallReport{Stage: name, Detail: "the record is held in the batch"}
	}
	if stage, detail, ok := l.keyWorkerBlocked(now-int64(r.opts.StallTimeout/2), stacks); ok {
		// A key worker has been on values since before the stall: a batch
		// its linger emitted, say, holding the record.
		return &StallReport{Stage: stage, Detail: detail}
	}
	sink := "sink"
	if len(stages) > 0 {
		sink = stages[len(stages)-1]
	}
	return &StallReport{Stage: sink, Detail: "the sink took the record and has not acknowledged it"}
}

// goroutineID returns the id of the calling goroutine, from its stack
// header "goroutine N [...]:". Called once per lane.
func goroutineID() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		id, _ := strconv.ParseUint(string(b[:i]), 10, 64)
		return id
	}
	return 0
}

// stackDump is every goroutine's stack, taken once per scan, when the
// first stalled lane needs it.
type stackDump struct{ buf []byte }

func (d *stackDump) get() []byte {
	if d.buf != nil {
		return d.buf
	}
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			d.buf = buf[:n]
			return d.buf
		}
		buf = make([]byte, 2*len(buf))
	}
}

// nodeFrame tells whether a stack frame's function is a stage node's
// method: each node on the lane's stack is one stage deeper.
func nodeFrame(fn string) bool {
	const pkg = "github.com/shardflow/shardflow.(*"
	if !strings.HasPrefix(fn, pkg) {
		return false
	}
	rest := fn[len(pkg):]
	for _, k := range []string{"mapNode[", "filterNode[", "flatMapNode[", "tapNode[", "sinkNode[", "batchNode[", "keyNode["} {
		if strings.HasPrefix(rest, k) {
			return strings.Contains(rest, ").push") || strings.Contains(rest, ").tick") || strings.Contains(rest, ").flush")
		}
	}
	return false
}

// blockedStage reads the stack of goroutine id out of all goroutines'
// stacks (only when a stall is found, so the cost does not matter) and
// returns the depth of the stage node it is in (1: the first stage), and
// the innermost function outside the runtime and this package, with its
// wait state: what the handler is blocked on.
func blockedStage(stacks *stackDump, id uint64) (depth int, where string, ok bool) {
	buf := stacks.get()
	header := []byte("goroutine " + strconv.FormatUint(id, 10) + " [")
	start := bytes.Index(buf, header)
	if start < 0 {
		return 0, "", false
	}
	g := buf[start:]
	if end := bytes.Index(g, []byte("\n\n")); end >= 0 {
		g = g[:end]
	}
	lines := strings.Split(string(g), "\n")
	state := ""
	if i, j := strings.IndexByte(lines[0], '['), strings.LastIndexByte(lines[0], ']'); i >= 0 && j > i {
		state = lines[0][i+1 : j]
	}
	// Frames are pairs of lines: "function(args)" then "\tfile:line +pc".
	for i := 1; i+1 < len(lines); i += 2 {
		fn := lines[i]
		if p := strings.LastIndexByte(fn, '('); p > 0 {
			fn = fn[:p]
		}
		if nodeFrame(fn) {
			depth++
			continue
		}
		if where == "" && depth == 0 && !strings.HasPrefix(fn, "runtime.") && !strings.HasPrefix(fn, "internal/") &&
			!strings.HasPrefix(fn, "sync.") && !strings.HasPrefix(fn, "github.com/shardflow/shardflow.") {
			file := strings.TrimSpace(lines[i+1])
			if p := strings.LastIndexByte(file, ' '); p > 0 {
				file = file[:p]
			}
			where = fn + " (" + file + ")"
		}
	}
	if depth == 0 {
		return 0, "", false
	}
	if where == "" {
		where = "a stage"
	}
	return depth, fmt.Sprintf("blocked in %s [%s]", where, state), true
}

// status is Status of a run in progress.
func (r *run) status() Status {
	r.mu.Lock()
	st := Status{Running: !r.finished, Draining: r.closing || !r.drainEnd.IsZero()}
	r.mu.Unlock()
	if !st.Running {
		return Status{}
	}
	now := r.now()
	for _, l := range r.openLanes() {
		w := l.watch(now)
		_, _, last, _ := l.progress()
		st.Shards = append(st.Shards, ShardStatus{Stream: w.stream, ShardID: w.shard, InFlight: int(w.tail - w.head),
			CheckpointLag: w.lag(now), Checkpoint: last, Stall: r.stallOf(l)})
	}
	return st
}
