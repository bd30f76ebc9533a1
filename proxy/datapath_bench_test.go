package proxy

import (
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/keyfence/keyfence/fallback"
	"github.com/keyfence/keyfence/resp"
)

// BenchmarkDataPath is one client's GET or SET round trips through keyfence
// to the package's redis-server, pipelined 1 or 16 deep, with and without
// the read fallback. Besides time per command it reports allocs/op for the
// whole process, counted from runtime.MemStats around the timed loop: the
// session, the upstream writer and reader and the metrics are all included,
// and the client here allocates nothing. The hot path's target is 0.
//
//	go test -run '^$' -bench DataPath -benchtime 20000x ./proxy/
func BenchmarkDataPath(b *testing.B) {
	for _, withFallback := range []bool{false, true} {
		for _, cmd := range []string{"GET", "SET"} {
			for _, depth := range []int{1, 16} {
				name := cmd + "/P" + strconv.Itoa(depth) + "/fallback=" + strconv.FormatBool(withFallback)
				b.Run(name, func(b *testing.B) { benchDataPath(b, cmd, depth, withFallback) })
			}
		}
	}
}

func benchDataPath(b *testing.B, cmd string, depth int, withFallback bool) {
	addr := startProxy(b, testRedis(b), func(c *Config) {
		if withFallback {
			cfg := fallback.Defaults()
			c.Fallback, c.FallbackCache = &cfg, true
		}
	})
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()

	// A few keys, each read many times: the fallback's steady state, where
	// reads are admitted and their entries current.
	var req []byte
	for i := range depth {
		key := []byte("key:" + strconv.Itoa(i%4))
		if cmd == "GET" {
			req = resp.AppendCommand(req, []byte("GET"), key)
		} else {
			req = resp.AppendCommand(req, []byte("SET"), key, []byte("value"))
		}
	}
	buf := make([]byte, 64<<10)
	roundTrip := func() {
		if _, err := nc.Write(req); err != nil {
			b.Fatal(err)
		}
		have, replies := 0, 0
		for replies < depth {
			n, err := nc.Read(buf[have:])
			if err != nil {
				b.Fatal(err)
			}
			have += n
			pos := 0
			for replies < depth {
				m, err := resp.ReplyLen(buf[pos:have])
				if err != nil {
					b.Fatal(err)
				}
				if m == 0 {
					break
				}
				if buf[pos] == '-' {
					b.Fatalf("error reply %q", buf[pos:pos+m])
				}
				pos += m
				replies++
			}
			have = copy(buf, buf[pos:have])
		}
	}
	// Warm up: connections dialled, buffers grown, cache entries filled.
	for range 200 {
		roundTrip()
	}
	time.Sleep(50 * time.Millisecond) // let the tracking connection settle
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for range b.N {
		roundTrip()
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	ops := float64(b.N * depth)
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/ops, "allocs/cmd")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/ops, "ns/cmd")
}
