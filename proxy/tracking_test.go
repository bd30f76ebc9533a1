package proxy_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyfence/keyfence/fallback"
	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/proxy"
)

// The read cache's tracking: filled reads register their keys with
// CLIENT TRACKING … REDIRECT <tracking connection> OPTIN (session.askKeyTTLs).
// These tests run against a real Redis, through the event loop and through
// goroutine sessions, whose shared connections are read by different code.

// startCached runs keyfence with the read cache in front of its own Redis;
// every read is a sighting, so a key read twice is cached.
func startCached(t *testing.T, tenant string, goroutines bool) (*redistest.Server, string, *proxy.Server) {
	t.Helper()
	srv := redistest.StartT(t, redistest.Options{})
	cfg := fallback.Defaults()
	cfg.TTL = time.Minute
	addr, kf := startKeyfence(t, srv, tenant, func(c *proxy.Config) {
		c.Fallback = &cfg
		c.FallbackCache = true
		c.FallbackSample = 1
		c.GoroutinePerClient = goroutines
	})
	waitFor(t, "the tracking connection", 5*time.Second, func() bool { return kf.TrackingID() != 0 })
	return srv, addr, kf
}

// eachSessionKind runs f as a subtest through the event loop and through
// goroutine sessions.
func eachSessionKind(t *testing.T, f func(t *testing.T, goroutines bool)) {
	for _, kind := range []struct {
		name       string
		goroutines bool
	}{{"event loop", false}, {"goroutines", true}} {
		t.Run(kind.name, func(t *testing.T) { f(t, kind.goroutines) })
	}
}

// fill reads key through c until the cache holds want for it.
func fill(t *testing.T, c *rawClient, kf *proxy.Server, tenant, key, want string, resp3 bool) []byte {
	t.Helper()
	req := fallback.AppendRequest(nil, "GET", [][]byte{[]byte("tenant:" + tenant + ":" + key)})
	waitFor(t, "GET "+key+" cached", 5*time.Second, func() bool {
		if got := c.do("GET", key); got != want {
			t.Fatalf("GET %s: %q, want %q", key, got, want)
		}
		lookup := kf.Cached
		if resp3 {
			lookup = kf.CachedRESP3
		}
		cached, hit := lookup(0, req)
		return hit && string(cached) == want
	})
	return req
}

// trackingConns returns the ids of the upstream connections with tracking
// on (the shared connections that filled reads), the tracking connection
// aside; there must be one at least.
func trackingConns(t *testing.T, srv *redistest.Server, kf *proxy.Server) []int64 {
	t.Helper()
	list, err := srv.Client().ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		var id int64
		var flags string
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "id="); ok {
				id, _ = strconv.ParseInt(v, 10, 64)
			}
			if v, ok := strings.CutPrefix(f, "flags="); ok {
				flags = v
			}
		}
		if strings.Contains(flags, "t") && id != kf.TrackingID() {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		t.Fatalf("no connection with tracking on besides the tracking connection:\n%s", list)
	}
	return ids
}

func trackingInfo(t *testing.T, srv *redistest.Server) (keys, prefixes int64) {
	t.Helper()
	return srv.InfoInt(t, "stats", "tracking_total_keys"), srv.InfoInt(t, "stats", "tracking_total_prefixes")
}

// Redis tracks the keys the cache holds and no others: a write to any other
// key costs it no invalidation (BCAST tracking of the prefix cost every
// write one). Another client's change of a cached key still reaches the
// cache.
func TestReadCacheTracksOnlyWhatItCaches(t *testing.T) {
	eachSessionKind(t, func(t *testing.T, goroutines bool) {
		srv, addr, kf := startCached(t, "trk", goroutines)
		c := dialRaw(t, addr)
		c.do("SET", "cached", "v1")
		req := fill(t, c, kf, "trk", "cached", "$2\r\nv1\r\n", false)
		for i := range 200 {
			if got := c.do("SET", fmt.Sprint("other", i), "x"); got != "+OK\r\n" {
				t.Fatal(got)
			}
			if i%2 == 0 {
				c.do("GET", fmt.Sprint("other", i)) // read once: a sighting, not a fill
			}
		}
		if keys, prefixes := trackingInfo(t, srv); keys != 1 || prefixes != 0 {
			t.Fatalf("Redis tracks %d keys and %d prefixes, want the one cached key and no prefix", keys, prefixes)
		}
		if err := srv.Client().Set(context.Background(), "tenant:trk:cached", "v2", 0).Err(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the change invalidates the entry", 5*time.Second, func() bool {
			_, hit := kf.Cached(0, req)
			return !hit
		})
		fill(t, c, kf, "trk", "cached", "$2\r\nv2\r\n", false)
	})
}

