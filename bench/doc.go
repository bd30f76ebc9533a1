// Package bench measures keyfence against direct Redis and twemproxy.
//
// It holds no code of its own: the tools live under cmd/ (compare drives
// redis-benchmark against all three side by side, loadgen produces the
// workloads redis-benchmark cannot) and their helpers under internal/.
// README.md says how to run them and how to read what they write to
// results/.
package bench
