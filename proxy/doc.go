// Package proxy is keyfence's server: it accepts Redis clients, runs one
// session per client connection, and carries each command through the
// pipeline rewrite → forward → strip.
//
// The moving parts, in the order a command meets them:
//   - server.go: listener, client limit, graceful drain.
//   - session.go: one client's state and its read → dispatch → reply loop.
//   - dispatch.go: what happens to each command, by its policy.
//   - emulate.go: the commands keyfence answers itself, per tenant.
//   - upstream.go: multiplexed upstream connections; a session either shares
//     one (ordinary commands, autopipelined with every other client) or pins
//     one for stateful work (MULTI/WATCH, blocking commands).
package proxy