// When a shared connection that registered reads is lost, Redis forgets
// what it tracked for it, and a later change of those keys is announced to
// no one. The entries filled through it must go (once upstream is known to
// be there), or an outage later would serve a value that changed.
func TestReadCacheDropsEntriesWhenTheirConnectionIsLost(t *testing.T) {
	eachSessionKind(t, func(t *testing.T, goroutines bool) {
		srv, addr, kf := startCached(t, "lost", goroutines)
		c := dialRaw(t, addr)
		c.do("SET", "k", "old")
		req := fill(t, c, kf, "lost", "k", "$3\r\nold\r\n", false)
		rc := srv.Client()
		ctx := context.Background()
		for _, id := range trackingConns(t, srv, kf) {
			if err := rc.Do(ctx, "CLIENT", "KILL", "ID", id).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if err := rc.Set(ctx, "tenant:lost:k", "new", 0).Err(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the entry filled through the lost connection dropped", 5*time.Second, func() bool {
			cached, hit := kf.Cached(0, req)
			if hit && string(cached) != "$3\r\nold\r\n" {
				t.Fatalf("cached %q", cached)
			}
			return !hit
		})
		if got := c.do("GET", "k"); got != "$3\r\nnew\r\n" {
			t.Fatalf("GET after the loss: %q", got)
		}
	})
}

// When the tracking connection is lost, Redis tells each RESP3 connection
// that redirected to it, on the next change of a key it tracked, with a
// push message (tracking-redir-broken) among its replies. That push answers
// no command: were it taken for a reply, every later reply on the shared
// connection would go to the wrong command (or, with nothing waiting, the
// connection would be dropped as out of step).
func TestRedirectBrokenPushIsNotAReply(t *testing.T) {
	eachSessionKind(t, func(t *testing.T, goroutines bool) {
		srv, addr, kf := startCached(t, "brk", goroutines)
		c := dialRaw(t, addr)
		if got := c.do("HELLO", "3"); !strings.HasPrefix(got, "%") {
			t.Fatalf("HELLO 3: %q", got)
		}
		for i := range 5 {
			c.do("SET", fmt.Sprint("k", i), fmt.Sprint("v", i))
		}
		fill(t, c, kf, "brk", "k0", "$2\r\nv0\r\n", true)
		ctx := context.Background()
		rc := srv.Client()
		shared := trackingConns(t, srv, kf)
		old := kf.TrackingID()
		if err := rc.Do(ctx, "CLIENT", "KILL", "ID", old).Err(); err != nil {
			t.Fatal(err)
		}
		// Before any other fill names a new tracking connection: Redis
		// finds the redirection broken and pushes on the data connection.
		if err := rc.Set(ctx, "tenant:brk:k0", "changed", 0).Err(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a new tracking connection", 5*time.Second, func() bool {
			id := kf.TrackingID()
			return id != 0 && id != old
		})
		for round := range 20 {
			for i := range 5 {
				want := fmt.Sprint("v", i)
				if i == 0 {
					want = "changed"
				}
				if got := c.do("GET", fmt.Sprint("k", i)); got != fmt.Sprintf("$%d\r\n%s\r\n", len(want), want) {
					t.Fatalf("round %d: GET k%d = %q, want %q", round, i, got, want)
				}
			}
		}
		if now := trackingConns(t, srv, kf); fmt.Sprint(now) != fmt.Sprint(shared) {
			t.Fatalf("shared connections with tracking were %v, now %v: the push cost the connection", shared, now)
		}
	})
}
