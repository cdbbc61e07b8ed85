package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow/shardflowtest/kinesisfake"
)

// The source's pacing, as kinesissource documents it: GetRecords calls on
// one shard at least 200ms apart, 10,000 records each at most.
const (
	getRecordsGap   = 200 * time.Millisecond
	getRecordsLimit = 10000
)

func benchFakeRelay(ctx context.Context, t *table, c config) error {
	var lib, raw []sample
	var fullest int
	for rep := range c.reps {
		sides := []func() error{
			func() error {
				f, want, most, err := newFakeRelay(ctx, c.fakeRecords)
				if err != nil {
					return err
				}
				fullest = most
				r, err := libRelay(ctx, f, "in", "out", c.fakeRecords)
				if err == nil {
					err = checkRelay("shardflow relay over the fake", r, want, c.fakeRecords)
				}
				lib = append(lib, r.sample)
				return err
			},
			func() error {
				f, want, _, err := newFakeRelay(ctx, c.fakeRecords)
				if err != nil {
					return err
				}
				r, err := rawRelay(ctx, f, "in", "out", c.fakeRecords)
				if err == nil {
					err = checkRelay("raw relay over the fake", r, want, c.fakeRecords)
				}
				raw = append(raw, r.sample)
				return err
			},
		}
		if rep%2 == 1 {
			sides[0], sides[1] = sides[1], sides[0]
		}
		for _, side := range sides {
			if err := side(); err != nil {
				return err
			}
		}
	}
	t.add("relay", lib, raw, recordsPerSec, cpuUsPerRecord, allocsPerRecord)

	calls := (fullest + getRecordsLimit - 1) / getRecordsLimit
	floor := time.Duration(calls-1) * getRecordsGap
	pacing := fmt.Sprintf("the source makes at most 5 GetRecords calls per second per shard (of up to %s records): "+
		"the fullest shard holds %s records, %d calls, so the shardflow relay needs at least %v here",
		grouped(getRecordsLimit), grouped(fullest), calls, floor)
	if floor > 0 {
		pacing += fmt.Sprintf(" and cannot exceed ~%s records/s", grouped(int(float64(c.fakeRecords)/floor.Seconds())))
	}
	t.note("%s; the raw loop does not pace itself (against Kinesis it would be throttled). "+
		"Compare CPU µs/record for the cost of the library's work per record.", pacing)
	return nil
}

// newFakeRelay returns a fake holding stream "in" of 4 shards filled with n
// records of 100 bytes and an empty stream "out" of 4 shards, with the last
// sequence number of each input shard and the record count of the fullest.
func newFakeRelay(ctx context.Context, n int) (*kinesisfake.Fake, map[string]string, int, error) {
	f := kinesisfake.New()
	for _, name := range []string{"in", "out"} {
		if _, err := f.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(4)}); err != nil {
			return nil, nil, 0, fmt.Errorf("fake: create stream %s: %w", name, err)
		}
	}
	data := make([]byte, 100)
	entries := make([]types.PutRecordsRequestEntry, 0, 500)
	for i := range n {
		entries = append(entries, types.PutRecordsRequestEntry{Data: data, PartitionKey: aws.String(strconv.Itoa(i))})
		if len(entries) == cap(entries) || i == n-1 {
			if err := putAll(ctx, f, "in", entries, nil); err != nil {
				return nil, nil, 0, fmt.Errorf("fake: fill: %w", err)
			}
			entries = entries[:0]
		}
	}
	shards, err := f.Shards("in")
	if err != nil {
		return nil, nil, 0, err
	}
	last := map[string]string{}
	most := 0
	for _, shard := range shards {
		recs, err := f.Records("in", shard)
		if err != nil {
			return nil, nil, 0, err
		}
		if len(recs) > 0 {
			last[shard] = aws.ToString(recs[len(recs)-1].SequenceNumber)
		}
		most = max(most, len(recs))
	}
	return f, last, most, nil
}
