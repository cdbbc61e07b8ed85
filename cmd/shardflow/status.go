package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	dynamostore "github.com/shardflow/shardflow/checkpoint/dynamodb"
	"github.com/shardflow/shardflow/internal/awserr"
	"github.com/shardflow/shardflow/internal/retry"
	"golang.org/x/sync/errgroup"
)

const statusDoc = `Shows where the relays sharing --table are in --stream: for each shard, whether it is
open or closed, its lease owner, counter and expiry, its checkpoint, and its lag: how far
behind the newest record of the shard the checkpoint is, as Kinesis reports it
(MillisBehindLatest of one GetRecords of at most one record, read just after the
checkpoint; from the oldest record when there is no checkpoint; none for a shard read to
its end). A closed shard that has children and is not read to its end is an unfinished
parent: its children are not read until it is (the table marks it closed*). It only
reads: it never writes to the table or the stream.

Below the shards, INSTANCE lists the relays of the table's heartbeat item (each writes its
own entry every third of the lease duration): how long ago its last heartbeat was, and,
as of that heartbeat, how many shards of --stream it read and their bytes per second. A
relay whose heartbeat is older than the lease duration is dead (marked so); a live relay removes its
entry after three lease durations.

EXPIRES is when the lease runs out unless its owner proves itself alive again: the owner's
last heartbeat (its entry in the table's "#instances" item, on the owner's clock; for an
owner with no entry there, such as an older relay, the item's lease_renewed_at) plus
--lease-duration, from the time of the run: "in 7s", "expired 3m ago"; "-" for a free
lease, "?" for an item written by a relay too old to record the time. It is approximate:
the relays never read it. Each decides on its own clock: another relay takes the leases of
an owner once it has seen the owner's heartbeat unchanged for two thirds of the lease
duration (it sees each heartbeat up to a third late), which is before EXPIRES or up to a
sixth of the lease duration after it; and EXPIRES is off by as much as the owner's clock is.
A live owner writes its heartbeat every third of the lease duration, so a healthy lease
shows "in" two thirds to all of it. A lease still owned and long expired has an owner that
stopped (it died, or is cut off from the table), and no other relay took it over: none is
running, or the shard needs no more reading. --lease-duration must match the relays' lease
duration (the library's default unless they set another).

The table abbreviates sequence numbers to their last 12 digits; --json prints one JSON
document with every field in full:

  stream, table          the names given
  at                     when the status was taken (RFC 3339)
  shards[]               every shard ListShards returns, open and closed:
    shard_id, state        "open" or "closed"
    parent_shard_id, adjacent_parent_shard_id, child_shard_ids
    lease                  null when the table has no item for the shard, else
      owner, counter         the lease owner ("" when free) and counter, which
      wanted_by              changes when the lease changes hands; the instance that
                             asked for it
      renewed_at             the owner's time of its last heartbeat, else of its take
                             (RFC 3339; omitted for a free lease, and when unknown)
      expires_at             renewed_at plus --lease-duration (omitted with it)
    checkpoint             null when none was saved, else
      sequence_number, sub_sequence_number, partial (a KPL aggregate read in part),
      shard_end (the shard was read to its end)
    lag                    null for a shard read to its end, else
      millis_behind_latest   Kinesis' figure; null when the read failed
      iterator               AFTER_SEQUENCE_NUMBER, AT_SEQUENCE_NUMBER (a partial
                             checkpoint) or TRIM_HORIZON (no checkpoint)
      error                  why the read failed ("" when it did not)
    unfinished_parent      closed, with children, and not read to its end
  unfinished_parents     the shard ids of the unfinished parents
  instances[]            the relays in the table's heartbeat item, as of their last
                         heartbeat (dead ones stay listed until a live one removes them):
    owner                  the relay's owner id
    renewed_at             its time of its last heartbeat (RFC 3339)
    held, bytes_per_second the shards of --stream it reads and their load
    dead                   its last heartbeat is older than --lease-duration ("(dead)"
                           in the table)`

