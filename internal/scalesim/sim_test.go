package scalesim

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint"
	"github.com/shardflow/shardflow/checkpoint/memory"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
	kinesissource "github.com/shardflow/shardflow/source/kinesis"
)

// size is the scale of one run of a scenario.
type size struct {
	shards, instances int
	big               bool // skipped with -short
}

func (z size) String() string { return fmt.Sprintf("%dx%d", z.shards, z.instances) }

// sizes are the runs of every scenario: a small one that always runs, and
// the one the goals are stated for, skipped with -short.
var sizes = []size{{shards: 100, instances: 5}, {shards: 1000, instances: 20, big: true}}

// skipBig skips a big size with -short, and under the race detector, where
// it takes ten times the CPU (minutes) and several GB of memory; the small
// size runs there.
func skipBig(t *testing.T, z size) {
	t.Helper()
	switch {
	case !z.big:
	case testing.Short():
		t.Skipf("%v: a scale run of up to a minute of CPU; run without -short to run it", z)
	case raceEnabled:
		t.Skipf("%v: a scale run takes minutes and GBs under the race detector; run without -race to run it", z)
	}
}

// forSizes runs scenario once per size, each in its own synctest bubble.
func forSizes(t *testing.T, scenario func(t *testing.T, z size)) {
	for _, z := range sizes {
		t.Run(z.String(), func(t *testing.T) {
			skipBig(t, z)
			scenario(t, z)
		})
	}
}

const (
	streamName = "sim"
	// idleInterval is the sources' IdleInterval: each shard at the tip is
	// polled once a second (the default).
	idleInterval = time.Second
	// poll is how often the test looks at the group's state, in virtual
	// time: the resolution of the times it reports.
	poll = 100 * time.Millisecond
	// recordBytes is the data size of every record the producer writes.
	recordBytes = 200
)

// sim is a group of pipeline instances reading one stream of the in-memory
// Kinesis fake, with checkpoints and leases in one memory.Store. Everything
// in it must be made inside the test's synctest bubble.
type sim struct {
	t      *testing.T
	ctx    context.Context
	lease  checkpoint.LeaseOptions // as given to every Instance (zero fields: defaults)
	fake   *kinesisfake.Fake
	store  *memory.Store
	shards []string          // in hash key order
	hashes map[string]string // by shard: an explicit hash key that routes to it
	logs   *logCounter

	mu        sync.Mutex
	nodes     []*node
	written   map[string][]string // by shard: sequence numbers written
	rates     map[string]int      // by shard: records a second the producer writes; nil when it does not run
	byLoad    bool                // the store's Instances balance by load (see balancesByLoad)
	delivered map[string]int      // by sequence number: times delivered
	putFailed int                 // entries PutRecords refused
	// drop, when set, makes deliver forget the records it returns true
	// for: the self-test of the loss count.
	drop func(shardflow.Record) bool

	readMu   sync.Mutex
	lastRead map[string]time.Time     // by shard: last successful read by any instance
	maxGap   map[string]time.Duration // by shard: longest time between two reads
	gapSince time.Time                // when maxGap was cleared
}

// node is one pipeline instance.
type node struct {
	name   string
	gate   *gate
	src    *kinesissource.Source
	cancel context.CancelFunc
	done   chan error
	dead   bool // crashed; guarded by sim.mu

	mu    sync.Mutex
	bytes int64 // data bytes of the records read (GetRecordsEvent.Bytes)
	reads int64 // successful GetRecords calls
}

