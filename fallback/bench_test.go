package fallback

import (
	"strconv"
	"testing"
)

func BenchmarkLookupHit(b *testing.B) {
	c, _ := newTestCache(b, Defaults().TTL, Defaults().MaxBytes)
	key := []byte("tenant:acme:user:1234")
	req := AppendRequest(nil, "GET", [][]byte{key})
	c.Hold([][]byte{key})
	c.Store(c.Stamp(), "tenant:acme:", 0, req, [][]byte{key}, bulk("some value of a typical size, 64 bytes or so, for the benchmark"), 0)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, ok := c.Lookup("tenant:acme:", 0, req); !ok {
			b.Fatal("miss")
		}
	}
}

func BenchmarkStore(b *testing.B) {
	c, _ := newTestCache(b, Defaults().TTL, Defaults().MaxBytes)
	const n = 1024
	keys := make([][]byte, n)
	reqs := make([][]byte, n)
	for i := range n {
		keys[i] = []byte("tenant:acme:user:" + strconv.Itoa(i))
		reqs[i] = AppendRequest(nil, "GET", keys[i:i+1])
		c.Hold(keys[i : i+1])
	}
	reply := bulk("some value of a typical size, 64 bytes or so, for the benchmark")
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		j := i % n
		c.Store(c.Stamp(), "tenant:acme:", 0, reqs[j], keys[j:j+1], reply, 0)
		i++
	}
}

func BenchmarkInvalidate(b *testing.B) {
	c, _ := newTestCache(b, Defaults().TTL, Defaults().MaxBytes)
	const n = 1024 // keys written over and over: the steady state
	keys := make([][]byte, n)
	for i := range n {
		keys[i] = []byte("tenant:acme:user:" + strconv.Itoa(i))
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		c.Invalidate(keys[i%n])
		i++
	}
}

func BenchmarkBreakerAllow(b *testing.B) {
	br, err := NewBreaker(Defaults(), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		t, err := br.Allow()
		if err != nil {
			b.Fatal(err)
		}
		br.Done(t, true)
	}
}
