// Command compare runs redis-benchmark against direct Redis, twemproxy and
// keyfence, all in front of one Redis it starts itself, in interleaved
// rounds with identical settings, and reports median throughput, p50/p99
// latency, each target's and redis-benchmark's own CPU per request, and
// keyfence's ratio to the other two as a terminal table, Markdown, JSON and
// an SVG chart under bench/results/.
//
// Usage (from the repository root; `make bench` does this):
//
//	compare [-rounds 3] [-n 200000] [-n-pipelined-factor 5] [-c 50] [-threads 1] [-pipelines 1,16]
//	        [-tests get,set,incr,lpush,hset,mset] [-keyfence bin/keyfence]
//	        [-gorpx]   (also the go-redis baseline, bench/cmd/gorpx)
//
// Every flag also reads an environment variable (see -help). A quick smoke
// run: compare -n 20000 -rounds 1.
package main
