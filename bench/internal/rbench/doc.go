// Package rbench runs redis-benchmark against one address and parses the
// CSV it prints (throughput and latency percentiles per test), so that the
// comparison uses the same, well-known load generator for every target.
package rbench
