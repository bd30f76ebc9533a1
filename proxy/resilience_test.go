package proxy_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyfence/keyfence/fallback"
	"github.com/keyfence/keyfence/internal/faultproxy"
	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/proxy"
)

// startWithFaults runs keyfence with the breaker and read cache, in front of
// a fault injector in front of a real Redis.
func startWithFaults(t *testing.T, tenant string) (*redistest.Server, *faultproxy.Proxy, string, *proxy.Server) {
	return startWithFaultsTimeout(t, tenant, 0)
}

func startWithFaultsTimeout(t *testing.T, tenant string, timeout time.Duration) (*redistest.Server, *faultproxy.Proxy, string, *proxy.Server) {
	t.Helper()
	srv := redistest.StartT(t, redistest.Options{})
	fp := faultproxy.StartT(t, srv.Addr())
	cfg := fallback.Defaults()
	cfg.FailureThreshold = 3
	cfg.OpenTimeout = 300 * time.Millisecond
	cfg.TTL = time.Minute
	addr, kf := startKeyfence(t, srv, tenant, func(c *proxy.Config) {
		c.Upstream.Addr = fp.Addr()
		c.Upstream.DialTimeout = 200 * time.Millisecond
		c.Upstream.Timeout = timeout
		c.Fallback = &cfg
		c.FallbackCache = true
		c.FallbackSample = 1 // every read is a sighting: the test reads each key twice
	})
	return srv, fp, addr, kf
}

