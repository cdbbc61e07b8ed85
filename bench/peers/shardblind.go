package main

import (
	"context"
	"crypto/md5"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"google.golang.org/protobuf/encoding/protowire"
)

// shardBlind is the peer: a producer with the design of
// github.com/a8m/kinesis-producer (which the Go module proxy does not serve
// here, so it cannot be pinned), written for this benchmark from that
// design:
//
//   - Put appends each record to ONE aggregate, whatever its shard (no shard
//     map, no ListShards), adding its partition key to the key table every
//     time and counting bytes the way a8m does (key + data + 1 + 8), until
//     the next record would take it past 51,200 bytes;
//   - a full aggregate is encoded (protobuf, then the MD5 trailer) on the
//     caller's goroutine and sent on a channel of 500 entries to one loop
//     goroutine, which batches entries into PutRecords requests of at most
//     500 entries and 5 MiB, flushed also every 5 s;
//   - a pool of 24 goroutines sends the requests; failed entries are sent
//     again after a backoff, as a8m does.
//
// The model is not slower than a8m where it differs: it encodes with
// protowire appends into one buffer sized up front (a8m marshals generated
// messages with golang/protobuf, then copies the bytes twice to add the
// magic and the checksum) and allocates one value per record where a8m
// allocates two. Like a8m, it aggregates records of every shard together,
// routed by the first record's key: a KCL reader drops such an aggregate
// whole when a member's hash key lies outside the shard it lands on.
type shardBlind struct {
	client *kinesis.Client
	stream string

	// The open aggregate: touched by Put only (a8m's Put is not safe for
	// concurrent use either).
	keys   []string
	recs   []*blindRecord
	nbytes int

	entries chan types.PutRecordsRequestEntry
	loopEnd chan struct{}
	sem     chan struct{} // the pool of senders
	wg      sync.WaitGroup
	failed  atomic.Int64 // user records given up
}

type blindRecord struct {
	data []byte
	key  uint64
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
		p.drain()
	}
	p.keys = append(p.keys, partitionKey)
	p.recs = append(p.recs, &blindRecord{data: data, key: uint64(len(p.keys) - 1)})
	p.nbytes += n + 1 + 8
	return nil
}

// drain encodes the open aggregate and hands it to the loop.
func (p *shardBlind) drain() {
	if len(p.recs) == 0 {
		return
	}
	size := len(kplMagic) + md5.Size
	for _, k := range p.keys {
		size += protowire.SizeTag(1) + protowire.SizeBytes(len(k))
	}
	for _, r := range p.recs {
		size += protowire.SizeTag(3) + protowire.SizeBytes(blindRecordSize(r))
	}
	b := make([]byte, 0, size)
	b = append(b, kplMagic...)
	for _, k := range p.keys {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, k)
	}
	for _, r := range p.recs {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(blindRecordSize(r)))
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, r.key)
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendBytes(b, r.data)
	}
	sum := md5.Sum(b[len(kplMagic):])
	b = append(b, sum[:]...)
	p.entries <- types.PutRecordsRequestEntry{Data: b, PartitionKey: aws.String(p.keys[0])}
	p.keys, p.recs, p.nbytes = make([]string, 0), make([]*blindRecord, 0), 0
}

func blindRecordSize(r *blindRecord) int {
	return protowire.SizeTag(1) + protowire.SizeVarint(r.key) + protowire.SizeTag(3) + protowire.SizeBytes(len(r.data))
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
	p.drain()
	close(p.entries)
	<-p.loopEnd
	p.wg.Wait()
}

// countMembers counts the records of an aggregate (for failures only).
func countMembers(b []byte) int {
	b = b[len(kplMagic) : len(b)-md5.Size]
	n := 0
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return n
		}
		b = b[l:]
		l = protowire.ConsumeFieldValue(num, typ, b)
		if l < 0 {
			return n
		}
		if num == 3 {
			n++
		}
		b = b[l:]
	}
	return n
}
