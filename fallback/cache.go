package fallback

import (
	"bytes"
	"encoding/binary"
	"hash/maphash"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/keyfence/keyfence/rewrite"
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
	Evictions uint64 // entries dropped for room
	Entries   uint64 // entries held (some may be stale, awaiting expiry)
	Bytes     int64  // cost held, in bytes (<= MaxBytes)
}

// entry is one cached reply. It is immutable once stored.
type entry struct {
	ns       string
	db       int
	req      []byte // verified on every hit: the map key is only a hash
	reply    []byte
	keys     [][]byte  // the Redis keys the reply depends on
	key1     [1][]byte // backs keys for the usual single-key read: one allocation fewer
	since    Stamp     // clock value from before the reply was read
	deadline time.Time
	cost     int64 // bytes counted against MaxBytes
}

// entryOverhead is the heap an entry takes beyond its bytes; the namespace
// string is the proxy's, shared.
const entryOverhead = int64(unsafe.Sizeof(entry{}))

// Cache is the fallback read cache. It is safe for concurrent use. A nil
// *Cache is a disabled cache: it stores nothing and never hits.
type Cache struct {
	es       *entries
	adm      *admission
	seed     maphash.Seed
	ttl      time.Duration
	maxEntry int64 // larger replies are not worth their copy: they would evict too much
	now      func() time.Time

	// The invalidation clock, and the clock value of the last invalidation
	// of every key slot (keys hash into a fixed array: two keys that share a
	// slot invalidate each other's entries, which costs a miss, never a
	// stale hit). floor is the clock value of the last InvalidateAll. All
	// lock-free: every write and every tracking message invalidates.
	clock atomic.Uint64
	slots []atomic.Uint64
	floor atomic.Uint64
	// held has a bit per key slot, set once a read of one of its keys was
	// wanted (WantRead), before that read is sent, and cleared by the
	// slot's next invalidation (InvalidateKeys) or by InvalidateAll. A
	// slot not held has no fresh entry and no fill under way, so invalidating it
	// would change nothing: most writes skip it, and with it the slot's
	// cache line (one random access in an array of MaxBytes/32 bytes was a
	// tenth of keyfence's CPU under a write load). The bits take 1/64 of
	// the slots' memory, small enough to stay in the processor's cache.
	held []atomic.Uint64

	hits, misses atomic.Uint64
}

// NewCache builds a cache from cfg's TTL and MaxBytes.
func NewCache(cfg Config) (*Cache, error) {
	if err := cfg.validateCache(); err != nil {
		return nil, err
	}
	c := &Cache{
		seed:     maphash.MakeSeed(),
		ttl:      cfg.TTL,
		maxEntry: cfg.MaxBytes / 16,
		now:      time.Now,
	}
	c.es = newEntries(cfg.MaxBytes)
	// A key slot and a request slot per 256 bytes of cache: more than the
	// entries it can hold, for 1/16 of its size in memory.
	n := slotsFor(cfg.MaxBytes)
	c.slots = make([]atomic.Uint64, n)
	c.held = make([]atomic.Uint64, (n+63)/64)
	prefault(c.slots)
	prefault(c.held)
	c.adm = newAdmission(c.seed, c.slots, c.held, &c.clock, cfg.TTL/2)
	return c, nil
}

// slotsFor sizes the key and request slot arrays: a power of two, about one
// per 256 bytes of MaxBytes, between 4096 and 4 Mi.
func slotsFor(maxBytes int64) int {
	n := 1 << 12
	for int64(n)*256 < maxBytes && n < 1<<22 {
		n <<= 1
	}
	return n
}

