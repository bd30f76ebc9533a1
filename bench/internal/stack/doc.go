// Package stack starts and stops the servers a benchmark runs against: one
// redis-server, a twemproxy (nutcracker) in front of it and keyfence
// processes in front of it (and, for compare -gorpx, the bench/cmd/gorpx
// baseline), all on free loopback ports. Every process it starts is stopped
// by Stack.Stop, and is killed by the kernel if the benchmark itself dies
// first.
package stack
