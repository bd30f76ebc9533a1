package fallback

import (
	"bytes"
	"encoding/binary"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/dgraph-io/ristretto/v2"
)

// Stamp is a reading of the cache's invalidation clock. Take one with
// [Cache.Stamp] before sending a request upstream and give it to Store: an
// invalidation of any of the request's keys after that moment makes the
// reply unfit for caching.
type Stamp uint64

// Stats are the cache's counters, for INFO and metrics.
type Stats struct {
	Hits      uint64 // lookups answered
	Misses    uint64 // lookups not answered: absent, expired or invalidated
	Evictions uint64 // entries dropped by ristretto for room or on expiry
	Entries   uint64 // entries held (some may be stale, awaiting expiry)
	Bytes     int64  // cost held, in bytes (<= MaxBytes)
	Resets    uint64 // times the generation table overflowed (each a full invalidation)
}

// entry is one cached reply. It is immutable once handed to ristretto.
type entry struct {
	ns       string
	db       int
	req      []byte // verified on every hit: the ristretto key is only a hash
	reply    []byte
	keys     [][]byte  // the Redis keys the reply depends on
	key1     [1][]byte // backs keys for the usual single-key read: one allocation fewer
	since    Stamp     // clock value from before the reply was read
	deadline time.Time
}

// entryOverhead is the heap an entry takes beyond its bytes. Ristretto adds
// the size of its own item; the namespace string is the proxy's, shared.
const entryOverhead = int64(unsafe.Sizeof(entry{}))

// gen is the generation of one key: the clock value of its last
// invalidation and when that was, so that old ones can be forgotten.
type gen struct {
	n  Stamp
	at time.Time
}

// Cache is the fallback read cache. It is safe for concurrent use. A nil
// *Cache is a disabled cache: it stores nothing and never hits.
type Cache struct {
	rc       *ristretto.Cache[uint64, *entry]
	seed     maphash.Seed
	ttl      time.Duration
	maxEntry int64 // larger replies are not worth their copy: they would evict too much
	now      func() time.Time

	clock atomic.Uint64 // the invalidation clock; advanced only under mu

	mu       sync.RWMutex
	gens     map[string]*gen // keys invalidated recently (within ttl)
	floor    Stamp           // entries and stores stamped before floor are stale
	genLimit int             // len(gens) past which it is swept

	hits, misses, evictions, resets atomic.Uint64
}

// NewCache builds a cache from cfg's TTL and MaxBytes. Close it when done:
// ristretto runs a goroutine.
func NewCache(cfg Config) (*Cache, error) {
	if err := cfg.validateCache(); err != nil {
		return nil, err
	}
	c := &Cache{
		seed:     maphash.MakeSeed(),
		ttl:      cfg.TTL,
		maxEntry: cfg.MaxBytes / 16,
		now:      time.Now,
		gens:     make(map[string]*gen),
		genLimit: genLimitFor(cfg.MaxBytes),
	}
	rc, err := ristretto.NewCache(&ristretto.Config[uint64, *entry]{
		// Ristretto advises ten counters per entry it will hold; at a
		// typical few hundred bytes an entry, MaxBytes/32 is about that.
		NumCounters: max(cfg.MaxBytes/32, 1024),
		MaxCost:     cfg.MaxBytes,
		BufferItems: 64,
		// Metrics give Entries and Bytes; the cost is an atomic add per op.
		Metrics: true,
		OnEvict: func(*ristretto.Item[*entry]) { c.evictions.Add(1) },
	})
	if err != nil {
		return nil, err
	}
	c.rc = rc
	return c, nil
}

// genLimitFor sizes the generation table: at about 100 bytes per remembered
// key it costs at most about a tenth of MaxBytes on top of it.
func genLimitFor(maxBytes int64) int {
	return int(min(max(maxBytes/1024, 1024), 1<<20))
}

// Close releases the cache's goroutine and memory. The cache must not be
// used afterwards.
func (c *Cache) Close() {
	if c != nil {
		c.rc.Close()
	}
}

// Wait blocks until every Store made before it is visible to Lookup:
// ristretto applies new entries asynchronously. Correctness never needs it
// (a pending entry is a miss, and invalidation wins whatever the order);
// tests do.
func (c *Cache) Wait() {
	if c != nil {
		c.rc.Wait()
	}
}

// Stamp reads the invalidation clock; see [Stamp].
func (c *Cache) Stamp() Stamp {
	if c == nil {
		return 0
	}
	return Stamp(c.clock.Load())
}

