package proxy

import (
	"context"
	"testing"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/telemetry"
	"github.com/keyfence/keyfence/upstream"
)

func TestParseInfoMemory(t *testing.T) {
	tests := []struct {
		name string
		info string
		want telemetry.UpstreamMemory
		bad  bool
	}{
		{name: "redis 7", info: "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:4194304\r\nmaxmemory_human:4.00M\r\n",
			want: telemetry.UpstreamMemory{Used: 1 << 20, Max: 4 << 20, Known: true}},
		{name: "no limit", info: "used_memory:10\nmaxmemory:0\n", want: telemetry.UpstreamMemory{Used: 10, Max: 0, Known: true}},
		{name: "missing maxmemory", info: "used_memory:10\r\n", bad: true},
		{name: "not a number", info: "used_memory:ten\r\nmaxmemory:0\r\n", bad: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseInfoMemory([]byte(tc.info))
			if tc.bad {
				if err == nil {
					t.Fatalf("no error for %q", tc.info)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// The probe against a real Redis: its maxmemory as set, and a failure once
// it is gone.
func TestProbeUpstream(t *testing.T) {
	srv := redistest.StartT(t, redistest.Options{})
	c := srv.Client()
	ctx := context.Background()
	if err := c.ConfigSet(ctx, "maxmemory", "64mb").Err(); err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Listen: "127.0.0.1:0", Tenant: "probe", Upstream: upstream.Config{Addr: srv.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	mem, err := p.ProbeUpstream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !mem.Known || mem.Max != 64<<20 || mem.Used <= 0 || mem.Used >= mem.Max {
		t.Fatalf("memory %+v, want used in (0, 64 MiB) and maxmemory 64 MiB", mem)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ProbeUpstream(ctx); err == nil {
		t.Fatal("probe of a stopped Redis succeeded")
	}
}