// While upstream is down, reads whose keys are cached are answered from the
// cache, other reads and all writes fail fast with TRYAGAIN, and service
// comes back after the half-open probe once upstream is back.
func TestFallbackServesCachedReadsDuringOutage(t *testing.T) {
	srv, fp, addr, kf := startWithFaults(t, "fb")
	c := dialRaw(t, addr)
	if got := c.do("SET", "greeting", "hello"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	c.do("HSET", "user", "name", "ada")
	c.do("SET", "short", "lived", "PX", "1500")
	c.do("SET", "once", "read once")
	// keyfence's own writes come back as tracking invalidations too; the
	// reads after them fill the cache, from a read's second sighting on
	// (fallback.Cache.WantRead): a read seen once is not worth a PTTL.
	time.Sleep(200 * time.Millisecond)
	for range 2 {
		if got := c.do("GET", "short"); got != "$5\r\nlived\r\n" {
			t.Fatal(got)
		}
		if got := c.do("GET", "greeting"); got != "$5\r\nhello\r\n" {
			t.Fatal(got)
		}
	}
	if got := c.do("GET", "once"); got != "$9\r\nread once\r\n" {
		t.Fatal(got)
	}
	// The HGETALL must be cached with ada before the change below, or the
	// wait for its invalidation would pass at once and the invalidation
	// could land after the refill (a miss in the outage, not a stale hit).
	userReq := fallback.AppendRequest(nil, "HGETALL", [][]byte{[]byte("tenant:fb:user")})
	waitFor(t, "HGETALL cached", 5*time.Second, func() bool {
		if got := c.do("HGETALL", "user"); !strings.Contains(got, "ada") {
			t.Fatalf("HGETALL: %q", got)
		}
		cached, hit := kf.Cached(0, userReq)
		return hit && strings.Contains(string(cached), "ada")
	})
	// Another client changes the hash behind keyfence's back: tracking must
	// drop the cached HGETALL, or the outage would serve a stale value.
	if err := srv.Client().HSet(context.Background(), "tenant:fb:user", "name", "grace").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "tracking invalidation", 5*time.Second, func() bool {
		_, hit := kf.Cached(0, userReq)
		return !hit
	})
	// Cached again, now with grace: two sightings after the change.
	waitFor(t, "HGETALL cached again", 5*time.Second, func() bool {
		if got := c.do("HGETALL", "user"); !strings.Contains(got, "grace") {
			t.Fatalf("HGETALL after the change: %q", got)
		}
		cached, hit := kf.Cached(0, userReq)
		return hit && strings.Contains(string(cached), "grace")
	})

	if got := c.do("GET", "short"); got != "$5\r\nlived\r\n" {
		t.Fatal(got)
	}
	if err := fp.SetMode(faultproxy.Refuse); err != nil {
		t.Fatal(err)
	}
	c2 := dialRaw(t, addr) // a new client during the outage
	if got := c2.do("GET", "short"); got != "$5\r\nlived\r\n" {
		t.Fatalf("GET of a key that has not expired yet, during the outage: %q", got)
	}
	// With upstream unreachable no invalidation can arrive: only the TTL
	// read beside the GET (PTTL) keeps the entry from outliving its key.
	time.Sleep(1600 * time.Millisecond)
	if got := c2.do("GET", "short"); got != "-"+fallback.ErrMiss.Error()+"\r\n" {
		t.Fatalf("GET of an expired key during the outage: %q", got)
	}
	for i := 0; i < 5; i++ {
		if got := c2.do("GET", "greeting"); got != "$5\r\nhello\r\n" {
			t.Fatalf("GET during the outage (%d): %q, want the value read before it", i, got)
		}
	}
	if got := c2.do("GET", "once"); got != "-"+fallback.ErrMiss.Error()+"\r\n" {
		t.Fatalf("GET during the outage of a key read only once before it: %q, want a miss", got)
	}
	if got := c2.do("HGETALL", "user"); !strings.Contains(got, "grace") || strings.Contains(got, "ada") {
		t.Fatalf("HGETALL during the outage: %q", got)
	}
	waitFor(t, "breaker open", 5*time.Second, func() bool {
		c2.do("GET", "never-cached")
		return kf.Stats().Breaker == "open"
	})
	if got := c2.do("INFO", "keyfence"); !strings.Contains(got, "circuit_breaker:open") {
		t.Fatalf("INFO keyfence while open: %q", got)
	}
	if got := c2.do("GET", "never-cached"); got != "-"+fallback.ErrMiss.Error()+"\r\n" {
		t.Fatalf("uncached GET while open: %q", got)
	}
	start := time.Now()
	if got := c2.do("SET", "greeting", "changed"); got != "-"+fallback.ErrOpen.Error()+"\r\n" {
		t.Fatalf("SET while open: %q", got)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("a write while the breaker is open took %v: it must fail fast", d)
	}
	if err := fp.SetMode(faultproxy.Pass); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "service back after the half-open probe", 10*time.Second, func() bool {
		return c2.do("SET", "greeting", "again") == "+OK\r\n"
	})
	if st := kf.Stats(); st.Breaker != "closed" || st.FallbackHits < 6 || st.FallbackMisses < 2 {
		t.Fatalf("after the outage: %+v", st)
	}
	if v, _ := srv.Client().Get(context.Background(), "tenant:fb:greeting").Result(); v != "again" {
		t.Fatalf("upstream greeting = %q: the write refused during the outage must not have landed", v)
	}
	st := kf.Stats()
	t.Logf("fallback: %d reads served from the cache, %d misses, breaker %s", st.FallbackHits, st.FallbackMisses, st.Breaker)
}

