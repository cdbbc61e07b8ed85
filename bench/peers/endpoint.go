package main

import (
	"bytes"
	"crypto/md5"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"sync"

	"github.com/shardflow/shardflow/internal/kpl"
)

// endpoint is an in-process Kinesis endpoint on loopback that speaks just
// enough of the JSON 1.1 protocol for the producers: ListShards and
// PutRecords of one stream of equal shards. It accepts every entry and
// answers with the shard its hash key lies in, as Kinesis routes it, so
// that what is measured is the producers, not a server: it scans the
// request for the partition and explicit hash keys without decoding the
// data, and keeps the request bodies to check afterwards (check), outside
// the timed part.
type endpoint struct {
	shards int
	starts []*big.Int // first hash key of each shard
	ln     net.Listener
	srv    *http.Server

	mu     sync.Mutex
	stream string
	bodies [][]byte
	seq    int64
}

func newEndpoint(shards int) (*endpoint, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e := &endpoint{shards: shards, ln: ln}
	step := new(big.Int).Div(new(big.Int).Lsh(big.NewInt(1), 128), big.NewInt(int64(shards)))
	for i := range shards {
		e.starts = append(e.starts, new(big.Int).Mul(step, big.NewInt(int64(i))))
	}
	e.srv = &http.Server{Handler: e}
	go func() { _ = e.srv.Serve(ln) }()
	return e, nil
}

func (e *endpoint) url() string { return "http://" + e.ln.Addr().String() }

func (e *endpoint) close() { _ = e.srv.Close() }

// reset starts a new stream: the bodies kept so far are dropped.
func (e *endpoint) reset(stream string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stream, e.bodies = stream, nil
}

func shardID(i int) string { return fmt.Sprintf("shardId-%012d", i) }

// shardOf returns the shard holding hash key h (big-endian 16 bytes).
func (e *endpoint) shardOf(h [16]byte) int {
	v := new(big.Int).SetBytes(h[:])
	i := e.shards - 1
	for i > 0 && v.Cmp(e.starts[i]) < 0 {
		i--
	}
	return i
}

func hashKey(pk, ehk string) ([16]byte, error) {
	if ehk == "" {
		return md5.Sum([]byte(pk)), nil
	}
	v, ok := new(big.Int).SetString(ehk, 10)
	if !ok || v.Sign() < 0 || v.BitLen() > 128 {
		return [16]byte{}, fmt.Errorf("bad explicit hash key %q", ehk)
	}
	var b [16]byte
	v.FillBytes(b[:])
	return b, nil
}

func (e *endpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	switch target := r.Header.Get("X-Amz-Target"); target {
	case "Kinesis_20131202.ListShards":
		e.listShards(w)
	case "Kinesis_20131202.PutRecords":
		e.putRecords(w, body)
	default:
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"__type":"UnknownOperationException","message":%q}`, target)
	}
}

func (e *endpoint) listShards(w http.ResponseWriter) {
	type rng struct{ StartingHashKey, EndingHashKey string }
	type shard struct {
		ShardId             string
		HashKeyRange        rng
		SequenceNumberRange struct{ StartingSequenceNumber string }
	}
	var out struct{ Shards []shard }
	last := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 128), big.NewInt(1))
	for i := range e.shards {
		end := last
		if i+1 < e.shards {
			end = new(big.Int).Sub(e.starts[i+1], big.NewInt(1))
		}
		s := shard{ShardId: shardID(i), HashKeyRange: rng{e.starts[i].String(), end.String()}}
		s.SequenceNumberRange.StartingSequenceNumber = "1"
		out.Shards = append(out.Shards, s)
	}
	_ = json.NewEncoder(w).Encode(out)
}

// putRecords answers every entry written to the shard of its hash key.
func (e *endpoint) putRecords(w http.ResponseWriter, body []byte) {
	var shards []int
	err := scanEntries(body, func(_ []byte, pk, ehk string) error {
		h, err := hashKey(pk, ehk)
		if err != nil {
			return err
		}
		shards = append(shards, e.shardOf(h))
		return nil
	})
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"__type":"InvalidArgumentException","message":%q}`, err.Error())
		return
	}
	e.mu.Lock()
	e.bodies = append(e.bodies, body)
	first := e.seq
	e.seq += int64(len(shards))
	e.mu.Unlock()
	out := make([]byte, 0, 64+len(shards)*80)
	out = append(out, `{"FailedRecordCount":0,"Records":[`...)
	for i, s := range shards {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, `{"SequenceNumber":"`...)
		out = strconv.AppendInt(out, 49000000000000000+first+int64(i), 10)
		out = append(out, `","ShardId":"`...)
		out = append(out, shardID(s)...)
		out = append(out, `"}`...)
	}
	out = append(out, `]}`...)
	_, _ = w.Write(out)
}