// newSim creates the stream of shards in a new fake, and an empty store.
func newSim(t *testing.T, shards int, lease checkpoint.LeaseOptions) *sim {
	t.Helper()
	s := &sim{
		t: t, ctx: t.Context(), lease: lease,
		fake:      kinesisfake.New(),
		store:     memory.New(),
		hashes:    map[string]string{},
		logs:      &logCounter{live: map[string]int{}, crashed: map[string]int{}},
		written:   map[string][]string{},
		delivered: map[string]int{},
		lastRead:  map[string]time.Time{},
		maxGap:    map[string]time.Duration{},
	}
	if _, err := s.fake.CreateStream(s.ctx, &kinesis.CreateStreamInput{StreamName: aws.String(streamName), ShardCount: aws.Int32(int32(shards))}); err != nil {
		t.Fatal(err)
	}
	in := &kinesis.ListShardsInput{StreamName: aws.String(streamName)}
	for {
		out, err := s.fake.ListShards(s.ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		for _, sh := range out.Shards {
			id := aws.ToString(sh.ShardId)
			s.shards = append(s.shards, id)
			s.hashes[id] = aws.ToString(sh.HashKeyRange.StartingHashKey)
		}
		if aws.ToString(out.NextToken) == "" {
			break
		}
		in = &kinesis.ListShardsInput{NextToken: out.NextToken}
	}
	if len(s.shards) != shards {
		t.Fatalf("the fake lists %d shards; want %d", len(s.shards), shards)
	}
	return s
}

// start starts n new instances at once.
func (s *sim) start(n int) {
	s.t.Helper()
	for range n {
		s.mu.Lock()
		name := fmt.Sprintf("i%02d", len(s.nodes))
		s.mu.Unlock()
		in, err := s.store.Instance(name, func(o *memory.InstanceOptions) { o.LeaseOptions = s.lease })
		if err != nil {
			s.t.Fatal(err)
		}
		nd := &node{name: name, gate: &gate{in: in}, done: make(chan error, 1)}
		s.mu.Lock()
		s.byLoad = balancesByLoad(in)
		s.mu.Unlock()
		log := slog.New(s.logs.handler(nd.gate))
		nd.src, err = kinesissource.New(s.fake, streamName, func(o *kinesissource.Options) {
			o.Store = nd.gate
			o.InitialPosition = kinesissource.TrimHorizon()
			o.IdleInterval = idleInterval
			o.OnGetRecords = func(ev kinesissource.GetRecordsEvent) { s.onRead(nd, ev) }
		})
		if err != nil {
			s.t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(s.ctx)
		nd.cancel = cancel
		p := shardflow.Source(nd.src, func(o *shardflow.Options) {
			o.Logger = log
			// The watchdog adds a timer per shard; a stall is not what
			// this simulation looks for.
			o.StallTimeout = -1
		}).Sink(shardflow.SinkFunc[shardflow.Record](func(ctx context.Context, r shardflow.Record) error { return s.deliver(nd, r) }))
		go func() { nd.done <- p.Run(ctx) }()
		s.mu.Lock()
		s.nodes = append(s.nodes, nd)
		s.mu.Unlock()
	}
}

// deliver notes a record delivered by an instance. A crashed instance
// delivers nothing: what its pipeline still hands its sink while it stops
// would be lost with the process, and must not hide a record lost.
func (s *sim) deliver(nd *node, r shardflow.Record) error {
	if nd.gate.crashed.Load() {
		return nil
	}
	s.mu.Lock()
	if s.drop != nil && s.drop(r) {
		s.mu.Unlock()
		return nil
	}
	s.delivered[r.SequenceNumber]++
	s.mu.Unlock()
	return nil
}

func (s *sim) onRead(nd *node, ev kinesissource.GetRecordsEvent) {
	if ev.Err != nil || nd.gate.crashed.Load() {
		return
	}
	nd.mu.Lock()
	nd.bytes += int64(ev.Bytes)
	nd.reads++
	nd.mu.Unlock()
	now := time.Now()
	s.readMu.Lock()
	if last, ok := s.lastRead[ev.ShardID]; ok {
		if gap := now.Sub(last); gap > s.maxGap[ev.ShardID] {
			s.maxGap[ev.ShardID] = gap
		}
	}
	s.lastRead[ev.ShardID] = now
	s.readMu.Unlock()
}

// resetGaps starts a new measure of the longest time a shard went unread:
// the gaps that end after now (counted from the read before, even if it came
// before now).
func (s *sim) resetGaps() {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	s.gapSince = time.Now()
	clear(s.maxGap)
}

// longestGap returns the longest time a shard went unread since resetGaps,
// counting a gap still open now, and that shard.
func (s *sim) longestGap() (time.Duration, string) {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	now := time.Now()
	var worst time.Duration
	var which string
	for _, id := range s.shards {
		g := s.maxGap[id]
		if last, ok := s.lastRead[id]; ok {
			g = max(g, now.Sub(last))
		} else {
			g = max(g, now.Sub(s.gapSince))
		}
		if g > worst || which == "" {
			worst, which = g, id
		}
	}
	return worst, which
}

// live returns the instances not crashed.
func (s *sim) live() []*node {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*node
	for _, n := range s.nodes {
		if !n.dead {
			out = append(out, n)
		}
	}
	return out
}

// crash kills the instance: from now on its store refuses every call, and
// its pipeline stops reading. It neither checkpoints nor releases.
func (s *sim) crash(n *node) {
	n.gate.crash()
	n.cancel()
	s.mu.Lock()
	n.dead = true
	s.mu.Unlock()
}

// ownership is who reads what, from the instances' own view: each live
// instance's last SyncLeases answer.
type ownership struct {
	counts   map[string]int     // by live instance: shards held
	loads    map[string]float64 // by live instance: bytes/s written to the shards it holds; nil unless the store balances by load and records flow
	missing  int                // shards no live instance holds
	doubled  int                // shards two or more live instances hold
	unsynced int                // live instances with no successful sync yet
}

func (s *sim) ownership() ownership {
	o := ownership{counts: map[string]int{}}
	s.mu.Lock()
	rates := s.rates
	byLoad := s.byLoad
	s.mu.Unlock()
	if byLoad && rates != nil {
		o.loads = map[string]float64{}
	}
	by := map[string]int{}
	for _, n := range s.live() {
		held, synced := n.gate.holding()
		if !synced {
			o.unsynced++
		}
		o.counts[n.name] = len(held)
		for _, id := range held {
			by[id]++
			if o.loads != nil {
				o.loads[n.name] += float64(rates[id] * recordBytes)
			}
		}
	}
	for _, id := range s.shards {
		switch c := by[id]; {
		case c == 0:
			o.missing++
		case c > 1:
			o.doubled++
		}
	}
	return o
}

// balanced reports whether every shard is held by exactly one live instance
// and every live instance holds within ±1 of the mean; or, when the store
// balances by load and records flow, within ±20% of the mean bytes/s
// written to the shards (a load balancer leaves counts further apart on
// purpose, and keeps from moving leases for small gains).
func (o ownership) balanced(shards int) bool {
	if o.missing > 0 || o.doubled > 0 || o.unsynced > 0 || len(o.counts) == 0 {
		return false
	}
	if o.loads != nil {
		var sum float64
		for _, l := range o.loads {
			sum += l
		}
		mean := sum / float64(len(o.loads))
		ok := true
		for _, l := range o.loads {
			ok = ok && math.Abs(l-mean) <= loadGoal*mean
		}
		if ok {
			return true
		}
	}
	mean := float64(shards) / float64(len(o.counts))
	for _, c := range o.counts {
		if math.Abs(float64(c)-mean) > 1 {
			return false
		}
	}
	return true
}

// criterion says what balanced means for this group: see
// ownership.balanced.
func (s *sim) criterion() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byLoad {
		return "each shard held once; bytes/s ±20% of the mean while records flow, else shards ±1"
	}
	return "each shard held once; shards ±1 of the mean (the store balances by count only)"
}

func (o ownership) String() string {
	cs := slices.Sorted(maps.Values(o.counts))
	lo, hi := 0, 0
	if len(cs) > 0 {
		lo, hi = cs[0], cs[len(cs)-1]
	}
	out := fmt.Sprintf("%d instances hold %d..%d shards", len(cs), lo, hi)
	for _, x := range []struct {
		n    int
		what string
	}{{o.missing, "unheld"}, {o.doubled, "held twice"}, {o.unsynced, "instances not synced yet"}} {
		if x.n > 0 {
			out += fmt.Sprintf(", %d %s", x.n, x.what)
		}
	}
	return out
}

// waitBalanced waits, in virtual time, until the group is balanced (see
// ownership.balanced), at most limit. It returns how long it waited and
// whether the group got balanced.
func (s *sim) waitBalanced(limit time.Duration) (time.Duration, bool) {
	return s.waitFor(limit, func(o ownership) bool { return o.balanced(len(s.shards)) })
}

// waitFor waits, in virtual time, until cond holds of the group's
// ownership, at most limit. It returns how long it waited and whether cond
// held.
func (s *sim) waitFor(limit time.Duration, cond func(ownership) bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond(s.ownership()) {
			return time.Since(start), true
		}
		if time.Since(start) >= limit {
			return time.Since(start), false
		}
		time.Sleep(poll)
	}
}