// Close lets the cache's memory go. The cache must not be used afterwards.
func (c *Cache) Close() {
	if c != nil {
		c.es = newEntries(c.es.maxBytes)
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
// invalidation of one of the keys since the stamp, or a key not held (Hold). True means the entry is
// held (until evicted for room).
func (c *Cache) Store(since Stamp, ns string, db int, req []byte, keys [][]byte, reply []byte, keyTTL time.Duration) bool {
	if c == nil {
		return false
	}
	for _, k := range keys {
		if !c.isHeld(c.slotIndex(k)) {
			return false // its invalidations may have been skipped: see Hold
		}
	}
	// Hot keys are read again and again with the same answer: when the
	// entry is there, fresh and equal, keep it rather than pay for a copy.
	h := c.hash(ns, db, req)
	if old := c.es.get(h); old != nil && old.ns == ns && old.db == db && bytes.Equal(old.req, req) && bytes.Equal(old.reply, reply) && c.now().Before(old.deadline) {
		if c.fresh(old.since, old.keys) {
			return true
		}
	}
	e, ttl, cost := c.newEntry(ns, db, req, keys, reply, keyTTL)
	if e == nil {
		return false
	}
	now := c.now()
	if !c.fresh(since, keys) {
		return false
	}
	// From here on an Invalidate of one of the keys gets a generation above
	// since, so it makes this entry stale even if it lands after the set.
	e.since, e.deadline = since, now.Add(ttl)
	c.es.set(h, e, cost, now)
	return true
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

// WantRead reports whether the reply to a cacheable read is worth filling
// (see admission): not on the first sighting of the read, nor while an entry
// filled for it is current. cmd is the read's entry in the command table
// (taken from the caller, which has it: looking the name up again would cost
// a hash per read) and args are the client's (keys without the prefix); ns is
// the entries' namespace (the tenant's prefix, or a variant of it, see the
// package doc) and prefix the tenant's key prefix, which makes the keys
// upstream names; now is a recent clock reading (one per batch). Call it
// before sending the read, so that a read not wanted costs nothing more,
// and give the mark to Filled once the reply was stored. The keys of a read
// it wants are held (see Hold). Fills are bounded per second (fillBudget).
func (c *Cache) WantRead(ns, prefix string, db int, cmd *rewrite.Command, args [][]byte, now time.Time) (ReadMark, bool) {
	if c == nil || cmd == nil || !cmd.Cacheable() {
		return ReadMark{}, false
	}
	if !c.adm.budget.open(now) {
		return ReadMark{}, false
	}
	keys := keysBy(cmd.Cache, args)
	if len(keys) == 0 {
		return ReadMark{}, false
	}
	return c.adm.want(ns, prefix, db, cmd.Name, args, keys, now)
}

// Filled records that the read marked m was stored.
func (c *Cache) Filled(m ReadMark) {
	if c != nil {
		c.adm.filled(m)
	}
}

// Lookup returns the cached reply to req for namespace ns in database db if
// it is present, unexpired, and none of its keys was invalidated since it
// was read. The reply is shared: do not modify it.
func (c *Cache) Lookup(ns string, db int, req []byte) (reply []byte, ok bool) {
	if c == nil {
		return nil, false
	}
	e := c.es.get(c.hash(ns, db, req))
	// The map key is a 64-bit hash: compare what it stands for, so that a
	// collision can never serve another tenant's or request's reply.
	if e != nil && e.ns == ns && e.db == db && bytes.Equal(e.req, req) && c.now().Before(e.deadline) {
		if c.fresh(e.since, e.keys) {
			c.hits.Add(1)
			return e.reply, true
		}
	}
	// A stale entry is left to be replaced or evicted: deleting it here
	// could race with a fresh Store of the same request.
	c.misses.Add(1)
	return nil, false
}

// fresh reports whether a reply read after since is still current:
// nothing invalidated everything after it, and none of keys since. A key
// whose slot is not held counts as invalidated: its invalidations are
// skipped (InvalidateKeys), so nothing says it did not change.
func (c *Cache) fresh(since Stamp, keys [][]byte) bool {
	if uint64(since) < c.floor.Load() {
		return false
	}
	for _, k := range keys {
		j := c.slotIndex(k)
		if !c.isHeld(j) || c.slots[j].Load() > uint64(since) {
			return false
		}
	}
	return true
}

// slotIndex is key's slot; the same hash as admission.keyHash's (maphash
// of the same bytes, written in one piece or two, is the same).
func (c *Cache) slotIndex(key []byte) uint32 {
	return uint32(c.adm.keyHash("", key) & uint64(len(c.slots)-1))
}

func (c *Cache) slot(key []byte) *atomic.Uint64 { return &c.slots[c.slotIndex(key)] }

// maxHeldKeys bounds the keys of a read that the cache fills: a read of
// more is not wanted (WantRead).
const maxHeldKeys = 16

// Hold marks keys (upstream names) as ones an entry may depend on, so
// that their invalidations are not skipped; Store declines an entry with a
// key not held. Call it before taking the Stamp for the read: an
// invalidation between the two could otherwise be skipped. WantRead holds
// the keys of the reads it wants.
func (c *Cache) Hold(keys [][]byte) {
	if c == nil {
		return
	}
	for _, k := range keys {
		hold(c.held, c.slots, &c.clock, c.slotIndex(k))
	}
}

// hold sets slot j's bit in held. Setting a clear bit first raises the
// slot to a tick of its own: a fill may have held the slot, taken its
// Stamp and then lost the hold to an invalidation whose tick came before
// that Stamp (so it did not make the fill stale); a later invalidation then
// found the bit clear and skipped the slot. Without the raise, the bit set
// again by another fill would make that first fill's entry look current,
// older than the skipped write (TestConcurrentStoreInvalidate caught it).
// The raise comes before the bit: until the bit is set, fresh finds the
// slot not held and so stale.
func hold(held, slots []atomic.Uint64, clock *atomic.Uint64, j uint32) {
	w := &held[j/64]
	if bit := uint64(1) << (j % 64); w.Load()&bit == 0 {
		raise(&slots[j], clock.Add(1))
		w.Or(bit)
	}
}

func (c *Cache) isHeld(j uint32) bool { return isHeld(c.held, j) }

func isHeld(held []atomic.Uint64, j uint32) bool { return held[j/64].Load()&(1<<(j%64)) != 0 }

// Invalidate makes every entry that depends on the Redis key stale, in every
// namespace and database (upstream key names already carry the tenant
// prefix; tracking messages carry no database).
func (c *Cache) Invalidate(key []byte) {
	if c == nil {
		return
	}
	c.InvalidateKeys([][]byte{key})
}

// InvalidateKeys is Invalidate of each key, with one tick of the clock for
// all of them: a batch's writes, or a tracking message's keys, cost one
// atomic add on the shared clock rather than one each. The tick comes
// before the held bits are read: a bit found clear was set (if ever) after
// it, so a fill that sets it takes its Stamp after the tick, and raising
// the slot to the tick would not have touched that fill.
//
// A held slot is released, then raised: every entry of its keys is stale
// from then on, so the key's next writes skip the slot (a key written
// again and again costs one cache-missing raise, not one a write) until a
// fill holds it again. Releasing first keeps the proof above: a fill that
// holds the slot after the release takes its Stamp after the tick, and a
// fill that held it before finds it released at Store, or is stored before
// the raise and made stale by it. A fill that held the slot and lost it
// before its Stamp is not made stale by the release; the slot being raised
// again when it is next held (hold), and an entry of a slot not held
// never counting as fresh, keep it from outliving the writes skipped
// meanwhile.
func (c *Cache) InvalidateKeys(keys [][]byte) {
	if c == nil || len(keys) == 0 {
		return
	}
	n := c.clock.Add(1)
	for _, k := range keys {
		if j := c.slotIndex(k); release(c.held, j) {
			raise(&c.slots[j], n)
		}
	}
}

// release clears slot j's bit in held; false: it was clear.
func release(held []atomic.Uint64, j uint32) bool {
	w := &held[j/64]
	bit := uint64(1) << (j % 64)
	return w.Load()&bit != 0 && w.And(^bit)&bit != 0
}

// raise sets a to v unless it holds more already: concurrent invalidations
// may take their clock values in one order and store them in another.
func raise(a *atomic.Uint64, v uint64) {
	for {
		old := a.Load()
		if old >= v || a.CompareAndSwap(old, v) {
			return
		}
	}
}

// InvalidateAll makes every entry stale, for a FLUSHALL, a tracking message
// with no keys, or a re-established tracking connection. Memory is returned
// as entries expire or are evicted.
func (c *Cache) InvalidateAll() {
	if c == nil {
		return
	}
	// Nothing is held afterwards: every entry is stale, and a fill that
	// held its keys before now takes its stamp after the floor and so
	// finds them not held at Store. The bits go first: an entry stored
	// between the two stamped before the floor, which makes it stale.
	for i := range c.held {
		c.held[i].Store(0)
	}
	c.adm.all.Add(1)
	raise(&c.floor, c.clock.Add(1))
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	if c == nil {
		return Stats{}
	}
	return Stats{
		Hits:      c.hits.Load(),
		Misses:    c.misses.Load(),
		Evictions: c.es.evicted.Load(),
		Entries:   uint64(max(c.es.count.Load(), 0)),
		Bytes:     c.es.bytes.Load(),
	}
}
