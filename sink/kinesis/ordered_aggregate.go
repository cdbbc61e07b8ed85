package kinesissink

// aggregatePacker makes an ordered request of one KPL aggregate of at most
// Options.AggregateMaxBytes (the ordered and aggregating mode): the head
// records of the shard, skipping keys in flight, with as many records of one
// key as fit. Throughput per key is then one aggregate per round trip.
type aggregatePacker struct {
	limit int
}

func (p *aggregatePacker) full(q *queue) bool { return q.bytes >= p.limit }

func (p *aggregatePacker) need(q *queue) int { return nextAggregateBytes(q, p.limit) }

// batchRecords is 1: a request is one aggregate.
func (p *aggregatePacker) batchRecords(*limiter, *queue) int { return 1 }

func (p *aggregatePacker) take(q *queue, inFlight map[string]int, a allowance) ([]wire, []string) {
	limit := p.limit
	if !a.whole {
		limit = min(limit, a.bytes)
	}
	w, keys, ok := takeAggregate(q, limit, inFlight)
	if !ok {
		return nil, nil
	}
	return []wire{w}, keys
}
