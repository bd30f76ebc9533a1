package fallback

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The model of FuzzCache: two tenants, two databases, three keys each, and
// a handful of cacheable requests. Both tenants send identical request
// bytes on purpose (only their keys differ), so that namespace isolation is
// what keeps their entries apart.
var (
	fuzzNS   = []string{"tenant:a:", "tenant:b:"}
	fuzzKeys = []string{"k0", "k1", "k2"}
	fuzzReqs = []struct {
		cmd  string
		keys []int // indexes into fuzzKeys
	}{
		{"GET", []int{0}}, {"GET", []int{1}}, {"GET", []int{2}},
		{"MGET", []int{0, 1}}, {"EXISTS", []int{1, 2}},
	}
)

type fuzzTarget struct{ ns, db, req int }

func (f fuzzTarget) keys() [][]byte {
	var out [][]byte
	for _, k := range fuzzReqs[f.req].keys {
		out = append(out, []byte(fuzzNS[f.ns]+fuzzKeys[k]))
	}
	return out
}

func (f fuzzTarget) reqBytes() []byte {
	var args [][]byte
	for _, k := range fuzzReqs[f.req].keys {
		args = append(args, []byte(fuzzKeys[k]))
	}
	return AppendRequest(nil, fuzzReqs[f.req].cmd, args)
}

func target(b byte) fuzzTarget {
	n := int(b) % (len(fuzzNS) * 2 * len(fuzzReqs))
	return fuzzTarget{ns: n % 2, db: n / 2 % 2, req: n / 4}
}

// fuzzModel is the truth: the version of every (db, key) upstream holds,
// and the newest version of each that was acknowledged to a client.
type fuzzModel struct {
	truth, acked map[string]int
}

func mkey(db int, key []byte) string { return strconv.Itoa(db) + "/" + string(key) }

// read is what upstream answers, encoded so that a hit can be checked: the
// namespace, the db and the version of each key.
func (m *fuzzModel) read(t fuzzTarget) []byte {
	var sb strings.Builder
	sb.WriteString("+" + fuzzNS[t.ns] + "|" + strconv.Itoa(t.db))
	for _, k := range t.keys() {
		sb.WriteString("|" + strconv.Itoa(m.truth[mkey(t.db, k)]))
	}
	return []byte(sb.String())
}

type pendingRead struct {
	t     fuzzTarget
	since Stamp
	reply []byte
}

// modelSeeds generates operation sequences weighted towards what finds
// bugs: stores and lookups of a few targets, with writes and waits mixed in.
func modelSeeds(n int) [][]byte {
	weights := []int{20, 10, 10, 8, 10, 25, 10, 3, 1, 5, 5} // by op, see runCacheModel
	r := rand.New(rand.NewPCG(1, 2))
	var seeds [][]byte
	for range n {
		ops := make([]byte, 0, 400)
		if r.IntN(2) == 0 {
			ops = append(ops, 0x80, 0) // small generation table
		}
		for range 20 + r.IntN(180) {
			w := r.IntN(107)
			op := 0
			for ; w >= weights[op]; op++ {
				w -= weights[op]
			}
			arg := r.IntN(8)
			if op == 7 {
				arg = r.IntN(40) // up to 4 s
			}
			ops = append(ops, byte(op), byte(arg))
		}
		seeds = append(seeds, ops)
	}
	return seeds
}

// FuzzCache runs sequences of reads, writes, lookups, tracking
// invalidations and clock moves against a Cache and a model of upstream,
// and fails if a hit is ever stale: older than an acknowledged write, from
// another tenant or database, or past its TTL. Misses are always allowed
// (ristretto may drop or not yet apply any Set).
func FuzzCache(f *testing.F) {
	f.Add([]byte{0, 0, 6, 0, 5, 0, 3, 0, 4, 0, 5, 0})
	f.Add([]byte{1, 3, 3, 0, 4, 0, 2, 0, 6, 0, 5, 3})
	f.Add([]byte{9, 0, 9, 0, 10, 0, 10, 0, 6, 0, 5, 0})
	for _, ops := range modelSeeds(24) {
		f.Add(ops)
	}
	f.Fuzz(func(t *testing.T, ops []byte) { runCacheModel(t, ops) })
}

