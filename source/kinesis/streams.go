package kinesissource

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"

	"github.com/shardflow/shardflow"
)

// MaxStreams is the most streams one Source reads (NewStreams).
//
// Each stream costs the source its own ListShards calls (one round every
// DiscoveryInterval) and, with a leasing store, its own lease sync every
// LeaseSyncInterval: with the DynamoDB store that is at least one read of
// the stream's leases per interval, by every instance. Fifty streams at
// the stores' default sync interval (about 1.7s) already make some 30
// lease reads a second per instance; past that, split the streams between
// applications (each with its own lease table).
const MaxStreams = 50

// Stream is one of the streams a source made by NewStreams reads, with
// what may differ from one stream to the next. The zero value of each
// field but Name means the source's Options.
type Stream struct {
	// Name is the stream's name, or its ARN
	// ("arn:aws:kinesis:region:account:stream/name"). Required. Records
	// carry the name (shardflow.Record.Stream), and checkpoints and
	// leases are kept by it, so two streams of one source may not share
	// a name (not even in two accounts or regions).
	Name string

	// InitialPosition is where a shard of this stream with no
	// checkpoint starts. Default: Options.InitialPosition.
	InitialPosition StartingPosition

	// EnhancedFanOut, when set, makes the source read this stream by
	// enhanced fan-out through this consumer, whatever
	// Options.EnhancedFanOut says. A consumer belongs to one stream, so a
	// ConsumerARN must name one of this stream's. Default: nil, which
	// means Options.EnhancedFanOut (itself nil by default: polling).
	EnhancedFanOut *EnhancedFanOut
}

// streamConf is what a source knows of one of its streams, resolved by
// New or NewStreams. It does not change while Run runs.
type streamConf struct {
	name    string // the name, also for ARN-addressed streams
	arn     string // set when addressed by ARN
	initial StartingPosition
	mode    readMode     // polling, or enhanced fan-out
	log     *slog.Logger // the source's, with the stream's name
}

// nameRef and arnRef fill the stream fields of a request: the ARN when the
// stream was given by ARN, else the name.
func (st *streamConf) nameRef() *string {
	if st.arn != "" {
		return nil
	}
	return aws.String(st.name)
}

func (st *streamConf) arnRef() *string {
	if st.arn == "" {
		return nil
	}
	return aws.String(st.arn)
}

// resolveStreams checks the streams of a source and resolves their names,
// start positions and read modes. o must hold the resolved defaults.
// single is New's case: errors name the field "stream", as New's
// argument is called.
func resolveStreams(client API, streams []Stream, o *Options, single bool) ([]*streamConf, error) {
	switch {
	case len(streams) == 0:
		return nil, &shardflow.ConfigError{Field: "streams", Reason: "none: give at least one stream"}
	case len(streams) > MaxStreams:
		return nil, &shardflow.ConfigError{Field: "streams", Reason: fmt.Sprintf("%d streams; one source reads at most %d (MaxStreams)", len(streams), MaxStreams)}
	}
	if o.EnhancedFanOut != nil && o.EnhancedFanOut.ConsumerARN != "" && len(streams) > 1 {
		for _, sc := range streams {
			if sc.EnhancedFanOut == nil {
				return nil, &shardflow.ConfigError{Field: "Options.EnhancedFanOut.ConsumerARN",
					Reason: "a consumer ARN names a consumer of one stream: with several streams, use ConsumerName, or give each stream its consumer in Stream.EnhancedFanOut"}
			}
		}
	}
	out := make([]*streamConf, len(streams))
	seen := make(map[string]int, len(streams))
	pace := newAccountPace()
	for i, sc := range streams {
		field := fmt.Sprintf("streams[%d]", i)
		nameField := field + ".Name"
		if single {
			field, nameField = "Options", "stream"
		}
		st := &streamConf{name: sc.Name}
		if strings.HasPrefix(sc.Name, "arn:") {
			j := strings.LastIndex(sc.Name, ":stream/")
			if j < 0 || j+len(":stream/") == len(sc.Name) {
				return nil, &shardflow.ConfigError{Field: nameField, Reason: fmt.Sprintf("%q is not a Kinesis stream ARN", sc.Name)}
			}
			st.arn, st.name = sc.Name, sc.Name[j+len(":stream/"):]
		}
		if st.name == "" {
			return nil, &shardflow.ConfigError{Field: nameField, Reason: "empty"}
		}
		if j, dup := seen[st.name]; dup {
			return nil, &shardflow.ConfigError{Field: nameField, Reason: fmt.Sprintf("stream %q is also streams[%d]: give each stream once (checkpoints and leases are kept by stream name)", st.name, j)}
		}
		seen[st.name] = i
		st.initial = o.InitialPosition
		if p := sc.InitialPosition; p.typ != "" {
			if p.typ == types.ShardIteratorTypeAtTimestamp && p.at.IsZero() {
				return nil, &shardflow.ConfigError{Field: field + ".InitialPosition", Reason: "AT_TIMESTAMP needs a time"}
			}
			st.initial = p
		}
		st.mode = polling{}
		efo, efoField := o.EnhancedFanOut, "Options.EnhancedFanOut"
		if sc.EnhancedFanOut != nil {
			efo, efoField = sc.EnhancedFanOut, field+".EnhancedFanOut"
		}
		if efo != nil {
			m, err := newFanOut(client, *efo, efoField, pace)
			if err != nil {
				return nil, err
			}
			if s := consumerStream(efo.ConsumerARN); s != "" && s != st.name {
				return nil, &shardflow.ConfigError{Field: efoField + ".ConsumerARN", Reason: fmt.Sprintf("%q is a consumer of stream %q, not of %q", efo.ConsumerARN, s, st.name)}
			}
			st.mode = m
		}
		out[i] = st
	}
	return out, nil
}

// consumerStream returns the name of the stream of a consumer ARN
// ("arn:aws:kinesis:region:account:stream/name/consumer/consumer:timestamp"),
// or "" when arn has none.
func consumerStream(arn string) string {
	_, rest, ok := strings.Cut(arn, ":stream/")
	if !ok {
		return ""
	}
	name, _, ok := strings.Cut(rest, "/consumer/")
	if !ok {
		return ""
	}
	return name
}

// Streams returns the names of the streams the source reads, in the order
// they were given.
func (s *Source) Streams() []string {
	names := make([]string, len(s.streams))
	for i, st := range s.streams {
		names[i] = st.name
	}
	return names
}
