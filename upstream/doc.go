// Package upstream is everything on the Redis side of keyfence: dialling
// and logging in (AUTH, HELLO, SELECT, TLS, a Sentinel's current master),
// the multiplexed connection that carries many sessions' batches in FIFO
// order (Conn), the pool that holds shared and pinned connections by
// database, protocol and node (Pool), a Redis Cluster's slot map
// (ClusterMap), and what keyfence asks a server about itself
// (PayloadVerdict).
//
// The data path's contract is RoundTripper: send a batch of requests, get
// its replies, like net/http's RoundTripper. A Conn is one; Redirects wraps
// a Cluster node's Conn and follows MOVED and ASK; the proxy's breaker and
// retries are applied around either.
package upstream