// Fifty clients run INCR and SET through a series of faults. Every reply a
// client was given must be true upstream afterwards: no acknowledged write
// lost, no reply given to another client or out of order.
func TestAcknowledgedWritesSurviveFaults(t *testing.T) {
	srv, fp, addr, _ := startWithFaultsTimeout(t, "ft", 300*time.Millisecond)
	const clients = 50
	var (
		mu        sync.Mutex
		attempted int
		ackCount  int
		acked     = map[string]string{} // key → value upstream must hold
		counters  = map[string]int64{}  // key → highest INCR acknowledged
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			c := dialRaw(t, addr)
			ctr := fmt.Sprintf("ctr%d", id)
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				key, val := fmt.Sprintf("k%d", id), fmt.Sprintf("v%d-%d", id, n)
				c.send("SET", key, val)
				c.send("INCR", ctr)
				r1, r2 := c.reply(5*time.Second), c.reply(5*time.Second)
				mu.Lock()
				attempted += 2
				if r1 == "+OK\r\n" {
					acked[key] = val
					ackCount++
				} else if !strings.HasPrefix(r1, "-") {
					t.Errorf("client %d: SET answered %q", id, r1)
				}
				if strings.HasPrefix(r2, ":") {
					ackCount++
					var v int64
					fmt.Sscanf(r2, ":%d", &v)
					if v <= counters[ctr] {
						t.Errorf("client %d: INCR went from %d to %d: a reply out of order or another client's", id, counters[ctr], v)
					}
					counters[ctr] = v
				}
				mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}(i)
	}
	for _, m := range []faultproxy.Mode{faultproxy.Drop, faultproxy.Pass, faultproxy.Delay(20 * time.Millisecond), faultproxy.Pass,
		faultproxy.ResetMidReply, faultproxy.Pass, faultproxy.Blackhole, faultproxy.Pass, faultproxy.Refuse, faultproxy.Pass} {
		if err := fp.SetMode(m); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	time.Sleep(time.Second) // the half-open probe closes the breaker
	close(stop)
	wg.Wait()
	ctx := context.Background()
	mu.Lock()
	defer mu.Unlock()
	found := 0
	for key, val := range acked {
		// A later SET of the same key may have failed after it reached
		// Redis: upstream holds the acknowledged value or a later one.
		got, err := srv.Client().Get(ctx, "tenant:ft:"+key).Result()
		if err != nil {
			t.Errorf("acknowledged key %s lost upstream: %v", key, err)
			continue
		}
		if got != val && !laterValue(got, val) {
			t.Errorf("key %s: upstream %q, acknowledged %q", key, got, val)
			continue
		}
		found++
	}
	for ctr, v := range counters {
		got, err := srv.Client().Get(ctx, "tenant:ft:"+ctr).Int64()
		if err != nil || got < v {
			t.Errorf("counter %s: upstream %d (%v), acknowledged %d", ctr, got, err, v)
		}
	}
	t.Logf("faults: %d writes attempted, %d acknowledged; the last acknowledged SET of all %d keys (%d found) and all %d counters hold upstream",
		attempted, ackCount, len(acked), found, len(counters))
}

// laterValue reports whether got ("v<id>-<n>") was written after want.
func laterValue(got, want string) bool {
	var gi, gn, wi, wn int
	if _, err := fmt.Sscanf(got, "v%d-%d", &gi, &gn); err != nil {
		return false
	}
	if _, err := fmt.Sscanf(want, "v%d-%d", &wi, &wn); err != nil {
		return false
	}
	return gi == wi && gn > wn
}

// A read that times out is sent again (twice, on fresh connections); a
// write never is: it may have reached Redis.
func TestTimedOutReadsAreRetriedWritesAreNot(t *testing.T) {
	srv := redistest.StartT(t, redistest.Options{})
	fp := faultproxy.StartT(t, srv.Addr())
	addr, _ := startKeyfence(t, srv, "to", func(c *proxy.Config) {
		c.Upstream.Addr = fp.Addr()
		c.Upstream.Timeout = 150 * time.Millisecond
	})
	c := dialRaw(t, addr)
	if got := c.do("SET", "k", "v"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	if err := fp.SetMode(faultproxy.Blackhole); err != nil {
		t.Fatal(err)
	}
	before := fp.Stats().Accepted
	if got := c.do("GET", "k"); !strings.Contains(got, "Redis did not answer in time") {
		t.Fatalf("GET with upstream blackholed: %q", got)
	}
	if n := fp.Stats().Accepted - before; n != 2 {
		t.Fatalf("GET: %d new upstream connections, want 2 (the first attempt reused the open one, then two retries)", n)
	}
	before = fp.Stats().Accepted
	if got := c.do("SET", "k", "w"); !strings.Contains(got, "Redis did not answer in time") {
		t.Fatalf("SET with upstream blackholed: %q", got)
	}
	if n := fp.Stats().Accepted - before; n != 1 {
		t.Fatalf("SET: %d new upstream connections, want 1: a write must not be sent twice", n)
	}
	if err := fp.SetMode(faultproxy.Pass); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "service back", 5*time.Second, func() bool { return strings.HasPrefix(c.do("GET", "k"), "$") })
}

