// Package envflag gives the benchmark tools' flags defaults taken from
// environment variables, so that `make bench` can be tuned with either
// (BENCH_ROUNDS=1 make bench, or BENCH_FLAGS="-rounds 1"), and finds the
// repository root that default paths are relative to.
package envflag