// checkTable checks that the lease table agrees with the instances: every
// shard's lease is owned by the live instance that reads it.
func (s *sim) checkTable() {
	s.t.Helper()
	owners := s.store.LeaseOwners(streamName)
	bad := 0
	var example string
	for _, n := range s.live() {
		held, _ := n.gate.holding()
		for _, id := range held {
			if owners[id] != n.name {
				bad++
				example = fmt.Sprintf("%s read by %s, leased to %q", id, n.name, owners[id])
			}
		}
	}
	if bad > 0 {
		s.t.Errorf("%d shards read by an instance that does not own their lease in the table, such as %s", bad, example)
	}
}

// callsPerShardMinute measures the table calls of the group over d of
// virtual time: the DynamoDB-equivalent calls per shard per minute, in
// total and by call name.
func (s *sim) callsPerShardMinute(d time.Duration) (float64, map[string]float64) {
	s.store.ResetCalls()
	time.Sleep(d)
	calls := s.store.Calls()
	per := func(n int64) float64 { return float64(n) / float64(len(s.shards)) / d.Minutes() }
	by := map[string]float64{}
	var total int64
	for name, n := range calls {
		by[name] = per(n)
		total += n
	}
	return per(total), by
}

func formatCalls(by map[string]float64) string {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(by)) {
		parts = append(parts, fmt.Sprintf("%s %.2f", name, by[name]))
	}
	return strings.Join(parts, ", ")
}

