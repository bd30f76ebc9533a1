// Command devrun is what `make run` runs: it gives bin/keyfence a Redis to
// talk to and runs it in the foreground for a local demo.
//
// The upstream is a real redis-server from PATH on a free loopback port when
// one is installed, and otherwise an embedded, in-process miniredis, so that
// `make run` works on a machine with nothing but Go. One line on stdout says
// which it is. keyfence is started as
//
//	bin/keyfence --tenant demo --listen 127.0.0.1:6380
//
// with REDIS_HOST and REDIS_PORT pointing at that upstream (other REDIS_*
// variables of the caller's environment are dropped, so that a REDIS_URL or
// REDIS_SENTINELS left in the shell cannot send the demo elsewhere). Its
// output is passed through, SIGINT and SIGTERM are forwarded to it, and when
// it exits the upstream is stopped and devrun exits with keyfence's status.
//
// Flags: --keyfence (path of the binary, default bin/keyfence), --listen
// (default 127.0.0.1:6380) and --tenant (default demo).
package main