// The model must see hits, or it checks nothing.
func TestCacheModelHits(t *testing.T) {
	hits := 0
	for _, ops := range modelSeeds(24) {
		hits += runCacheModel(t, ops)
	}
	t.Logf("%d hits checked", hits)
	if hits < 100 {
		t.Fatalf("only %d hits in the seed sequences", hits)
	}
}

// runCacheModel runs one sequence of (op, arg) byte pairs and returns the
// number of hits it checked.
func runCacheModel(t *testing.T, ops []byte) (hits int) {
	const ttl = 10 * time.Second
	c, clk := newTestCache(t, ttl, 64<<10)
	if len(ops) > 0 && ops[0]&0x80 != 0 {
		c.slots = make([]atomic.Uint64, 4) // exercise keys sharing slots too
		c.adm.keys = c.slots
	}
	m := &fuzzModel{truth: map[string]int{}, acked: map[string]int{}}
	deadline := map[fuzzTarget]time.Time{} // the latest any accepted Store may live
	var reads []pendingRead
	storeRead := func(p pendingRead, keyTTL time.Duration) {
		if c.Store(p.since, fuzzNS[p.t.ns], p.t.db, p.t.reqBytes(), p.t.keys(), p.reply, keyTTL) {
			life := ttl
			if keyTTL > 0 && keyTTL < life {
				life = keyTTL
			}
			if d := clk.Now().Add(life); d.After(deadline[p.t]) {
				deadline[p.t] = d
			}
		}
	}
	for i := 0; i+1 < len(ops); i += 2 {
		op, arg := ops[i]%11, ops[i+1]
		tg := target(arg)
		if (op == 0 || op == 1) && arg&0x40 == 0 {
			// A wanted read has its keys held before its stamp (WantRead);
			// one that was not (arg's bit 0x40) must never be stored.
			c.Hold(tg.keys())
		}
		switch op {
		case 0: // a read comes back at once
			storeRead(pendingRead{tg, c.Stamp(), m.read(tg)}, time.Duration(arg%3)*time.Second)
		case 1: // a read is sent (reaches upstream now, replies later)
			reads = append(reads, pendingRead{tg, c.Stamp(), m.read(tg)})
		case 2: // the oldest read in flight replies
			if len(reads) > 0 {
				storeRead(reads[0], 0)
				reads = reads[1:]
			}
		case 3: // a write is applied upstream, not yet acknowledged
			k := tg.keys()[0]
			m.truth[mkey(tg.db, k)]++
		case 4: // acknowledgement or tracking message for a key
			k := tg.keys()[0]
			c.Invalidate(k)
			for db := range 2 {
				m.acked[mkey(db, k)] = m.truth[mkey(db, k)]
			}
		case 5: // a client reads while upstream is down
			reply, ok := c.Lookup(fuzzNS[tg.ns], tg.db, tg.reqBytes())
			if !ok {
				break
			}
			hits++
			if !clk.Now().Before(deadline[tg]) {
				t.Fatalf("op %d: hit past every deadline", i/2)
			}
			f := strings.Split(string(reply), "|")
			if f[0] != "+"+fuzzNS[tg.ns] || f[1] != strconv.Itoa(tg.db) {
				t.Fatalf("op %d: lookup in %s db %d returned %q", i/2, fuzzNS[tg.ns], tg.db, reply)
			}
			for j, k := range tg.keys() {
				v, _ := strconv.Atoi(f[2+j])
				if a := m.acked[mkey(tg.db, k)]; v < a {
					t.Fatalf("op %d: %s has version %d, but %d was acknowledged (reply %q)", i/2, k, v, a, reply)
				}
			}
		case 6, 9, 10: // nothing (9 and 10 were write fills, which keyfence no
			// longer does; the ops keep their numbers so that the committed
			// seeds keep their meaning)
		case 7:
			clk.Advance(time.Duration(arg) * 100 * time.Millisecond)
		case 8: // FLUSHALL upstream, announced by a tracking message with no keys
			for _, ns := range fuzzNS {
				for _, key := range fuzzKeys {
					for db := range 2 {
						mk := mkey(db, []byte(ns+key))
						m.truth[mk]++
						m.acked[mk] = m.truth[mk]
					}
				}
			}
			c.InvalidateAll()
		}
	}
	return hits
}
