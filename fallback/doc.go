// Package fallback will keep keyfence useful while upstream is down: a
// circuit breaker (gobreaker) and an in-memory read cache (ristretto) with
// the policy of what is cached and for how long. It is empty until the
// resilience work lands; see SPEC.md, Resilience.
package fallback
