package main

import (
	"io"
	"testing"
)

func TestRequestsAt(t *testing.T) {
	t.Setenv("BENCH_REQUESTS", "") // the defaults, whatever the caller's environment
	t.Setenv("BENCH_REQUESTS_PIPELINED_FACTOR", "")
	for _, tc := range []struct {
		args     []string
		pipeline int
		want     int
	}{
		{nil, 1, 200000},
		{nil, 16, 1000000},
		{[]string{"-n", "20000"}, 16, 100000},
		{[]string{"-n", "20000", "-n-pipelined-factor", "1"}, 16, 20000},
		{[]string{"-n", "20000", "-n-pipelined-factor", "3"}, 1, 20000},
	} {
		c, err := parseFlags(tc.args, io.Discard)
		if err != nil {
			t.Fatalf("parseFlags(%q): %v", tc.args, err)
		}
		if got := c.requestsAt(tc.pipeline); got != tc.want {
			t.Errorf("parseFlags(%q).requestsAt(%d) = %d, want %d", tc.args, tc.pipeline, got, tc.want)
		}
	}
	if _, err := parseFlags([]string{"-n-pipelined-factor", "0"}, io.Discard); err == nil {
		t.Error("-n-pipelined-factor 0: want an error")
	}
}
