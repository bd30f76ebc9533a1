package proxy

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keyfence/keyfence/fallback"
	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/upstream"
)

// resilience is the circuit breaker and the read cache of one tenant
// (package fallback), and the CLIENT TRACKING connection that keeps the
// cache coherent with writes made by other clients.
//
// The breaker guards the shared connections: while it is open nothing is
// sent upstream, cacheable reads are answered from the cache when every key
// they need is fresh there, and everything else fails at once with a
// TRYAGAIN error. A write is acknowledged only when upstream acknowledged
// it, and nothing that may have reached Redis is retried.
type resilience struct {
	breaker *fallback.Breaker
	cache   *fallback.Cache
	ns      string // the tenant's key prefix: written keys, and RESP2 entries' namespace
	ns3     string // RESP3 entries' namespace (session.cacheNS)
	// opened wakes the recovery probe (probe.go) when the breaker opens.
	opened      chan struct{}
	openTimeout time.Duration
	// trackID is the CLIENT ID of the tracking connection, which fills
	// redirect their keys' invalidations to; 0 while there is none.
	trackID atomic.Int64
	// dropTracking ends the current tracking connection (see
	// Server.trackingLost); nil while there is none.
	dropTracking atomic.Pointer[context.CancelFunc]
}

func newResilience(cfg fallback.Config, prefix string, withCache bool, log func(from, to fallback.State)) (*resilience, error) {
	r := &resilience{ns: prefix, ns3: prefix + "|3", opened: make(chan struct{}, 1), openTimeout: cfg.OpenTimeout}
	b, err := fallback.NewBreaker(cfg, func(from, to fallback.State) {
		if log != nil {
			log(from, to)
		}
		if to == fallback.Open {
			// Never blocks (it runs under the breaker's lock): a wake-up
			// already pending covers this one.
			select {
			case r.opened <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		return nil, err
	}
	r.breaker = b
	if withCache {
		if r.cache, err = fallback.NewCache(cfg); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// cacheRequest returns the canonical form of one rewritten request in the
// batch and its arguments (prefixed), or ok false if it is not cacheable.
func (s *session) cacheRequest(sl slot) (req []byte, args [][]byte, ok bool) {
	if sl.name == "" || !fallback.Cacheable(sl.name) || sl.to <= sl.from {
		return nil, nil, false
	}
	args, n, _, err := resp.ParseCommand(s.req[sl.from:sl.to], s.cacheScratch.args, resp.DefaultLimits)
	s.cacheScratch.args = args
	if err != nil || n == 0 || len(args) < 2 {
		return nil, nil, false
	}
	s.cacheScratch.req = fallback.AppendRequest(s.cacheScratch.req[:0], sl.name, args[1:])
	return s.cacheScratch.req, args, true
}

// invalidateWrite notes the keys a write is about to change, for send to
// invalidate before the batch goes upstream, whatever becomes of it: a
// write that failed after it was sent may still have been applied. args are
// the client's, so the keys are found without parsing the rewritten request
// again; they are copied (with the prefix) into the batch's list.
func (s *session) invalidateWrite(cmd *rewrite.Command, args [][]byte) {
	if cmd == nil || !cmd.HasFlag(rewrite.FlagWrite) {
		return
	}
	sc := &s.cacheScratch
	idx, err := s.rw.Keys(cmd, args, sc.keyIdx[:0])
	sc.keyIdx = idx
	if err != nil {
		sc.invalidateAll = true // cannot tell which keys: be safe
		return
	}
	for _, i := range idx {
		sc.written = append(append(sc.written, s.srv.res.ns...), args[i]...)
		sc.writtenEnds = append(sc.writtenEnds, len(sc.written))
	}
}

// invalidateWritten invalidates what invalidateWrite noted for the batch,
// with one tick of the cache's clock, and forgets it.
func (s *session) invalidateWritten() {
	sc := &s.cacheScratch
	cache := s.srv.res.cache
	if sc.invalidateAll {
		cache.InvalidateAll()
	}
	if len(sc.writtenEnds) > 0 {
		keys := sc.writtenKeys[:0]
		from := 0
		for _, end := range sc.writtenEnds {
			keys = append(keys, sc.written[from:end])
			from = end
		}
		cache.InvalidateKeys(keys)
		clear(keys)
		sc.writtenKeys = keys[:0]
	}
	sc.written, sc.writtenEnds, sc.invalidateAll = sc.written[:0], sc.writtenEnds[:0], false
	if cap(sc.written) > maxKeptBuffer {
		sc.written = nil
	}
}

// DefaultFallbackSample is how many cacheable reads there are for one that
// the cache looks at (Config.FallbackSample): a read is a sighting for
// admission (Cache.WantRead) with probability 1/16. A hot key is still
// filled within a few dozen reads (its second sighting); a one-off read,
// most often, is not looked at, and the other reads cost the data path a
// draw. In isolated runs of GET at pipeline 16, one in four cost 2.5 %
// more CPU than no fallback and one in eight nothing measurable, but
// under make bench's order (five processes taking turns on two cores) one
// in eight still cost GET at pipeline 16 23-28 % more CPU per GET, and
// one in sixteen 2-9 % in three runs (bench/results/designs.md). The
// cache serves outages: what matters is that hot keys are in it.
const DefaultFallbackSample = 16

// sampleRead draws whether this read is one the cache looks at, from a
// xorshift generator of the session's own.
func (s *session) sampleRead() bool {
	x := s.sampler
	x ^= x << 13
	x ^= x >> 17
	x ^= x << 5
	s.sampler = x
	n := uint32(s.srv.cfg.FallbackSample)
	if n&(n-1) == 0 {
		return x&(n-1) == 0 // a power of two, as the default: no division
	}
	return x%n == 0
}

// askKeyTTLs makes the read just added to the batch (its last slot) fill
// the cache, when the cache wants it (Cache.WantRead: seen before, and not
// filled since its keys last changed), so that on most reads the fallback
// costs two hashes rather than more commands upstream. A filled read goes
//
//	CLIENT TRACKING ON REDIRECT <tracking connection> OPTIN
//	CLIENT CACHING YES
//	<the read>
//	PTTL <key>            (one per key)
//
// The first two make Redis remember the read's keys and tell the tracking
// connection when any client changes one; only the keys keyfence caches are
// tracked, so writes to the others cost Redis nothing (BCAST tracking of
// the whole prefix cost every write a message). The PTTLs keep the entry
// from outliving a key (a reply alone does not say when its key expires).
// None of their replies is shown to the client. args are the client's
// arguments of the read.
func (s *session) askKeyTTLs(args [][]byte) {
	// Most reads leave here, before the slot is copied.
	if s.curCmd == nil || !s.curCmd.Cacheable() || len(args) < 2 || !s.sampleRead() {
		return
	}
	i := len(s.slots) - 1
	sl := s.slots[i]
	id := s.srv.res.trackID.Load()
	if id == 0 {
		return // no tracking connection: an entry would not hear of changes
	}
	mark, want := s.srv.res.cache.WantRead(s.cacheNS(), s.srv.res.ns, s.db, s.curCmd, args[1:], s.readAt)
	if !want {
		return
	}
	_, rargs, ok := s.cacheRequest(sl)
	if !ok {
		return
	}
	if len(fallback.KeysOf(sl.name, rargs[1:])) == 0 {
		return // WantRead wants no read of more than 16 keys
	}
	// CLIENT CACHING YES holds for the next command only: the read moves
	// behind it.
	sc := &s.cacheScratch
	sc.id = strconv.AppendInt(sc.id[:0], id, 10)
	sc.read = append(sc.read[:0], s.req[sl.from:sl.to]...)
	s.req = resp.AppendCommand(s.req[:sl.from], []byte("CLIENT"), []byte("TRACKING"), []byte("ON"), []byte("REDIRECT"), sc.id, []byte("OPTIN"))
	s.req = resp.AppendCommand(s.req, []byte("CLIENT"), []byte("CACHING"), []byte("YES"))
	sl.from = len(s.req)
	s.req = append(s.req, sc.read...)
	sl.to = len(s.req)
	s.nreq += 2
	s.slots[i] = slot{name: "client|tracking", upstream: true, hidden: true, readonly: true}
	s.slots = append(s.slots, slot{name: "client|caching", upstream: true, hidden: true, readonly: true}, sl)
	_, rargs, _ = s.cacheRequest(sl) // where the read is now
	keys := fallback.KeysOf(sl.name, rargs[1:])
	for _, k := range keys {
		s.req = resp.AppendCommand(s.req, []byte("PTTL"), k)
		s.nreq++
		s.slots = append(s.slots, slot{name: "pttl", upstream: true, hidden: true, readonly: true})
	}
	s.slots[i+2].ttls, s.slots[i+2].mark, s.slots[i+2].trackID = len(keys), mark, id
	sc.tracks = true
}

// tracked says the two hidden commands before the read whose reply is the
// i-th (askKeyTTLs) succeeded, and that id is still the tracking
// connection: only then will a change of the read's keys reach the cache.
func (s *session) tracked(i int, id int64) bool {
	ok := func(r []byte) bool { return len(r) > 0 && r[0] == '+' }
	return i >= 2 && ok(s.b.Reply(i-2)) && ok(s.b.Reply(i-1)) && s.srv.res.trackID.Load() == id
}

// keyTTL reads the hidden PTTL replies starting at reply index first and
// returns the shortest remaining TTL (0: none expires); ok is false when
// the entry must not be cached (no PTTLs asked, or one failed).
func (s *session) keyTTL(first, n int) (time.Duration, bool) {
	if n == 0 {
		return 0, false
	}
	var ttl time.Duration
	for j := 0; j < n; j++ {
		v, err := resp.Parse(s.b.Reply(first + j))
		if err != nil || v.Type != ':' {
			return 0, false
		}
		if v.Num > 0 && (ttl == 0 || time.Duration(v.Num)*time.Millisecond < ttl) {
			ttl = time.Duration(v.Num) * time.Millisecond
		}
	}
	return ttl, true
}

// fillFromReply caches a read's reply (its keys expire in keyTTL, 0: no
// expiry).
func (s *session) fillFromReply(sl slot, reply []byte, keyTTL time.Duration) {
	r := s.srv.res
	if r.cache == nil || len(reply) == 0 || reply[0] == '-' {
		return
	}
	if req, args, ok := s.cacheRequest(sl); ok {
		if r.cache.Store(s.cacheScratch.since, s.cacheNS(), s.db, req, fallback.KeysOf(sl.name, args[1:]), reply, keyTTL) {
			r.cache.Filled(sl.mark)
		}
	}
}

// cacheNS is the read cache's namespace for the session's replies: RESP3
// replies (maps, sets, doubles) are kept apart from RESP2 ones, so that an
// outage never answers a RESP2 client in RESP3 or the other way round.
// Invalidation goes by key name alone and reaches both.
func (s *session) cacheNS() string {
	if s.resp3 {
		return s.srv.res.ns3
	}
	return s.srv.res.ns
}

// fallbackReply answers a command whose upstream reply is missing: from
// the cache for a cacheable read with a fresh entry, else the error.
func (s *session) fallbackReply(sl slot, errText string) {
	if r := s.srv.res; r != nil && r.cache != nil {
		if req, _, ok := s.cacheRequest(sl); ok {
			if cached, hit := r.cache.Lookup(s.cacheNS(), s.db, req); hit {
				s.srv.fallbackHits.Add(1)
				s.out = s.rw.AppendReply(s.out, cached, sl.kind)
				return
			}
			s.srv.fallbackMisses.Add(1)
			errText = fallback.ErrMiss.Error()
		}
	}
	s.out = resp.AppendError(s.out, errText)
}

// track keeps open the connection that the read cache's invalidations
// are redirected to while ctx lives: filled reads register their keys with
// it (askKeyTTLs), and every invalidation it receives drops the cache
// entries of those keys. When it comes back after a loss, every entry is
// dropped, since invalidations may have been missed meanwhile; not when it
// is lost, because that is when an outage begins and the entries are what
// the fallback serves (each still bounded by its TTL). It retries with
// min(attempt × 100 ms, 3 s) between attempts.
func (s *Server) track(ctx context.Context) {
	r := s.res
	attempt, lost := 0, false
	for ctx.Err() == nil {
		err := s.trackOnce(ctx, func(id int64) {
			// The new id first: a fill registered with the old one and
			// stored after this is refused (session.tracked); one stored
			// before it is dropped by InvalidateAll.
			r.trackID.Store(id)
			if lost {
				r.cache.InvalidateAll()
			}
			attempt = 0
		})
		lost = true
		if ctx.Err() != nil {
			return
		}
		attempt++
		delay := min(time.Duration(attempt)*100*time.Millisecond, 3*time.Second)
		if errors.Is(err, errTrackingRefused) && attempt == 1 {
			// Not an outage: the upstream user lacks a command (an ACL
			// from before `keyfence acl` granted it). Nothing is cached
			// until it is granted.
			s.log.Warn("the read cache's invalidation connection was refused; nothing is cached", "err", err, "retry_in", delay)
		} else {
			s.log.Debug("cache tracking connection lost; entries dropped", "err", err, "retry_in", delay)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// trackingLost is upstream.Config.TrackingLost: a shared connection that
// registered reads for tracking is gone, and Redis with it forgets their
// keys, so their changes will never be announced. It ends the tracking
// connection, whose return (when upstream is there) drops every entry, as
// after any loss of invalidations. It never blocks.
func (s *Server) trackingLost() {
	r := s.res
	r.trackID.Store(0)
	if drop := r.dropTracking.Load(); drop != nil {
		(*drop)()
	}
}

// errTrackingRefused is upstream refusing the invalidation connection's
// set-up, as opposed to failing.
var errTrackingRefused = errors.New("refused")

func (s *Server) trackOnce(ctx context.Context, connected func(id int64)) error {
	r := s.res
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	nc, err := upstream.Dial(ctx, &s.cfg.Upstream, upstream.Key{DB: s.cfg.Upstream.DB, RESP3: true})
	if err != nil {
		return err
	}
	defer nc.Close()
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	// The connection tracks nothing itself: fills name it in their CLIENT
	// TRACKING … REDIRECT, and a RESP3 connection gets their invalidations
	// as push messages.
	if _, err := nc.Write(resp.AppendCommand(nil, []byte("CLIENT"), []byte("ID"))); err != nil {
		return err
	}
	rd := upstream.NewReplyReader(4 << 10)
	var id int64
	defer func() {
		r.trackID.CompareAndSwap(id, 0)
		r.dropTracking.CompareAndSwap(&cancel, nil)
	}()
	invalidate := s.invalidator()
	s.mu.Lock()
	loop := s.loop
	s.mu.Unlock()
	for {
		err := rd.Read(nc, func(reply []byte) error {
			if id != 0 {
				return invalidate(reply)
			}
			v, err := resp.Parse(reply)
			if err != nil || v.Type != ':' || v.Num <= 0 {
				return fmt.Errorf("%w: CLIENT ID: %s", errTrackingRefused, strings.TrimRight(string(reply), "\r\n"))
			}
			id = v.Num
			r.dropTracking.Store(&cancel)
			connected(id)
			return nil
		})
		if err != nil {
			return err
		}
		if id != 0 && loop != nil && rd.Buffered() == 0 {
			// The event loop reads the invalidations from here: woken
			// for each, this goroutine would wake the runtime's poller
			// and take a core from the loop for every batch of writes.
			return loop.track(ctx, nc, invalidate)
		}
	}
}

// invalidator returns what one message on the tracking connection does to
// the read cache; it keeps its scratch between calls.
func (s *Server) invalidator() func(reply []byte) error {
	var elems, keys [][]byte // SplitPush's and appendKeys's scratch
	return func(reply []byte) error {
		kind, e, ok := rewrite.SplitPush(reply, true, elems)
		elems = e
		if !ok || string(kind) != "invalidate" || len(elems) != 2 {
			return nil
		}
		if keys, ok = appendKeys(keys[:0], elems[1]); ok {
			s.res.cache.InvalidateKeys(keys)
		} else {
			s.res.cache.InvalidateAll() // FLUSHDB/FLUSHALL upstream, or a shape not understood
		}
		clear(keys)
		return nil
	}
}

// appendKeys appends each key of a tracking message's key array to keys,
// without decoding it into values (one message comes back per batch of
// writes); false for a null array or one it cannot read.
func appendKeys(keys [][]byte, arr []byte) ([][]byte, bool) {
	keys, ok := rewrite.AppendElems(keys, arr)
	if !ok {
		return keys, false
	}
	for i, e := range keys {
		if keys[i], ok = rewrite.BulkValue(e); !ok {
			return keys, false
		}
	}
	return keys, true
}