// produce writes perSecond(i) records a second to the shard s.shards[i],
// every second of virtual time, until the returned stop is called (which
// waits for the producer to end).
func (s *sim) produce(perSecond func(i int) int) (stop func()) {
	ctx, cancel := context.WithCancel(s.ctx)
	done := make(chan struct{})
	data := make([]byte, recordBytes)
	rates := map[string]int{}
	for i, id := range s.shards {
		rates[id] = perSecond(i)
	}
	s.mu.Lock()
	s.rates = rates
	s.mu.Unlock()
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			var entries []types.PutRecordsRequestEntry
			for _, id := range s.shards {
				for range rates[id] {
					entries = append(entries, types.PutRecordsRequestEntry{Data: data, PartitionKey: aws.String("k"), ExplicitHashKey: aws.String(s.hashes[id])})
				}
			}
			for batch := range slices.Chunk(entries, kinesisfake.MaxPutRecordsEntries) {
				out, err := s.fake.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String(streamName), Records: batch})
				if err != nil {
					s.t.Errorf("put records: %v", err)
					return
				}
				s.mu.Lock()
				for _, r := range out.Records {
					if r.ErrorCode != nil {
						s.putFailed++
						continue
					}
					id := aws.ToString(r.ShardId)
					s.written[id] = append(s.written[id], aws.ToString(r.SequenceNumber))
				}
				s.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		cancel()
		<-done
		s.mu.Lock()
		s.rates = nil
		s.mu.Unlock()
	}
}

