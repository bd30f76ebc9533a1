package fallback

import (
	"sync"
	"sync/atomic"
	"time"
)

// entries holds the cache's entries by request hash, bounded by bytes. It
// replaces ristretto, whose admission policy and per-Get bookkeeping were
// the largest cost of the read fallback on the data path: here a lookup is
// one read lock and one map access, and a store that finds its entry fresh
// and equal changes nothing.
//
// Eviction samples a few entries of the shard being written (Go's map
// iteration starts at a random place) and drops the expired ones, else the
// one closest to its deadline: an approximation in the spirit of Redis's
// own sampled eviction, cheap and good enough for a cache that only answers
// during outages.
type entries struct {
	shards   [entryShards]entryShard
	maxBytes int64
	bytes    atomic.Int64
	count    atomic.Int64
	evicted  atomic.Uint64
}

const (
	entryShards  = 64
	evictSamples = 5
)

type entryShard struct {
	mu sync.RWMutex
	m  map[uint64]*entry
}

func newEntries(maxBytes int64) *entries {
	es := &entries{maxBytes: maxBytes}
	for i := range es.shards {
		es.shards[i].m = make(map[uint64]*entry)
	}
	return es
}

func (es *entries) shard(h uint64) *entryShard { return &es.shards[h%entryShards] }

func (es *entries) get(h uint64) *entry {
	sh := es.shard(h)
	sh.mu.RLock()
	e := sh.m[h]
	sh.mu.RUnlock()
	return e
}

// set stores e (cost bytes) under h, replacing what was there, then evicts
// from the same shard until the whole fits in maxBytes again.
func (es *entries) set(h uint64, e *entry, cost int64, now time.Time) {
	e.cost = cost
	sh := es.shard(h)
	sh.mu.Lock()
	if old := sh.m[h]; old != nil {
		es.bytes.Add(-old.cost)
		es.count.Add(-1)
	}
	sh.m[h] = e
	es.bytes.Add(cost)
	es.count.Add(1)
	for es.bytes.Load() > es.maxBytes && len(sh.m) > 1 {
		es.evictLocked(sh, h, now)
	}
	sh.mu.Unlock()
}

// evictLocked drops one entry of sh other than keep's: an expired one if the
// sample holds one, else the one that expires first.
func (es *entries) evictLocked(sh *entryShard, keep uint64, now time.Time) {
	var victim uint64
	var soonest *entry
	n := 0
	for h, e := range sh.m {
		if h == keep {
			continue
		}
		if soonest == nil || e.deadline.Before(soonest.deadline) {
			victim, soonest = h, e
		}
		if n++; n >= evictSamples || !now.Before(e.deadline) {
			break
		}
	}
	if soonest == nil {
		return
	}
	delete(sh.m, victim)
	es.bytes.Add(-soonest.cost)
	es.count.Add(-1)
	es.evicted.Add(1)
}
