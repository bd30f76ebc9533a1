package fallback

import (
	"hash/maphash"
	"sync/atomic"
	"time"
)

// admission decides, without locks and without touching the entries, which
// cacheable reads are worth filling. Filling a read costs a PTTL of each key
// upstream (an entry must never outlive its key) and a copy; most reads need
// neither: a read seen for the first time (a scan over many keys) is not
// filled, and a read whose entry was filled since its keys last changed is
// not filled again. That keeps the fallback's cost on the data path to two
// hashes and two atomic loads for most reads.
//
// It reads the cache's key slots (the clock value of each key's last
// invalidation) and keeps a state per request, in a fixed array indexed by
// hash: the slots of its keys when it was last seen or filled.
// A collision only ever costs a fill that was not needed or one that is
// skipped; it never decides what is served — Lookup checks entries exactly.
type admission struct {
	seed   maphash.Seed
	keys   []atomic.Uint64 // the cache's key slots
	held   []atomic.Uint64 // and their held bits (Cache.held)
	clock  *atomic.Uint64  // the cache's invalidation clock, for hold
	reqs   []atomic.Uint64
	all    atomic.Uint32 // bumped by InvalidateAll
	period time.Duration // a filled read is filled again after this long, so that entries do not run out
	budget fillBudget
}

// fillBudget bounds what filling costs the data path whatever the
// workload: in each second, at most fillsPerSecond fills plus one for
// every sightingsPerFill sightings. A fill costs a copy and three more
// commands upstream (see the proxy's askKeyTTLs); on a uniform keyspace read
// a few times over (the benchmark's), 5.6 % of reads were filled, which
// cost 15 % of throughput at pipeline 16. Hot keys, read again and again,
// still get their turn. Once a second's budget is spent, sightings are
// counted and nothing else is looked at, so the admission's two random
// memory accesses are skipped too. The counters are approximate under
// concurrency (a reset may lose a few counts); they never decide what is
// served.
type fillBudget struct {
	second atomic.Int64 // the Unix second the counts are of
	sights atomic.Uint64
	fills  atomic.Uint64
}

const (
	fillsPerSecond   = 100
	sightingsPerFill = 64 // with the proxy's one read in sixteen sampled: a fill per 1,024 cacheable reads
)

// open counts a sighting at now and reports whether a fill may follow it.
func (b *fillBudget) open(now time.Time) bool {
	if sec := now.Unix(); b.second.Load() != sec && b.second.Swap(sec) != sec {
		b.sights.Store(0)
		b.fills.Store(0)
	}
	return b.fills.Load() < fillsPerSecond+b.sights.Add(1)/sightingsPerFill
}

// ReadMark identifies one cacheable read between WantRead and Filled.
type ReadMark struct {
	slot  uint32
	state uint64
}

const (
	admSeen   = 1
	admFilled = 2
)

func newAdmission(seed maphash.Seed, keys, held []atomic.Uint64, clock *atomic.Uint64, period time.Duration) *admission {
	reqs := make([]atomic.Uint64, max(len(keys)/admReqsPerKeySlot, 1<<12))
	prefault(reqs)
	return &admission{seed: seed, keys: keys, held: held, clock: clock, reqs: reqs, period: max(period, time.Second)}
}

// admReqsPerKeySlot sizes the request states against the key slots: 4K
// of them (32 KiB) for the default 64 MiB cache. Most sightings write
// one, at random: an array the size of the key slots (2 MiB) missed the
// processor's caches on nearly every sampled read, and one of 128 KiB
// still competed with the data path for them while other processes
// shared the cores. A collision forgets a sighting, which only delays a
// fill; a hot read is sighted again long before 4K others (64K reads)
// overwrite its state.
const admReqsPerKeySlot = 64

// prefault writes to every page of a, so that the page faults of its
// first use are taken now, not on the data path: in the benchmark's
// virtual machine they had been 7 % of keyfence's CPU in the first run
// after a start.
func prefault(a []atomic.Uint64) {
	const perPage = 4096 / 8
	for i := 0; i < len(a); i += perPage {
		a[i].Store(0)
	}
}

// keyHash hashes an upstream key name given as prefix and the client's key.
func (a *admission) keyHash(prefix string, key []byte) uint64 {
	var h maphash.Hash
	h.SetSeed(a.seed)
	h.WriteString(prefix)
	h.Write(key)
	return h.Sum64()
}

// want reports whether the read of command with args (the client's, keys
// without prefix) by namespace ns in db should be filled, and the mark to
// give Filled when it was; prefix makes its keys upstream names. now is the
// caller's clock reading (one per batch will do: the clock only ages
// entries, in periods of seconds). A read it wants has its keys' slots
// held from then on.
func (a *admission) want(ns, prefix string, db int, command string, args [][]byte, keys [][]byte, now time.Time) (ReadMark, bool) {
	var h maphash.Hash
	h.SetSeed(a.seed)
	h.WriteString(ns)
	h.WriteByte(byte(db))
	h.WriteByte(byte(db >> 8))
	h.WriteString(command) // as the command table spells it: lower case
	for _, arg := range args {
		var n [4]byte
		n[0], n[1], n[2], n[3] = byte(len(arg)), byte(len(arg)>>8), byte(len(arg)>>16), byte(len(arg)>>24)
		h.Write(n[:])
		h.Write(arg)
	}
	hr := h.Sum64()
	var idx [maxHeldKeys]uint32
	for i, k := range keys {
		if i == len(idx) {
			break
		}
		idx[i] = uint32(a.keyHash(prefix, k) & uint64(len(a.keys)-1))
	}
	tag := uint64(hr>>48) << 48
	slot := uint32(hr & uint64(len(a.reqs)-1))
	base := tag | uint64(a.epoch(idx[:min(len(keys), len(idx))], now))<<8
	switch a.reqs[slot].Load() {
	case base | admFilled:
		return ReadMark{}, false
	case base | admSeen:
		if len(keys) > maxHeldKeys {
			return ReadMark{}, false // not worth a fill
		}
		a.budget.fills.Add(1)
		for _, j := range idx[:len(keys)] {
			hold(a.held, a.keys, a.clock, j)
		}
		// Held now, the keys count in the mark: their next write, which
		// releases them, changes it.
		base = tag | uint64(a.epoch(idx[:len(keys)], now))<<8
		return ReadMark{slot: slot, state: base | admFilled}, true
	}
	a.reqs[slot].Store(base | admSeen)
	return ReadMark{}, false
}

// epoch is what a read's mark depends on besides the read itself: the
// period of now, the InvalidateAll count, and the version of each key slot
// in js (the first maxHeldKeys of its keys'). A slot not held counts as
// 0, a held one as its value + 1: an invalidation releases the slot as it
// raises it, so a read filled (keys held) and read again after a write
// (keys released) gets different marks even if the slot was never raised
// before. A slot not held need not have its cache line in the big array read.
func (a *admission) epoch(js []uint32, now time.Time) uint32 {
	e := a.all.Load()*0x9E3779B1 ^ uint32(now.UnixNano()/int64(a.period))*0x85EBCA6B
	for _, j := range js {
		if isHeld(a.held, j) {
			e += uint32(a.keys[j].Load()) + 1
		}
	}
	return e
}

func (a *admission) filled(m ReadMark) {
	if m.state != 0 {
		a.reqs[m.slot].Store(m.state)
	}
}
