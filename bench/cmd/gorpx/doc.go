// Command gorpx is a measurement baseline, not a proxy to run: the smallest
// Redis proxy built from the two libraries SPEC.md's "Dependencies" names —
// github.com/tidwall/redcon as the RESP server and one go-redis v9
// client's AsyncAutoPipeline upstream, with redis.NewRawCmd so that each
// reply's raw bytes go back to the client without being decoded and
// re-encoded. bench/cmd/compare runs it as the fourth target ("gorpx",
// `make bench-gorpx`) so that keyfence's own data path (package upstream:
// multiplexed upstream connections with its own RESP reader and writer) is
// measured side by side with the design the spec suggested starting from.
//
// It does only what redis-benchmark's get, set, incr, lpush, hset and mset
// tests need: it prefixes the key of GET, SET, INCR, LPUSH and HSET (argument
// 1) and every key of MSET with "tenant:bench:", as keyfence --tenant bench
// does, forwards every other command unchanged, and answers PING, CONFIG
// (CONFIG GET: an empty array) and QUIT itself. A client's pipeline (every
// command redcon parsed from one read) is submitted as a whole before the
// first reply is awaited, and the replies are written back in order. There
// is no authentication, no command filtering, no tenant isolation beyond
// those five commands, and no care for connection state (SELECT, MULTI,
// SUBSCRIBE): do not put it in front of anything but a benchmark.
//
// Usage:
//
//	gorpx -listen 127.0.0.1:6390 -redis 127.0.0.1:6379
package main
