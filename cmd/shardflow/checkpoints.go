package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/aws/aws-sdk-go-v2/aws"
)

const checkpointsDoc = `Lists each shard of --stream with its lease owner, lease counter, checkpoint and state,
as kept in a relay's DynamoDB table. With --reset it deletes one shard's checkpoint and
frees its lease instead, so the shard restarts at its source's initial position.`

func cmdCheckpoints(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("checkpoints", "checkpoints --table T --stream S [--reset SHARD_ID] [flags]", checkpointsDoc)
	var a awsFlags
	a.register(fs.FlagSet, true, true)
	table := fs.String("table", "", "DynamoDB table of checkpoints and leases")
	stream := fs.String("stream", "", "stream whose shards to show (name)")
	reset := fs.String("reset", "", "delete this shard's checkpoint (it restarts at its source's initial position) and free its lease")
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
	log := logger()
	a.health.log = log
	kc, store, err := openShardTable(ctx, &a, *table, log)
	if err != nil {
		return err
	}
	if *reset != "" {
		if err := store.ResetCheckpoint(ctx, *stream, *reset); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "reset the checkpoint of %s/%s\n", *stream, *reset)
		return nil
	}
	shards, byID, err := readShards(ctx, kc, store, *stream, log)
	if err != nil {
		return err
	}
	ids := make([]string, len(shards))
	for i, sh := range shards {
		ids[i] = aws.ToString(sh.ShardId)
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SHARD\tOWNER\tCOUNTER\tCHECKPOINT\tSTATE")
	for _, id := range ids {
		st, ok := byID[id]
		if !ok {
			fmt.Fprintf(w, "%s\t-\t-\t-\tnot started\n", id)
			continue
		}
		owner, cp, state := st.Owner, "-", "reading"
		if owner == "" {
			owner, state = "-", "free"
		}
		if st.HasCheckpoint {
			cp = st.Checkpoint.SequenceNumber
			if st.Checkpoint.Partial || st.Checkpoint.SubSequenceNumber != 0 {
				cp = fmt.Sprintf("%s/%d", cp, st.Checkpoint.SubSequenceNumber)
			}
			if cp == "" {
				cp = "-"
			}
		}
		switch {
		case st.HasCheckpoint && st.Checkpoint.ShardEnd:
			state = "SHARD_END"
		case st.WantedBy != "":
			state = "handing over to " + st.WantedBy
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\n", id, owner, st.Counter, cp, state)
	}
	return w.Flush()
}
