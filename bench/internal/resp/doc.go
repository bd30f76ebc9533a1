// Package resp is the small, allocation-light RESP client the benchmark
// tools use to talk to Redis, twemproxy and keyfence: it writes commands
// straight into a buffered writer and reads replies without keeping them,
// so that the load generator measures the server rather than itself.
package resp