func (c *Cache) hash(ns string, db int, req []byte) uint64 {
	var h maphash.Hash
	h.SetSeed(c.seed)
	var n [16]byte
	binary.LittleEndian.PutUint64(n[:8], uint64(len(ns)))
	binary.LittleEndian.PutUint64(n[8:], uint64(db))
	h.Write(n[:])
	h.WriteString(ns)
	h.Write(req)
	return h.Sum64()
}

// Store caches reply as the answer to req (the upstream request bytes of one
// cacheable read) for tenant namespace ns in database db. keys are the Redis
// keys the reply depends on (see [KeysOf]); since is the Stamp taken before
// the request was sent. The entry lives min(Config.TTL, keyTTL) when keyTTL
// is positive, Config.TTL otherwise. reply and the other slices are copied.
//
// It returns false when it declined: no keys, an error reply (often
// transient: LOADING, BUSY), a reply too large (over MaxBytes/16), or an
// invalidation of one of the keys since the stamp. True means the entry was
// handed to ristretto, which may still not admit it.
func (c *Cache) Store(since Stamp, ns string, db int, req []byte, keys [][]byte, reply []byte, keyTTL time.Duration) bool {
	if c == nil {
		return false
	}
	// Hot keys are read again and again with the same answer: when the
	// entry is there, fresh and equal, keep it rather than pay for a copy
	// and a ristretto Set (the profile's largest cost with --fallback).
	h := c.hash(ns, db, req)
	if old, ok := c.rc.Get(h); ok && old.ns == ns && old.db == db && bytes.Equal(old.req, req) && bytes.Equal(old.reply, reply) && c.now().Before(old.deadline) {
		c.mu.RLock()
		fresh := c.freshLocked(old.since, old.keys)
		c.mu.RUnlock()
		if fresh {
			return true
		}
	}
	e, ttl, cost := c.newEntry(ns, db, req, keys, reply, keyTTL)
	if e == nil {
		return false
	}
	now := c.now()
	c.mu.RLock()
	fresh := c.freshLocked(since, keys)
	c.mu.RUnlock()
	if !fresh {
		return false
	}
	// From here on an Invalidate of one of the keys gets a generation above
	// since, so it makes this entry stale whenever ristretto applies the Set.
	e.since, e.deadline = since, now.Add(ttl)
	return c.rc.SetWithTTL(h, e, cost, ttl)
}

// StoreWrite is the write-side counterpart of Store for a single-key write
// that upstream acknowledged and whose result is known (see
// [FillFromWrite]): it invalidates key, as every write must, and caches
// reply as the answer to req, unless another invalidation of key happened
// since the stamp taken before the write was sent. That other write or
// tracking message may have been ordered after this write upstream, so the
// value is not known to be current.
func (c *Cache) StoreWrite(since Stamp, ns string, db int, key, req, reply []byte, keyTTL time.Duration) bool {
	if c == nil {
		return false
	}
	keys := [][]byte{key}
	e, ttl, cost := c.newEntry(ns, db, req, keys, reply, keyTTL)
	now := c.now()
	c.mu.Lock()
	fresh := c.freshLocked(since, keys)
	n := c.invalidateLocked(key, now)
	fresh = fresh && n >= c.floor // a reset of the table just now invalidated everything
	c.mu.Unlock()
	if e == nil || !fresh {
		return false
	}
	e.since, e.deadline = n, now.Add(ttl)
	return c.rc.SetWithTTL(c.hash(ns, db, req), e, cost, ttl)
}

// newEntry copies the request, reply and keys into one allocation. It
// returns nil for what must not be cached.
func (c *Cache) newEntry(ns string, db int, req []byte, keys [][]byte, reply []byte, keyTTL time.Duration) (*entry, time.Duration, int64) {
	if len(keys) == 0 || len(reply) == 0 || reply[0] == '-' || reply[0] == '!' {
		return nil, 0, 0
	}
	size := len(req) + len(reply)
	for _, k := range keys {
		size += len(k)
	}
	cost := int64(size) + entryOverhead
	if len(keys) > 1 {
		cost += int64(len(keys)) * int64(unsafe.Sizeof([]byte(nil)))
	}
	if cost > c.maxEntry {
		return nil, 0, 0
	}
	ttl := c.ttl
	if keyTTL > 0 && keyTTL < ttl {
		ttl = keyTTL
	}
	buf := make([]byte, 0, size)
	buf = append(buf, req...)
	buf = append(buf, reply...)
	e := &entry{ns: ns, db: db, req: buf[:len(req):len(req)], reply: buf[len(req):len(buf):len(buf)]}
	if len(keys) == 1 {
		e.keys = e.key1[:]
	} else {
		e.keys = make([][]byte, len(keys))
	}
	for i, k := range keys {
		start := len(buf)
		buf = append(buf, k...)
		e.keys[i] = buf[start:len(buf):len(buf)]
	}
	return e, ttl, cost
}

