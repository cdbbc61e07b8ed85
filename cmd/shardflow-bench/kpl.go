package main

import (
	"bytes"
	"fmt"

	"github.com/shardflow/shardflow/internal/kpl"
)

const kplAggregateMax = 50 << 10 // the KPL's default aggregate size, and the sink's

func kplRecords(n int) []kpl.Record {
	recs := make([]kpl.Record, n)
	data := bytes.Repeat([]byte("x"), 100)
	for i := range recs {
		recs[i] = kpl.Record{PartitionKey: fmt.Sprintf("user-%06d", i), Data: data}
	}
	return recs
}

func benchKPL(t *table, c config) error {
	var enc, dec []sample
	for range c.reps {
		s, err := kplEncode(c.kplRecords)
		if err != nil {
			return err
		}
		enc = append(enc, s)
		if s, err = kplDecode(c.kplRecords); err != nil {
			return err
		}
		dec = append(dec, s)
	}
	t.add("aggregate", enc, nil, nsPerRecord, recordsPerSec, mbPerSec, allocsPerRecord)
	t.add("de-aggregate", dec, nil, nsPerRecord, recordsPerSec, mbPerSec, allocsPerRecord)
	t.note("no floor: this is the encoding itself. De-aggregation allocates each record's partition key string.")
	return nil
}

// kplEncode adds n records to aggregates of up to 50 KiB, encoding each one
// when the next record would not fit, as the sink does.
func kplEncode(n int) (sample, error) {
	recs := kplRecords(4096)
	var a kpl.Aggregator
	buf := make([]byte, 0, 64<<10)
	aggregates, users := 0, 0
	var m meter
	m.begin(n)
	for i := range n {
		r := recs[i%len(recs)]
		if a.SizeWith(r.PartitionKey, "", len(r.Data)) > kplAggregateMax {
			buf = a.AppendEncode(buf[:0])
			aggregates++
			users += a.Len()
			a.Reset()
		}
		a.Add(r.PartitionKey, "", r.Data)
	}
	users += a.Len()
	buf = a.AppendEncode(buf[:0])
	m.finish()
	if users != n || !kpl.IsAggregated(buf) || len(buf) > kplAggregateMax {
		return sample{}, fmt.Errorf("kpl encode: %d records in %d aggregates (last %d bytes); want %d", users, aggregates+1, len(buf), n)
	}
	return m.sample(), nil
}

// kplDecode de-aggregates n records from 400-record aggregates.
func kplDecode(n int) (sample, error) {
	var a kpl.Aggregator
	for _, r := range kplRecords(400) {
		a.Add(r.PartitionKey, "", r.Data)
	}
	agg := a.Encode()
	var out []kpl.Record
	got := 0
	var m meter
	m.begin(n)
	for got < n {
		var err error
		if out, err = kpl.AppendDecode(out[:0], agg); err != nil {
			return sample{}, fmt.Errorf("kpl decode: %w", err)
		}
		got += len(out)
	}
	m.finish()
	if len(out) != 400 || len(out[399].Data) != 100 {
		return sample{}, fmt.Errorf("kpl decode: %d records from an aggregate of 400 records of 100 bytes", len(out))
	}
	m.s.records = got // a whole number of aggregates: may exceed n by up to 399
	return m.sample(), nil
}