// statusReport is `shardflow status --json`; statusDoc documents it.
type statusReport struct {
	Stream            string           `json:"stream"`
	Table             string           `json:"table"`
	At                time.Time        `json:"at"`
	Shards            []statusShard    `json:"shards"`
	UnfinishedParents []string         `json:"unfinished_parents"`
	Instances         []statusInstance `json:"instances"`
}

// statusInstance is one entry of the table's heartbeat item.
type statusInstance struct {
	Owner          string    `json:"owner"`
	RenewedAt      time.Time `json:"renewed_at"`
	Held           int       `json:"held"`
	BytesPerSecond int64     `json:"bytes_per_second"`
	// Dead: its last heartbeat is older than --lease-duration (on the
	// relay's clock): the others take, or took, its shards; its entry goes
	// after three lease durations.
	Dead bool `json:"dead"`
}

type statusShard struct {
	ShardID               string            `json:"shard_id"`
	State                 string            `json:"state"`
	ParentShardID         string            `json:"parent_shard_id,omitempty"`
	AdjacentParentShardID string            `json:"adjacent_parent_shard_id,omitempty"`
	ChildShardIDs         []string          `json:"child_shard_ids,omitempty"`
	Lease                 *statusLease      `json:"lease"`
	Checkpoint            *statusCheckpoint `json:"checkpoint"`
	Lag                   *statusLag        `json:"lag"`
	UnfinishedParent      bool              `json:"unfinished_parent"`
}