// Lookup returns the cached reply to req for namespace ns in database db if
// it is present, unexpired, and none of its keys was invalidated since it
// was read. The reply is shared: do not modify it.
func (c *Cache) Lookup(ns string, db int, req []byte) (reply []byte, ok bool) {
	if c == nil {
		return nil, false
	}
	e, ok := c.rc.Get(c.hash(ns, db, req))
	// The ristretto key is a 64-bit hash: compare what it stands for, so
	// that a collision can never serve another tenant's or request's reply.
	if ok && e.ns == ns && e.db == db && bytes.Equal(e.req, req) && c.now().Before(e.deadline) {
		c.mu.RLock()
		ok = c.freshLocked(e.since, e.keys)
		c.mu.RUnlock()
		if ok {
			c.hits.Add(1)
			return e.reply, true
		}
	}
	// A stale entry is left for ristretto to expire or evict: deleting it
	// here could race with a fresh Store of the same request.
	c.misses.Add(1)
	return nil, false
}

// freshLocked reports whether a reply read after since is still current:
// nothing invalidated everything after it, and none of keys since.
func (c *Cache) freshLocked(since Stamp, keys [][]byte) bool {
	if since < c.floor {
		return false
	}
	for _, k := range keys {
		if g := c.gens[string(k)]; g != nil && g.n > since {
			return false
		}
	}
	return true
}

// Invalidate makes every entry that depends on the Redis key stale, in every
// namespace and database (upstream key names already carry the tenant
// prefix; tracking messages carry no database).
func (c *Cache) Invalidate(key []byte) {
	if c == nil {
		return
	}
	now := c.now()
	c.mu.Lock()
	c.invalidateLocked(key, now)
	c.mu.Unlock()
}

// invalidateLocked gives key a new generation and returns it.
func (c *Cache) invalidateLocked(key []byte, now time.Time) Stamp {
	n := Stamp(c.clock.Add(1))
	if g := c.gens[string(key)]; g != nil {
		g.n, g.at = n, now
		return n
	}
	c.gens[string(key)] = &gen{n: n, at: now}
	if len(c.gens) > c.genLimit {
		c.sweepLocked(now)
	}
	return n
}

// sweepLocked bounds the generation table, which otherwise grows with every
// key ever written. Forgetting a generation is always safe because floor is
// raised to it: every entry and Store stamped before it becomes stale, which
// is all that generation could have done. Forgetting only generations older
// than the TTL makes that harmless: what was stamped that long ago has
// expired, bar a read that took longer than the TTL. If the table is still
// over half full, keys are being written faster than the TTL lets them go:
// forget them all and invalidate everything (counted in Stats.Resets).
// Sweeping only once half the table is free again keeps it amortised O(1).
func (c *Cache) sweepLocked(now time.Time) {
	for k, g := range c.gens {
		if now.Sub(g.at) > c.ttl {
			c.floor = max(c.floor, g.n)
			delete(c.gens, k)
		}
	}
	if len(c.gens) > c.genLimit/2 {
		c.resetLocked()
		c.resets.Add(1)
	}
}

// resetLocked invalidates everything: entries and stamps from before the
// new floor are stale, so no generation needs remembering.
func (c *Cache) resetLocked() {
	c.floor = Stamp(c.clock.Add(1))
	c.gens = make(map[string]*gen)
}

// InvalidateAll makes every entry stale, for a FLUSHALL, a tracking message
// with no keys, or a re-established tracking connection. Memory is returned
// as entries expire or are evicted.
func (c *Cache) InvalidateAll() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.resetLocked()
	c.mu.Unlock()
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	if c == nil {
		return Stats{}
	}
	var entries uint64
	if added, gone := c.rc.Metrics.KeysAdded(), c.rc.Metrics.KeysEvicted(); added > gone {
		entries = added - gone
	}
	return Stats{
		Hits:      c.hits.Load(),
		Misses:    c.misses.Load(),
		Evictions: c.evictions.Load(),
		Entries:   entries,
		Bytes:     c.rc.MaxCost() - c.rc.RemainingCost(),
		Resets:    c.resets.Load(),
	}
}
