package kinesissink

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/shardflow/shardflow/internal/kpl"
)

func TestDataThatIsItselfAnAggregateIsReadBackAsPut(t *testing.T) {
	t.Parallel()
	var a kpl.Aggregator
	a.Add("inner-1", "", []byte("first inner record"))
	a.Add("inner-2", "", []byte("second inner record"))
	small := a.Encode()
	a.Reset()
	a.Add("inner", "", bytes.Repeat([]byte("y"), 3000))
	large := a.Encode() // too large to share an aggregate of AggregateMaxBytes
	tests := []struct {
		name    string
		data    []byte
		ordered bool
	}{
		{"a small aggregate put alone", small, false},
		{"a small aggregate put alone, ordered", small, true},
		{"an aggregate too large to share", large, false},
		{"an aggregate too large to share, ordered", large, true},
		{"the magic followed by no valid aggregate", append([]byte(kpl.Magic), bytes.Repeat([]byte{1}, 40)...), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 2)
				p, err := NewProducer(f, testStream, func(o *Options) {
					o.Aggregate = true
					o.Ordered = tc.ordered
					o.AggregateMaxBytes = 2000
				})
				if err != nil {
					t.Fatal(err)
				}
				if err := p.Put(t.Context(), tc.data, "outer"); err != nil {
					t.Fatal(err)
				}
				if err := p.Close(t.Context()); err != nil {
					t.Fatal(err)
				}
				// A de-aggregating reader (the KCL's rules, checked
				// against package kpl) gets back exactly the bytes put.
				recs, _ := userRecords(t, f, nil)
				if len(recs) != 1 || recs[0].data != string(tc.data) || recs[0].pk != "outer" {
					t.Errorf("reader got %d records (%.60q); want the one put, as put", len(recs), recs)
				}
			})
		})
	}
}

func TestAnAggregateLookingRecordTooLargeToWrapIsRefusedInAggregatingMode(t *testing.T) {
	t.Parallel()
	f := newFake(t, 1)
	// Exactly the record limit: valid plain, too large once wrapped.
	data := append([]byte(kpl.Magic), make([]byte, 1<<20-len(kpl.Magic)-1)...)
	for _, aggregate := range []bool{false, true} {
		p, err := NewProducer(f, testStream, func(o *Options) { o.Aggregate = aggregate; o.Linger = time.Hour })
		if err != nil {
			t.Fatal(err)
		}
		err = p.Put(t.Context(), data, "k")
		ve, ok := errors.AsType[*ValidationError](err)
		if aggregate && (!ok || ve.Field != "Data") {
			t.Errorf("aggregating: Put = %v, want a *ValidationError for Data", err)
		}
		if !aggregate && err != nil {
			t.Errorf("plain: Put = %v, want nil", err)
		}
		_ = p.Close(t.Context())
	}
}

func TestAggregateBoundIsNeverBelowTheEncodedSize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		pk    func(i int) string
		ehk   func(i int) string
		exact bool // the bound is the encoded size
	}{
		{"distinct keys", func(i int) string { return fmt.Sprintf("key-%d", i) }, func(int) string { return "" }, true},
		{"one hot key", func(int) string { return "hot" }, func(int) string { return "" }, true},
		{"keys repeated in runs", func(i int) string { return fmt.Sprintf("run-%d", i/7) }, func(int) string { return "" }, true},
		{"keys interleaved", func(i int) string { return fmt.Sprintf("k%d", i%3) }, func(int) string { return "" }, false},
		{"explicit hash keys", func(i int) string { return fmt.Sprintf("key-%d", i%5) }, func(i int) string { return strconv.Itoa(i % 4 * 1000) }, false},
		{"one explicit hash key", func(i int) string { return fmt.Sprintf("key-%d", i) }, func(int) string { return "12345" }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b aggBound
			var a kpl.Aggregator
			for i := range 300 {
				data := bytes.Repeat([]byte("d"), i%200+1)
				pk, ehk := tc.pk(i), tc.ehk(i)
				if got, want := b.with(pk, ehk, len(data)), a.SizeWith(pk, ehk, len(data)); got < want || (tc.exact && got != want) {
					t.Fatalf("record %d: bound with it %d, encoded size with it %d (exact: %v)", i, got, want, tc.exact)
				}
				b.add(pk, ehk, len(data))
				a.Add(pk, ehk, data)
				if enc := len(a.Encode()); b.size < enc || (tc.exact && b.size != enc) {
					t.Fatalf("after record %d: bound %d, encoded %d bytes (exact: %v)", i, b.size, enc, tc.exact)
				}
			}
		})
	}
}
