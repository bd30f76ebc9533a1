// Package fallback keeps keyfence useful while upstream Redis is down: a
// circuit breaker that stops sending requests
// to an upstream that keeps failing, and a bounded read cache that answers
// cacheable reads while the breaker is open. It also holds the policy of what is cached and for how
// long, and Guard, the breaker as a wrapper around any upstream.RoundTripper.
// It does no I/O of its own: the proxy owns the command table and the
// connections.
//
// # Breaker
//
// [NewBreaker] builds the classic three-state breaker. It opens after
// [Config.FailureThreshold] consecutive failures (5), lets
// [Config.HalfOpenProbes] probes (1) through after [Config.OpenTimeout]
// (30 s), closes when they all succeed and re-opens on a failed probe. Call
// [Breaker.Allow] before sending a request upstream and [Breaker.Done] with
// its ticket exactly once with its outcome; while closed, both are a few
// atomic loads. Only connection-level failures (refused, reset, timed out)
// should be reported as failures: a Redis error reply
// such as WRONGTYPE proves that upstream is alive. [Breaker.Reset] closes
// it at once, for a caller that has seen upstream answer by its own means
// (the proxy's recovery probe), so that clients need not wait out the open
// timeout.
//
// # Cache
//
// An entry is the raw reply to one cacheable request, keyed by
// (namespace, db, request bytes); the namespace is the tenant prefix, so a
// tenant's lookup never finds another tenant's entry, and the stored
// namespace, db and request are compared on every hit, so not even a hash
// collision can cross tenants. Entries live min(--fallback-ttl, the key's TTL
// when known) and the whole cache is bounded by [Config.MaxBytes].
//
// Entries are found by request, not by the Redis keys they depend on, so
// invalidation works with a logical clock instead of deletion: each
// [Cache.Invalidate] of a key records a new clock value in the key's slot (a
// fixed array indexed by hash, lock-free; keys sharing a slot invalidate
// each other, which costs a miss and never a stale hit), each entry
// remembers the clock value ([Stamp]) from before its data was read, and an
// entry is fresh only while none of its keys' slots holds a newer value.
// This closes the classic race in which a read reply that left upstream
// before a write is cached after the write's invalidation. Which reads are
// filled at all is decided by [Cache.WantRead] (from a read's second
// sighting, and not again while its entry is current), so that most reads
// cost the data path two hashes and no request upstream. The proxy's side
// of the protocol:
//
//   - before sending a cacheable read: mark, want := cache.WantRead(...);
//     when wanted, have Redis track the read's keys for the invalidation
//     connection (CLIENT TRACKING ON REDIRECT <id> OPTIN, CLIENT CACHING
//     YES just before it) and send a PTTL of each key after it
//   - before sending a batch: since := cache.Stamp()
//   - on its reply, when the tracking commands succeeded: cache.Store(since,
//     ns, db, req, KeysOf(cmd, args), reply, keyTTL), then cache.Filled(mark)
//   - before sending a batch's writes, whatever becomes of them (a write that
//     failed after it was sent may still have been applied):
//     cache.InvalidateKeys(the keys written); writes never fill
//   - for the keys of an invalidation message: cache.InvalidateKeys(keys);
//     for a message with a null key list (FLUSHALL, FLUSHDB upstream) and
//     whenever tracking may have lapsed (the invalidation connection came
//     back, or a connection that registered reads was lost: Redis forgets
//     what it tracked for it): cache.InvalidateAll()
//   - while the breaker is open, or when a read failed on a connection
//     error: cache.Lookup(ns, db, req), and [ErrMiss] on a miss
//
// Invalidation is by upstream key name alone, without namespace or db:
// upstream names already carry the tenant prefix, and tracking messages
// carry neither the tenant nor the db. A write to key k in db 0 therefore
// also invalidates k in db 3, which costs a miss and nothing else.
//
// The reply bytes are opaque: a proxy that stores replies in both RESP2 and
// RESP3 forms must make the protocol part of the namespace (for example
// "tenant:acme:|3"), which is safe because invalidation does not use it.
// Request bytes are compared exactly; [AppendRequest] gives the canonical form
// (upper-case command name), so that a client's "get k" and "GET k" meet on
// the same entry.
//
// Caveats that follow from the design: a TTL or PTTL reply is as of the
// moment it was cached (at most --fallback-ttl old); an entry lives at most
// --fallback-ttl, and never past its keys' TTLs, which the proxy asks upstream
// (PTTL) beside every read it fills.
//
// # Errors
//
// The two errors the proxy gives clients because of this package have one
// stable wording each (the proxy writes them as "-" + Error()):
//
//	-TRYAGAIN keyfence: upstream unavailable (circuit breaker open); retry later
//	-TRYAGAIN keyfence: upstream unavailable and no fresh cached copy; retry later
//
// The first ([ErrOpen]) answers any request that cannot be served while the
// breaker is open (writes, non-cacheable reads); the second ([ErrMiss]) a
// cacheable read whose cached copy is absent, expired or invalidated. The
// prefix is Redis's own TRYAGAIN ("cannot be served now, the same request
// may succeed later"): client libraries treat it as retryable (go-redis
// retries it with backoff up to MaxRetries), which is what a client should
// do during a short outage, and nothing else about it is cluster-specific.
package fallback