// scanEntries calls fn with the (still base64) data, partition key and
// explicit hash key of each entry of a PutRecords request body, in order.
// It reads the JSON the SDK writes: an object whose "Records" member is an
// array of objects of string members; keys with escapes are unquoted with
// encoding/json.
func scanEntries(body []byte, fn func(data []byte, pk, ehk string) error) error {
	i := bytes.Index(body, []byte(`"Records":[`))
	if i < 0 {
		return errors.New("no Records")
	}
	b := body[i+len(`"Records":[`):]
	for {
		b = bytes.TrimLeft(b, " \n\r\t,")
		if len(b) == 0 {
			return errors.New("truncated Records")
		}
		if b[0] == ']' {
			return nil
		}
		if b[0] != '{' {
			return errors.New("an entry is not an object")
		}
		b = b[1:]
		var data []byte
		var pk, ehk string
		for {
			b = bytes.TrimLeft(b, " \n\r\t,")
			if len(b) > 0 && b[0] == '}' {
				b = b[1:]
				break
			}
			name, rest, err := jsonString(b)
			if err != nil {
				return err
			}
			rest = bytes.TrimLeft(rest, " \n\r\t:")
			val, rest, err := jsonString(rest)
			if err != nil {
				return err
			}
			b = rest
			switch string(name) {
			case "Data":
				data = val
			case "PartitionKey":
				pk = unquote(val)
			case "ExplicitHashKey":
				ehk = unquote(val)
			}
		}
		if err := fn(data, pk, ehk); err != nil {
			return err
		}
	}
}

// jsonString returns the raw contents of the JSON string at the head of b
// and what follows it.
func jsonString(b []byte) (s, rest []byte, err error) {
	if len(b) == 0 || b[0] != '"' {
		return nil, nil, errors.New("expected a string")
	}
	for i := 1; i < len(b); {
		j := bytes.IndexAny(b[i:], `"\`)
		if j < 0 {
			break
		}
		i += j
		if b[i] == '\\' {
			i += 2
			continue
		}
		return b[1:i], b[i+1:], nil
	}
	return nil, nil, errors.New("unterminated string")
}

func unquote(raw []byte) string {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw)
	}
	var s string
	_ = json.Unmarshal(append(append([]byte{'"'}, raw...), '"'), &s)
	return s
}

// tally is what the endpoint received for a stream: the user records (the
// members of KPL aggregates, or plain records), and those of them stored in
// an aggregate on a shard whose hash key range does not hold them (a KCL
// reader drops such an aggregate whole).
type tally struct {
	entries, aggregates, records, misrouted int
}

// check decodes every entry received since reset.
func (e *endpoint) check() (tally, error) {
	e.mu.Lock()
	bodies := e.bodies
	e.mu.Unlock()
	var t tally
	var recs []kpl.Record
	for _, body := range bodies {
		err := scanEntries(body, func(data64 []byte, pk, ehk string) error {
			data, err := base64.StdEncoding.AppendDecode(nil, data64)
			if err != nil {
				return err
			}
			t.entries++
			h, err := hashKey(pk, ehk)
			if err != nil {
				return err
			}
			shard := e.shardOf(h)
			recs, err = kpl.AppendDecode(recs[:0], data)
			if errors.Is(err, kpl.ErrNotAggregated) {
				t.records++
				return nil
			}
			if err != nil {
				return err
			}
			t.aggregates++
			for _, r := range recs {
				t.records++
				h, err := hashKey(r.PartitionKey, r.ExplicitHashKey)
				if err != nil {
					return err
				}
				if e.shardOf(h) != shard {
					t.misrouted++
				}
			}
			return nil
		})
		if err != nil {
			return t, err
		}
	}
	return t, nil
}
