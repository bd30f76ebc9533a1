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

func TestThreadsFlag(t *testing.T) {
	for _, tc := range []struct {
		env     string
		args    []string
		want    int
		wantErr bool
	}{
		{"", nil, 1, false},
		{"", []string{"-threads", "2"}, 2, false},
		{"3", nil, 3, false},
		{"3", []string{"-threads", "1"}, 1, false},
		{"", []string{"-threads", "0"}, 0, true},
	} {
		t.Setenv("BENCH_THREADS", tc.env)
		c, err := parseFlags(tc.args, io.Discard)
		switch {
		case tc.wantErr && err == nil:
			t.Errorf("BENCH_THREADS=%q %q: want an error", tc.env, tc.args)
		case !tc.wantErr && err != nil:
			t.Errorf("BENCH_THREADS=%q %q: %v", tc.env, tc.args, err)
		case !tc.wantErr && c.threads != tc.want:
			t.Errorf("BENCH_THREADS=%q %q: threads %d, want %d", tc.env, tc.args, c.threads, tc.want)
		}
	}
}
