// Command loadgen produces the load redis-benchmark cannot: a mixed
// workload (80 % GET / 20 % SET, Zipf-distributed keys, values of 32 B to
// 4 KiB) spread over many tenants at once, either closed-loop or at a fixed
// rate with latency measured from each request's intended send time (no
// coordinated omission), and a connections mode that holds thousands of idle
// connections open and reports each server's resident memory per
// connection.
//
// Without -targets it starts its own redis-server, twemproxy and keyfence
// listeners (one per tenant) and measures them one after another; with
// -targets it measures addresses that are already running:
//
//	loadgen -mode mixed  -duration 10s
//	loadgen -mode rate   -rate 20000 -duration 10s
//	loadgen -mode conns  -conns 10000
//	loadgen -targets kf=127.0.0.1:6380@4242,127.0.0.1:6381 -targets direct=127.0.0.1:6379
//
// Two more modes measure one keyfence in gateway mode (--tenants-file), with
// a tenants file loadgen writes and every connection authenticated as its
// tenant: gateway-conns holds thousands of connections over many tenants
// and reports memory per tenant and per connection, connect times and a
// checked INCR round on every connection; gateway-quota measures a steady
// tenant at a fixed rate alone, next to a tenant flooding under its
// max_ops_per_second, and next to one flooding without a quota:
//
//	loadgen -mode gateway-conns -tenants 100 -conns 10000
//	loadgen -mode gateway-quota -quota 2000 -steady-rate 500
//
// Latency percentiles come from HDR histograms (github.com/HdrHistogram/
// hdrhistogram-go), one per worker, merged at the end.
package main
