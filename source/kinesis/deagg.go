package kinesissource

import (
	"github.com/shardflow/shardflow/internal/kpl"
)

// deaggregate returns the user records of a KPL aggregated record, reusing
// buf, and false for anything else, by the KCL's rules: plain records (no
// magic, or at most 16 bytes after it), and corrupt aggregates (bad
// checksum or body), which are delivered as plain records, never dropped.
// The user records' data point into data.
func deaggregate(buf []kpl.Record, data []byte) (users []kpl.Record, aggregated, corrupt bool) {
	if !kpl.IsAggregated(data) {
		return buf[:0], false, false
	}
	users, err := kpl.AppendDecode(buf[:0], data)
	if err != nil {
		return users[:0], false, true
	}
	return users, true, false
}
