// Package hostile is keyfence's hostile-tenant suite: two tenants, acme (the
// attacker) and beta (the victim), each behind its own in-process keyfence,
// share one real redis-server. acme sends a corpus of escape attempts —
// Lua sandbox escapes, key positions, pub/sub patterns and keyspace
// channels, protocol abuse, resource exhaustion — as raw RESP through its
// keyfence. Around every attempt the suite checks, from the upstream's own
// view, that beta's data of every type is untouched, that no key was created
// outside the two namespaces, that beta's subscribers and blocked BLPOP
// received nothing from acme, that nothing acme read names beta or carries
// beta's data, and that Redis and both keyfences keep serving.
//
// The corpus runs in several modes (fence_test.go's modes), all at once:
// with a sidecar keyfence per tenant logged in upstream as the unrestricted
// default user (keyfence alone holds the fence) and as per-tenant ACL users
// (defence in depth); and with acme and beta as two tenants of one gateway
// keyfence, the only boundary between them, where every connection of
// either authenticates as its tenant first and the gateway category
// attacks the lobby, AUTH and tenant switching (with per-tenant upstream
// users too, for the gateway and key categories). Every attempt is its own
// subtest, named "<category>/<name>", whose failure says what leaked. Add
// every new attack found to the corpus: it only grows.
package hostile