// lost returns how many records written were never delivered, how many were
// written, and how many deliveries were duplicates.
func (s *sim) lost() (lost, written, dups int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, seqs := range s.written {
		for _, seq := range seqs {
			written++
			if s.delivered[seq] == 0 {
				lost++
			}
		}
	}
	for _, n := range s.delivered {
		dups += n - 1
	}
	return lost, written, dups
}

// waitDelivered waits until every record written was delivered, at most
// limit of virtual time, and returns what lost returns then.
func (s *sim) waitDelivered(limit time.Duration) (lost, written, dups int) {
	start := time.Now()
	for {
		lost, written, dups = s.lost()
		if lost == 0 || time.Since(start) >= limit {
			return lost, written, dups
		}
		time.Sleep(poll)
	}
}

// readBytes returns the bytes each live instance has read so far.
func (s *sim) readBytes() map[string]int64 {
	out := map[string]int64{}
	for _, n := range s.live() {
		n.mu.Lock()
		out[n.name] = n.bytes
		n.mu.Unlock()
	}
	return out
}

// stop cancels every pipeline and waits for all to return. Live instances
// must drain cleanly; crashed ones may fail (their store refuses every
// call).
func (s *sim) stop() {
	s.t.Helper()
	s.mu.Lock()
	nodes := slices.Clone(s.nodes)
	s.mu.Unlock()
	for _, n := range nodes {
		n.cancel()
	}
	for _, n := range nodes {
		err := <-n.done
		s.mu.Lock()
		dead := n.dead
		s.mu.Unlock()
		if err != nil && !dead {
			s.t.Errorf("instance %s: %v", n.name, err)
		}
	}
}

// leaseTimes returns the lease duration and renew interval in effect.
func (s *sim) leaseTimes() (duration, renew time.Duration) {
	duration, renew = s.lease.LeaseDuration, s.lease.RenewInterval
	if duration == 0 {
		duration = 10 * time.Second
	}
	if renew == 0 {
		renew = duration / 3
	}
	return duration, renew
}

// logCounter counts the warnings and errors of the group by message, those
// of running instances apart from those of crashed ones, and drops
// everything: 20 instances logging every lease change would cost more CPU
// than the simulation.
type logCounter struct {
	mu      sync.Mutex
	live    map[string]int
	crashed map[string]int
}

// handler returns a slog handler counting into c for the instance whose
// store is g.
func (c *logCounter) handler(g *gate) slog.Handler { return &nodeLog{c: c, g: g} }

type nodeLog struct {
	c *logCounter
	g *gate
}

func (h *nodeLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *nodeLog) Handle(_ context.Context, r slog.Record) error {
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	if h.g.crashed.Load() {
		h.c.crashed[r.Message]++
	} else {
		h.c.live[r.Message]++
	}
	return nil
}

func (h *nodeLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *nodeLog) WithGroup(string) slog.Handler      { return h }

// logWarnings logs the counts of warnings, by message, of running and of
// crashed instances.
func (s *sim) logWarnings() {
	s.t.Helper()
	s.logs.mu.Lock()
	defer s.logs.mu.Unlock()
	for _, k := range []struct {
		who  string
		msgs map[string]int
	}{{"running instances", s.logs.live}, {"crashed instances (after the crash)", s.logs.crashed}} {
		if len(k.msgs) == 0 {
			if k.who == "running instances" {
				s.t.Logf("warnings logged by %s: none", k.who)
			}
			continue
		}
		var b strings.Builder
		total := 0
		for _, m := range slices.SortedFunc(maps.Keys(k.msgs), func(a, b string) int { return k.msgs[b] - k.msgs[a] }) {
			fmt.Fprintf(&b, "\n  %6d× %s", k.msgs[m], m)
			total += k.msgs[m]
		}
		s.t.Logf("warnings logged by %s: %d%s", k.who, total, b.String())
	}
}