type statusLease struct {
	Owner    string `json:"owner"`
	Counter  int64  `json:"counter"`
	WantedBy string `json:"wanted_by,omitempty"`
	// RenewedAt and ExpiresAt are nil for a free lease and when the item
	// has no renewal time. ExpiresAt is approximate: see statusDoc.
	RenewedAt *time.Time `json:"renewed_at,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

type statusCheckpoint struct {
	SequenceNumber    string `json:"sequence_number"`
	SubSequenceNumber uint64 `json:"sub_sequence_number"`
	Partial           bool   `json:"partial"`
	ShardEnd          bool   `json:"shard_end"`
}

type statusLag struct {
	MillisBehindLatest *int64                  `json:"millis_behind_latest"`
	Iterator           types.ShardIteratorType `json:"iterator"`
	Error              string                  `json:"error,omitempty"`
}

// statusAPI is the part of the Kinesis API status calls: reads only.
type statusAPI interface {
	ListShards(ctx context.Context, in *kinesis.ListShardsInput, optFns ...func(*kinesis.Options)) (*kinesis.ListShardsOutput, error)
	GetShardIterator(ctx context.Context, in *kinesis.GetShardIteratorInput, optFns ...func(*kinesis.Options)) (*kinesis.GetShardIteratorOutput, error)
	GetRecords(ctx context.Context, in *kinesis.GetRecordsInput, optFns ...func(*kinesis.Options)) (*kinesis.GetRecordsOutput, error)
}

var _ statusAPI = (*kinesis.Client)(nil)

// statusRetry bounds the retries of each of status's calls: it answers now
// or says what failed.
var statusRetry = retry.Policy{InitialInterval: 100 * time.Millisecond, MaxInterval: time.Second, Multiplier: 2, MaxElapsed: 10 * time.Second}

// lagReaders is how many shards' lag is read at a time: GetRecords is
// limited per shard, ListShards and GetShardIterator per stream.
const lagReaders = 8

func cmdStatus(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", "status --stream S --table T [--json] [flags]", statusDoc)
	var a awsFlags
	a.register(fs.FlagSet, true, true)
	stream := fs.String("stream", "", "stream whose shards to show (name)")
	table := fs.String("table", "", "DynamoDB table of checkpoints and leases of the relays reading --stream")
	asJSON := fs.Bool("json", false, "print one JSON document instead of a table (fields: see above)")
	leaseDuration := fs.Duration("lease-duration", dynamostore.DefaultLeaseDuration,
		"the lease duration of the relays sharing --table, for EXPIRES; it must match theirs")
	logger := registerLogLevel(fs, stderr)
	positional, err := fs.parse(args, stdout)
	if err != nil {
		return err
	}
	if err := noArgs(positional); err != nil {
		return err
	}
	if *table == "" || *stream == "" {
		return usagef("--table and --stream are required")
	}
	if *leaseDuration <= 0 {
		return usagef("--lease-duration %v: want a positive duration, the relays' lease duration", *leaseDuration)
	}
	log := logger()
	a.health.log = log
	kc, store, err := openShardTable(ctx, &a, *table, log)
	if err != nil {
		return err
	}
	rep, err := readStatus(ctx, kc, store, *stream, *leaseDuration, log)
	if err != nil {
		return err
	}
	rep.Table = *table
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return printStatus(stdout, rep)
}

// openShardTable returns the clients of the commands that read a table of
// checkpoints and leases next to its stream (checkpoints, status).
func openShardTable(ctx context.Context, a *awsFlags, table string, log *slog.Logger) (*kinesis.Client, *dynamostore.Store, error) {
	dc, err := a.dynamodb(ctx)
	if err != nil {
		return nil, nil, err
	}
	store, err := dynamostore.New(dc, table, func(o *dynamostore.Options) { o.Logger = log })
	if err != nil {
		return nil, nil, err
	}
	kc, err := a.kinesis(ctx)
	if err != nil {
		return nil, nil, err
	}
	return kc, store, nil
}

// readShards lists every shard of stream (open and closed) and reads what
// the table holds for them: the one read of the table behind checkpoints
// and status.
func readShards(ctx context.Context, kc statusAPI, store *dynamostore.Store, stream string, log *slog.Logger) ([]types.Shard, map[string]dynamostore.ShardState, error) {
	var shards []types.Shard
	in := &kinesis.ListShardsInput{StreamName: aws.String(stream)}
	for {
		var out *kinesis.ListShardsOutput
		err := callRetrying(ctx, log, "list shards", func() (err error) {
			out, err = kc.ListShards(ctx, in)
			return err
		})
		if err != nil {
			return nil, nil, fmt.Errorf("list shards of %q: %w", stream, err)
		}
		shards = append(shards, out.Shards...)
		if aws.ToString(out.NextToken) == "" {
			break
		}
		in = &kinesis.ListShardsInput{NextToken: out.NextToken}
	}
	ids := make([]string, len(shards))
	for i, sh := range shards {
		ids[i] = aws.ToString(sh.ShardId)
	}
	states, err := store.Shards(ctx, stream, ids)
	if err != nil {
		return nil, nil, err
	}
	byID := make(map[string]dynamostore.ShardState, len(states))
	for _, st := range states {
		byID[st.ShardID] = st
	}
	return shards, byID, nil
}

// callRetrying calls op, and again while it fails with errors worth
// retrying, within statusRetry; each retry is logged at WARN.
func callRetrying(ctx context.Context, log *slog.Logger, what string, op func() error) error {
	call := func() error { return awserr.Mark(what, op()) }
	return retry.Do(ctx, statusRetry, call(), call, func(attempt int, err error, wait time.Duration) {
		log.Warn(what+" failed; retrying", "attempt", attempt, "wait", wait, "err", err)
	})
}

// readStatus reads the status of every shard of stream; leaseDuration is
// the relays', for the leases' expiry.
func readStatus(ctx context.Context, kc statusAPI, store *dynamostore.Store, stream string, leaseDuration time.Duration, log *slog.Logger) (*statusReport, error) {
	shards, states, err := readShards(ctx, kc, store, stream, log)
	if err != nil {
		return nil, err
	}
	rep := &statusReport{Stream: stream, At: time.Now().UTC().Round(time.Millisecond), Shards: make([]statusShard, len(shards)),
		UnfinishedParents: []string{}, Instances: []statusInstance{}}
	var members []dynamostore.Member
	if err := callRetrying(ctx, log, "read the heartbeat item", func() error {
		var err error
		members, err = store.Members(ctx)
		return err
	}); err != nil {
		return nil, err
	}
	for _, m := range members {
		rep.Instances = append(rep.Instances, statusInstance{Owner: m.Owner, RenewedAt: m.RenewedAt.UTC(),
			Held: m.Held[stream], BytesPerSecond: m.BytesPerSecond[stream], Dead: rep.At.Sub(m.RenewedAt) > leaseDuration})
	}
	children := map[string][]string{}
	for _, sh := range shards {
		for _, p := range []*string{sh.ParentShardId, sh.AdjacentParentShardId} {
			if id := aws.ToString(p); id != "" {
				children[id] = append(children[id], aws.ToString(sh.ShardId))
			}
		}
	}
	for i, sh := range shards {
		id := aws.ToString(sh.ShardId)
		s := statusShard{ShardID: id, State: "open", ParentShardID: aws.ToString(sh.ParentShardId),
			AdjacentParentShardID: aws.ToString(sh.AdjacentParentShardId), ChildShardIDs: children[id]}
		if sh.SequenceNumberRange != nil && aws.ToString(sh.SequenceNumberRange.EndingSequenceNumber) != "" {
			s.State = "closed"
		}
		if st, ok := states[id]; ok {
			s.Lease = &statusLease{Owner: st.Owner, Counter: st.Counter, WantedBy: st.WantedBy}
			if st.Owner != "" && !st.RenewedAt.IsZero() {
				renewed, expires := st.RenewedAt.UTC(), st.RenewedAt.Add(leaseDuration).UTC()
				s.Lease.RenewedAt, s.Lease.ExpiresAt = &renewed, &expires
			}
			if st.HasCheckpoint {
				cp := st.Checkpoint
				s.Checkpoint = &statusCheckpoint{SequenceNumber: cp.SequenceNumber, SubSequenceNumber: cp.SubSequenceNumber,
					Partial: cp.Partial, ShardEnd: cp.ShardEnd}
			}
		}
		finished := s.Checkpoint != nil && s.Checkpoint.ShardEnd
		s.UnfinishedParent = s.State == "closed" && len(s.ChildShardIDs) > 0 && !finished
		if s.UnfinishedParent {
			rep.UnfinishedParents = append(rep.UnfinishedParents, id)
		}
		rep.Shards[i] = s
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(lagReaders)
	for i := range rep.Shards {
		s := &rep.Shards[i]
		if s.Checkpoint != nil && s.Checkpoint.ShardEnd {
			continue
		}
		g.Go(func() error {
			s.Lag = readLag(gctx, kc, stream, s, log)
			return nil
		})
	}
	_ = g.Wait() // readLag reports its errors in the shard's row
	return rep, nil
}

// readLag reads one GetRecords of at most one record from the shard's
// checkpoint, for its MillisBehindLatest.
func readLag(ctx context.Context, kc statusAPI, stream string, s *statusShard, log *slog.Logger) *statusLag {
	in := &kinesis.GetShardIteratorInput{StreamName: aws.String(stream), ShardId: aws.String(s.ShardID)}
	switch cp := s.Checkpoint; {
	case cp == nil || cp.SequenceNumber == "":
		in.ShardIteratorType = types.ShardIteratorTypeTrimHorizon
	case cp.Partial:
		// Part of the aggregate at the checkpoint is still to read.
		in.ShardIteratorType, in.StartingSequenceNumber = types.ShardIteratorTypeAtSequenceNumber, aws.String(cp.SequenceNumber)
	default:
		in.ShardIteratorType, in.StartingSequenceNumber = types.ShardIteratorTypeAfterSequenceNumber, aws.String(cp.SequenceNumber)
	}
	lag := &statusLag{Iterator: in.ShardIteratorType}
	log = log.With("shard_id", s.ShardID)
	var it *kinesis.GetShardIteratorOutput
	err := callRetrying(ctx, log, "get shard iterator", func() (err error) {
		it, err = kc.GetShardIterator(ctx, in)
		return err
	})
	if err != nil {
		lag.Error = fmt.Sprintf("get shard iterator: %v", err)
		return lag
	}
	var out *kinesis.GetRecordsOutput
	err = callRetrying(ctx, log, "get records", func() (err error) {
		out, err = kc.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: it.ShardIterator, Limit: aws.Int32(1)})
		return err
	})
	if err != nil {
		lag.Error = fmt.Sprintf("get records: %v", err)
		return lag
	}
	lag.MillisBehindLatest = aws.Int64(aws.ToInt64(out.MillisBehindLatest))
	return lag
}

// printStatus prints rep as an aligned table, with the hand-overs, the
// failed lag reads and the unfinished parents (marked closed*) below it. The
// cells are kept short so that the table fits in about 100 columns with
// real shard ids and owner ids.
func printStatus(w io.Writer, rep *statusReport) error {
	open := 0
	for _, s := range rep.Shards {
		if s.State == "open" {
			open++
		}
	}
	fmt.Fprintf(w, "stream %s, table %s: %d shards (%d open) at %s\n\n", rep.Stream, rep.Table, len(rep.Shards), open, rep.At.Format(time.RFC3339))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tSTATE\tOWNER\tCOUNTER\tEXPIRES\tCHECKPOINT\tLAG")
	var notes []string
	for _, s := range rep.Shards {
		owner, counter := "-", "-"
		if l := s.Lease; l != nil {
			counter = fmt.Sprint(l.Counter)
			if l.Owner != "" {
				owner = l.Owner
			}
			if l.WantedBy != "" {
				notes = append(notes, fmt.Sprintf("%s: %s asked for the lease (a hand-over is under way)", s.ShardID, l.WantedBy))
			}
		}
		state := s.State
		if s.UnfinishedParent {
			state += "*" // explained below the table
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ShardID, state, owner, counter, expiresCell(s.Lease, rep.At),
			checkpointCell(s.Checkpoint), lagCell(s.Lag))
		if s.Lag != nil && s.Lag.Error != "" {
			notes = append(notes, fmt.Sprintf("%s: lag not read: %s", s.ShardID, s.Lag.Error))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, id := range rep.UnfinishedParents {
		i := slices.IndexFunc(rep.Shards, func(s statusShard) bool { return s.ShardID == id })
		notes = append(notes, fmt.Sprintf("* %s is closed and not read to its end: its children %s wait for it",
			id, strings.Join(rep.Shards[i].ChildShardIDs, ", ")))
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
	}
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
	if len(rep.Instances) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE	HEARTBEAT	HELD	BYTES/S")
	for _, in := range rep.Instances {
		dead := ""
		if in.Dead {
			dead = " (dead)"
		}
		fmt.Fprintf(tw, "%s	%s ago%s	%d	%d\n", in.Owner, roughly(rep.At.Sub(in.RenewedAt)), dead, in.Held, in.BytesPerSecond)
	}
	return tw.Flush()
}

// seqDigits is how many trailing digits of a sequence number the table
// shows: the digits that move.
const seqDigits = 12

func checkpointCell(cp *statusCheckpoint) string {
	switch {
	case cp == nil:
		return "-"
	case cp.ShardEnd:
		return "SHARD_END"
	case cp.SequenceNumber == "":
		return "-"
	}
	seq := cp.SequenceNumber
	if len(seq) > seqDigits+1 {
		seq = "…" + seq[len(seq)-seqDigits:]
	}
	if cp.Partial || cp.SubSequenceNumber != 0 {
		seq = fmt.Sprintf("%s/%d", seq, cp.SubSequenceNumber)
	}
	if cp.Partial {
		seq += " (partial)"
	}
	return seq
}

// expiresCell is when the lease expires, from at: "in 7s", "expired 3m ago";
// "-" when it is free (or has no item), "?" when its renewal time is
// unknown.
func expiresCell(l *statusLease, at time.Time) string {
	switch {
	case l == nil || l.Owner == "":
		return "-"
	case l.ExpiresAt == nil:
		return "?"
	}
	d := l.ExpiresAt.Sub(at)
	if d < 0 {
		return "expired " + roughly(-d) + " ago"
	}
	return "in " + roughly(d)
}

// roughly is d (not negative) in its largest unit, rounded to the second
// and then truncated: "7s", "3m", "5h", "2d".
func roughly(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 60*60:
		return fmt.Sprintf("%dm", s/60)
	case s < 24*60*60:
		return fmt.Sprintf("%dh", s/(60*60))
	}
	return fmt.Sprintf("%dd", s/(24*60*60))
}

func lagCell(l *statusLag) string {
	switch {
	case l == nil:
		return "-"
	case l.MillisBehindLatest == nil:
		return "?"
	}
	d := time.Duration(*l.MillisBehindLatest) * time.Millisecond
	if d >= time.Minute {
		d = d.Round(time.Second)
	}
	return d.String()
}
