// Package proxy is keyfence's server: it accepts Redis clients, runs one
// session per client connection, and carries each command through the
// pipeline rewrite → forward → strip.
//
// The moving parts, in the order a command meets them:
//   - server.go: listener, client limit, graceful drain, counters.
//   - loop.go, loop_client.go, loop_upstream.go: the event loop. One
//     goroutine over epoll serves the sessions of a plain-TCP sidecar while
//     they send keyed commands only (reading clients, one upstream write
//     per turn, replies written back); a session's first command that needs
//     more hands it to a goroutine of its own.
//   - session.go: one client's state and its read → dispatch → reply loop,
//     on its own goroutine or driven by the event loop.
//   - dispatch.go: what happens to each command, by its policy; MULTI/EXEC,
//     WATCH and blocking commands on pinned connections.
//   - emulate.go, emulate_keyspace.go: the commands keyfence answers itself,
//     per tenant (HELLO, AUTH, SELECT, INFO, CLIENT, COMMAND, DBSIZE, FLUSH*…).
//   - scripts.go: EVAL/EVALSHA/SCRIPT run as FCALL of the Lua sandbox
//     library (rewrite/sandbox.go); a NOSCRIPT from it is healed.
//   - functions.go: Redis 7 functions, a namespace per tenant kept by the
//     same sandbox library (rewrite/functions.go), FCALL run through it.
//   - subscribe.go: subscriber mode, with client patterns matched here.
//   - sort.go: SORT … BY/GET run by keyfence in the tenant's namespace.
//   - package upstream: multiplexed upstream connections and their pool; a
//     session either shares one (ordinary commands, autopipelined with every
//     other client) or pins one for stateful work. tls.go builds the TLS
//     settings; cluster.go routes commands to a Redis Cluster's masters
//     (upstream's ClusterMap says which; its Redirects follows MOVED/ASK).
//   - resilience.go: circuit breaker, read cache and its tracking connection;
//     probe.go closes the breaker as soon as upstream answers again.
//   - gateway.go, gateway_session.go: gateway mode. One listener for many
//     tenants (package tenants reads their file): a client waits in the
//     lobby, a Server that answers only AUTH, HELLO, QUIT and RESET, and
//     AUTH moves its session into the tenant's own Server, after which it
//     is a session like any other. Tenants' quotas pace their sessions.
package proxy
