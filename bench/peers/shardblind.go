package main

import (
	"context"
	"crypto/md5"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"google.golang.org/protobuf/proto"

	"github.com/shardflow/shardflow/bench/peers/kplpb"
)

// shardBlind is the peer: a producer with the design of
// github.com/a8m/kinesis-producer (which the Go module proxy does not serve
// here, so it cannot be pinned), written for this benchmark from that
// design, doing per record and per aggregate the work a8m does:
//
//   - Put appends each record to ONE aggregate, whatever its shard (no shard
//     map, no ListShards, no hash of the key): the key to the key table
//     every time, and a generated protobuf Record message with a pointer to
//     its key index (two allocations), counting bytes the way a8m does (the
//     key, the data and 9 bytes), until the next record would take it past
//     51,200 bytes;
//   - a full aggregate is marshalled with the generated messages
//     (proto.Marshal of an AggregatedRecord, kplpb), its MD5 taken, and the
//     magic and the checksum appended, on the caller's goroutine, then sent
//     on a channel of 500 entries to one loop goroutine, which batches
//     entries into PutRecords requests of at most 500 entries and 5 MiB,
//     flushed also every 5 s;
//   - a pool of 24 goroutines sends the requests; failed entries are sent
//     again after a backoff.
//
// a8m marshals with golang/protobuf v1.3; the model with
// google.golang.org/protobuf v1.36, which is not slower. Like a8m, it
// aggregates records of every shard together, routed by the first record's
// key: a KCL reader drops such an aggregate whole when a member's hash key
// lies outside the shard it lands on.
type shardBlind struct {
	client *kinesis.Client
	stream string

	// The open aggregate: touched by Put only (a8m's Put is not safe for
	// concurrent use either).
	keys   []string
	recs   []*kplpb.Record
	nbytes int

	entries chan types.PutRecordsRequestEntry
	loopEnd chan struct{}
	sem     chan struct{} // the pool of senders
	wg      sync.WaitGroup
	failed  atomic.Int64 // user records given up
}

const (
	blindAggregateBytes = 51200 // a8m's maxAggregationSize
	blindBatchEntries   = 500
	blindBatchBytes     = 5 << 20
	blindConnections    = 24
	blindFlushInterval  = 5 * time.Second
	blindBacklog        = 500
)

var kplMagic = []byte{0xF3, 0x89, 0x9A, 0xC2}

func newShardBlind(client *kinesis.Client, stream string) *shardBlind {
	p := &shardBlind{
		client:  client,
		stream:  stream,
		entries: make(chan types.PutRecordsRequestEntry, blindBacklog),
		loopEnd: make(chan struct{}),
		sem:     make(chan struct{}, blindConnections),
	}
	go p.loop()
	return p
}

// Put adds a record. data is kept, not copied.
func (p *shardBlind) Put(data []byte, partitionKey string) error {
	if l := len(partitionKey); l < 1 || l > 256 {
		return fmt.Errorf("partition key of %d bytes", l)
	}
	n := len(data) + len(partitionKey)
	if n+p.nbytes > blindAggregateBytes {
		if err := p.drain(); err != nil {
			return err
		}
	}
	p.keys = append(p.keys, partitionKey)
	keyIndex := uint64(len(p.keys) - 1)
	p.recs = append(p.recs, &kplpb.Record{Data: data, PartitionKeyIndex: &keyIndex})
	p.nbytes += n + 1 + 8
	return nil
}

// drain marshals the open aggregate and hands it to the loop.
func (p *shardBlind) drain() error {
	if p.nbytes == 0 {
		return nil
	}
	data, err := proto.Marshal(&kplpb.AggregatedRecord{PartitionKeyTable: p.keys, Records: p.recs})
	if err != nil {
		return err
	}
	sum := md5.Sum(data)
	agg := append(slices.Clip(kplMagic), data...)
	agg = append(agg, sum[:]...)
	p.entries <- types.PutRecordsRequestEntry{Data: agg, PartitionKey: aws.String(p.keys[0])}
	p.keys, p.recs, p.nbytes = make([]string, 0), make([]*kplpb.Record, 0), 0
	return nil
}

// loop batches entries into requests for the pool.
func (p *shardBlind) loop() {
	defer close(p.loopEnd)
	tick := time.NewTicker(blindFlushInterval)
	defer tick.Stop()
	var batch []types.PutRecordsRequestEntry
	size := 0
	flush := func() {
		if len(batch) == 0 {
			return
		}
		b := batch
		batch, size = nil, 0
		p.sem <- struct{}{}
		p.wg.Add(1)
		go func() {
			defer func() { <-p.sem; p.wg.Done() }()
			p.send(b)
		}()
	}
	for {
		select {
		case e, ok := <-p.entries:
			if !ok {
				flush()
				return
			}
			n := len(e.Data) + len(*e.PartitionKey)
			if size+n > blindBatchBytes {
				flush()
			}
			batch = append(batch, e)
			size += n
			if len(batch) >= blindBatchEntries {
				flush()
			}
		case <-tick.C:
			flush()
		}
	}
}

// send puts a request, and its failed entries again after a backoff.
func (p *shardBlind) send(batch []types.PutRecordsRequestEntry) {
	wait := 100 * time.Millisecond
	for attempt := 0; len(batch) > 0; attempt++ {
		out, err := p.client.PutRecords(context.Background(), &kinesis.PutRecordsInput{StreamName: aws.String(p.stream), Records: batch})
		if err != nil || attempt == 20 {
			for _, e := range batch {
				p.failed.Add(int64(countMembers(e.Data)))
			}
			return
		}
		var again []types.PutRecordsRequestEntry
		for i, r := range out.Records {
			if r.ErrorCode != nil {
				again = append(again, batch[i])
			}
		}
		batch = again
		if len(batch) > 0 {
			time.Sleep(wait)
			wait = min(2*wait, 5*time.Second)
		}
	}
}

// Stop sends what is open and waits until every request has its answer.
func (p *shardBlind) Stop() {
	_ = p.drain()
	close(p.entries)
	<-p.loopEnd
	p.wg.Wait()
}

// countMembers counts the records of an aggregate (for failures only).
func countMembers(b []byte) int {
	var agg kplpb.AggregatedRecord
	if err := proto.Unmarshal(b[len(kplMagic):len(b)-md5.Size], &agg); err != nil {
		return 0
	}
	return len(agg.Records)
}
