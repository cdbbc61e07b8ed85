package kinesissource

// userRecord is one user record of a KPL aggregated record.
type userRecord struct {
	data            []byte
	partitionKey    string
	explicitHashKey string
}

// deaggregate returns the user records of a KPL aggregated record, and
// false for anything else (plain records, and corrupt aggregates, which are
// delivered as plain records: never dropped).
func deaggregate(data []byte) ([]userRecord, bool) {
	return nil, false
}