// The breaker alone (keyfence's default, without the read cache): after
// FailureThreshold failures every command fails fast with TRYAGAIN, and the
// half-open probe brings service back.
func TestBreakerWithoutCacheFailsFast(t *testing.T) {
	srv := redistest.StartT(t, redistest.Options{})
	fp := faultproxy.StartT(t, srv.Addr())
	cfg := fallback.Defaults()
	cfg.FailureThreshold, cfg.OpenTimeout = 3, 300*time.Millisecond
	addr, kf := startKeyfence(t, srv, "br", func(c *proxy.Config) {
		c.Upstream.Addr = fp.Addr()
		c.Fallback = &cfg
	})
	c := dialRaw(t, addr)
	if got := c.do("SET", "k", "v"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	if err := fp.SetMode(faultproxy.Refuse); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		// The first may find the old connection closed, the next ones the
		// port refusing: both are upstream failures.
		if got := c.do("GET", "k"); !strings.HasPrefix(got, "-ERR keyfence: upstream unavailable") {
			t.Fatalf("GET %d with upstream refusing: %q", i, got)
		}
	}
	if st := kf.Stats(); st.Breaker != "open" {
		t.Fatalf("after 3 failures the breaker is %q", st.Breaker)
	}
	if got := c.do("GET", "k"); got != "-"+fallback.ErrOpen.Error()+"\r\n" {
		t.Fatalf("GET while open: %q", got)
	}
	if err := fp.SetMode(faultproxy.Pass); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the half-open probe to close the breaker", 5*time.Second, func() bool {
		return c.do("GET", "k") == "$1\r\nv\r\n"
	})
}

// A read cached from a RESP3 session is never an outage's answer to a RESP2
// client (a map where it expects a flat array), and the RESP3 client still
// gets it; fallback/doc.go asks for the protocol in the namespace.
func TestFallbackKeepsProtocolsApart(t *testing.T) {
	_, fp, addr, kf := startWithFaults(t, "fp3")
	c3 := dialRaw(t, addr)
	if got := c3.do("HELLO", "3"); !strings.HasPrefix(got, "%") {
		t.Fatalf("HELLO 3: %q", got)
	}
	c3.do("HSET", "h", "f", "v")
	time.Sleep(200 * time.Millisecond) // keyfence's own write's invalidation first
	const mapReply = "%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
	req := fallback.AppendRequest(nil, "HGETALL", [][]byte{[]byte("tenant:fp3:h")})
	waitFor(t, "HGETALL cached from RESP3", 5*time.Second, func() bool {
		if got := c3.do("HGETALL", "h"); got != mapReply {
			t.Fatalf("HGETALL in RESP3: %q", got)
		}
		_, hit3 := kf.CachedRESP3(0, req)
		_, hit2 := kf.Cached(0, req)
		return hit3 || hit2
	})
	if cached, hit := kf.Cached(0, req); hit {
		t.Fatalf("the RESP3 reply is in the RESP2 entries: %q", cached)
	}
	c2 := dialRaw(t, addr)
	if got := c2.do("PING"); got != "+PONG\r\n" {
		t.Fatal(got)
	}
	if err := fp.SetMode(faultproxy.Refuse); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a RESP2 HGETALL refused in the outage", 5*time.Second, func() bool {
		got := c2.do("HGETALL", "h")
		if strings.HasPrefix(got, "%") {
			t.Fatalf("RESP2 client answered in RESP3 from the cache: %q", got)
		}
		return strings.HasPrefix(got, "-")
	})
	if got := c3.do("HGETALL", "h"); got != mapReply {
		t.Fatalf("RESP3 HGETALL in the outage: %q, want the cached map", got)
	}
}
