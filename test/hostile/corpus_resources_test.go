package hostile

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Memory bounds of the resource attempts. They are generous (several times
// what a fixed keyfence needs) and apply to this whole test process, whose
// other work during one resource attempt is small.
const (
	// leftBehind is how much more heap may stay in use once the attacker
	// has disconnected: per-client state must go with the client.
	leftBehind = 8 << 20
	// settle bounds the wait for keyfence to notice that the attacker left
	// and let go of what it held. A liveness bound, polled: a passing
	// attempt returns as soon as the heap is back. It is generous because
	// an attacker that left mid-way through 128 MB of replies is noticed
	// only once they have crossed the shared connection, which under -race
	// on two busy cores takes several seconds.
	settle = 30 * time.Second
)

// heapInUse is this process's live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// betaServed asserts that beta's keyfence answers beta's GET now.
func (a *act) betaServed(when string) {
	a.t.Helper()
	start := time.Now()
	got, err := a.f.rawGet(a.f.beta, "str")
	if want := a.f.canaryValue(0, "str"); err != nil || got.v.str != want {
		a.t.Errorf("beta's GET %s must succeed: got %s, %v (after %v)", when, got, err, time.Since(start).Round(time.Millisecond))
	}
}

// acmeServed asserts that a fresh acme connection is served now: the
// attacker's other clients must not suffer from one bad connection either.
func (a *act) acmeServed(when string) {
	a.t.Helper()
	if got, err := a.f.rawGet(a.f.acme, acmeOwnKey); err != nil || got.v.str != acmeOwnValue {
		a.t.Errorf("acme's other client's GET %s must succeed: got %s, %v", when, got, err)
	}
}

// heapReturns waits until the heap is back within leftBehind of base, and
// fails with the figures when it is not.
func (a *act) heapReturns(what string, base uint64) {
	a.t.Helper()
	deadline := time.Now().Add(settle)
	for {
		now := heapInUse()
		if now < base+leftBehind {
			a.t.Logf("%s: heap %d MB before, %d MB after the attacker left", what, base>>20, now>>20)
			return
		}
		if time.Now().After(deadline) {
			a.t.Errorf("%s: keyfence keeps %d MB after the attacker left (heap %d MB before, %d MB now; bound +%d MB)",
				what, (now-base)>>20, base>>20, now>>20, leftBehind>>20)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pipeline writes n requests made by req on c from a goroutine while the
// caller reads; it returns the replies' errors count.
func pipeline(c *rawConn, n int, req func(i int) []byte) (errReplies int, err error) {
	wrote := make(chan error, 1)
	go func() {
		var buf []byte
		for i := range n {
			buf = append(buf, req(i)...)
			if len(buf) > 64<<10 || i == n-1 {
				if err := c.write(buf); err != nil {
					wrote <- err
					return
				}
				buf = buf[:0]
			}
		}
		wrote <- nil
	}()
	for range n {
		r := c.read()
		if r.err != nil {
			return errReplies, fmt.Errorf("after %d replies: %w", errReplies, r.err)
		}
		if r.isErr() {
			errReplies++
		}
	}
	return errReplies, <-wrote
}

// trackedKeys is Redis's count of keys tracked for client-side caching,
// the table every tenant's read cache shares.
func (a *act) trackedKeys() int {
	a.t.Helper()
	return int(a.f.up.InfoInt(a.t, "stats", "tracking_total_keys"))
}

func resourceAttempts() []attempt {
	return []attempt{
		{name: "tracking-table-flood", category: catResources, run: func(a *act) {
			// The read cache has Redis track the keys it fills, in a table
			// (and memory) every tenant shares. acme reads 20,000 distinct
			// keys eight times each as fast as it can, so that all would be
			// cached: keyfence's fill budget (100 a second plus one per 1,024
			// cacheable reads) must keep what Redis tracks for it small.
			before := a.trackedKeys()
			start := time.Now()
			c := a.conn()
			errs, err := pipeline(c, 160000, func(i int) []byte { return encode("GET", "flood:"+strconv.Itoa(i%20000)) })
			if err != nil || errs != 0 {
				a.t.Fatalf("160,000 GETs: %d error replies, %v", errs, err)
			}
			took := time.Since(start)
			grown := a.trackedKeys() - before
			// Other modes' attempts may fill a few keys meanwhile.
			limit := 100*(int(took/time.Second)+2) + 160000/1024 + 500
			a.t.Logf("160,000 GETs of 20,000 keys in %v: Redis tracks %d more keys (bound %d)", took.Round(time.Millisecond), grown, limit)
			if grown > limit {
				a.t.Errorf("acme made Redis track %d more keys in %v, past the fill budget's %d", grown, took, limit)
			}
			_ = c.Close()
			a.betaServed("after acme's flood of cacheable reads")
		}},
		{name: "many-connections", category: catResources, run: func(a *act) {
			conns := make([]*rawConn, 0, 300)
			for range 300 {
				c, err := a.f.dial(a.f.acme)
				if err != nil {
					a.t.Logf("acme's connection %d refused: %v", len(conns), err)
					break
				}
				conns = append(conns, c)
				_ = c.write(encode("PING"))
			}
			a.betaServed("while acme holds 300 connections")
			for _, c := range conns {
				_ = c.Close()
			}
			a.acmeServed("after acme's 300 connections")
		}},
		{name: "many-connections-pipelining-at-once", category: catResources, run: func(a *act) {
			// More clients ready in one turn than the event loop's
			// io_uring takes (256), each pipeline cut in two so that
			// reads land beside leftovers: every client must get exactly
			// its own replies, in order, and beta must be served.
			const n, pairs = 300, 8
			conns := make([]*rawConn, 0, n)
			for range n {
				c, err := a.f.dial(a.f.acme)
				if err != nil {
					a.t.Fatalf("acme's connection %d: %v", len(conns), err)
				}
				conns = append(conns, c)
			}
			defer func() {
				for _, c := range conns {
					_ = c.Close()
				}
			}()
			errs := make(chan error, n)
			start := make(chan struct{})
			for i, c := range conns {
				go func() {
					var req []byte
					for j := range pairs {
						k, v := fmt.Sprintf("pc:%d:%d", i, j), fmt.Sprintf("v:%d:%d", i, j)
						req = append(append(req, encode("SET", k, v)...), encode("GET", k)...)
					}
					<-start
					cut := len(req) / 2
					if c.write(req[:cut]) != nil || c.write(req[cut:]) != nil {
						errs <- fmt.Errorf("client %d: write failed", i)
						return
					}
					for j := range pairs {
						want := fmt.Sprintf("v:%d:%d", i, j)
						if r := c.read(); r.err != nil || r.v.str != "OK" {
							errs <- fmt.Errorf("client %d: SET %d: %s", i, j, r)
							return
						}
						if r := c.read(); r.err != nil || r.v.str != want {
							errs <- fmt.Errorf("client %d: GET %d: %s, want %q", i, j, r, want)
							return
						}
					}
					errs <- nil
				}()
			}
			close(start)
			a.betaServed("while 300 acme connections pipeline at once")
			for range n {
				if err := <-errs; err != nil {
					a.t.Error(err)
				}
			}
			a.acmeServed("after 300 acme connections pipelined at once")
		}},
		{name: "select-out-of-range-loop", category: catResources, run: func(a *act) {
			base := heapInUse()
			c := a.conn()
			errs, err := pipeline(c, 30000, func(i int) []byte { return encode("SELECT", strconv.Itoa(16+i)) })
			if err != nil || errs != 30000 {
				a.t.Errorf("30,000 out-of-range SELECTs: %d error replies, %v; want all refused", errs, err)
			}
			a.betaServed("after 30,000 out-of-range SELECTs")
			_ = c.Close()
			a.heapReturns("30,000 out-of-range SELECTs", base)
		}},
		{name: "unknown-commands-flood", category: catResources, run: func(a *act) {
			base := heapInUse()
			c := a.conn()
			errs, err := pipeline(c, 30000, func(i int) []byte { return encode("NOSUCHCMD"+strconv.Itoa(i), "x") })
			if err != nil || errs != 30000 {
				a.t.Errorf("30,000 unknown commands: %d error replies, %v; want all refused", errs, err)
			}
			_ = c.Close()
			a.betaServed("after 30,000 unknown commands")
			a.heapReturns("30,000 unknown commands", base)
		}},
		{name: "pipeline-huge-replies-unread", category: catResources, run: func(a *act) {
			ctx := a.ctx()
			if err := a.f.adminDB(0).Set(ctx, acmePrefix+"big", strings.Repeat("x", 1<<20), 0).Err(); err != nil {
				a.t.Fatalf("SET big: %v", err)
			}
			base := heapInUse()
			c := a.conn()
			var req []byte
			for range 128 {
				req = append(req, encode("GET", "big")...)
			}
			_ = c.write(req) // 128 MB of replies, never read
			time.Sleep(500 * time.Millisecond)
			held := heapInUse()
			a.t.Logf("128 pipelined GETs of 1 MB, unread: heap %d MB before, %d MB while unread", base>>20, held>>20)
			a.betaServed("while acme does not read 128 MB of replies")
			a.acmeServed("while another acme client does not read 128 MB of replies")
			_ = c.Close()
			a.heapReturns("128 MB of unread replies", base)
		}},
		{name: "command-flood-unread", category: catResources, run: func(a *act) {
			base := heapInUse()
			c := a.conn()
			var req []byte
			for range 200 {
				req = append(req, encode("COMMAND")...)
			}
			_ = c.write(req)
			time.Sleep(300 * time.Millisecond)
			a.betaServed("while acme does not read 200 COMMAND replies")
			_ = c.Close()
			a.heapReturns("200 unread COMMAND replies", base)
		}},
		{name: "protocol-errors-then-keep-sending", category: catResources, run: func(a *act) {
			// After a protocol error keyfence lingers, reading and dropping
			// what the client still sends so that the error reply is not
			// lost to a reset. acme makes 100 connections do that and send
			// on without end: each must be closed within the linger bound
			// (1 s or 16 MiB), and nobody else stalled. The writers stop by
			// themselves after 10 s whatever keyfence does.
			base := heapInUse()
			junk := []byte(strings.Repeat("x", 64<<10))
			var wg sync.WaitGroup
			for range 100 {
				c, err := a.f.dial(a.f.acme)
				if err != nil {
					break
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer c.Close()
					_ = c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
					for err := c.write([]byte("*1\r\n$-5\r\n")); err == nil; err = c.write(junk) {
					}
				}()
			}
			time.Sleep(200 * time.Millisecond)
			a.betaServed("while 100 acme connections send on after a protocol error")
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
				a.acmeServed("after acme's protocol errors")
				a.heapReturns("100 lingering connections", base)
			case <-time.After(8 * time.Second):
				a.t.Errorf("acme's connections still open 8 s after their protocol errors: keyfence lingers past its bound")
				<-done
			}
		}},
		{name: "huge-partial-requests", category: catResources, run: func(a *act) {
			base := heapInUse()
			var conns []*rawConn
			chunk := strings.Repeat("p", 1<<20)
			for range 40 {
				c, err := a.f.dial(a.f.acme)
				if err != nil {
					break
				}
				conns = append(conns, c)
				_ = c.write([]byte("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$104857600\r\n" + chunk))
			}
			time.Sleep(300 * time.Millisecond)
			a.t.Logf("40 partial requests of 1 MB (of 100 MB announced): heap %d MB before, %d MB while pending", base>>20, heapInUse()>>20)
			a.betaServed("while acme holds 40 partial 100 MB requests")
			for _, c := range conns {
				_ = c.Close()
			}
			a.acmeServed("after acme's partial requests")
			a.heapReturns("40 partial 100 MB requests", base)
		}},
		{name: "distinct-evals", category: catResources, run: func(a *act) {
			before := luaMemory(a)
			c := a.conn()
			errs, err := pipeline(c, 3000, func(i int) []byte { return encode("EVAL", "return "+strconv.Itoa(i), "0") })
			if err != nil {
				a.t.Errorf("3,000 distinct EVALs: %v", err)
			}
			after := luaMemory(a)
			a.t.Logf("3,000 distinct EVALs (%d refused): upstream script memory %d KB -> %d KB", errs, before>>10, after>>10)
			// A direct EVAL of a script this small costs Redis well under
			// 1 KB; a cap on scripts per tenant keeps the total bounded.
			if grown := after - before; after > before && grown > 3000*(2<<10) {
				a.t.Errorf("3,000 distinct tiny EVALs grew upstream script memory by %d KB (> 2 KB per script): the script cache is unbounded", grown>>10)
			}
			a.betaServed("after 3,000 distinct EVALs")
		}},
		{name: "deep-reply", category: catResources, run: func(a *act) {
			// Another client's commands in flight on the same shared
			// upstream connection must not fail because of acme's reply.
			victim := a.conn()
			var wg sync.WaitGroup
			var bad []string
			var mu sync.Mutex
			wg.Add(1)
			go func() {
				defer wg.Done()
				var req []byte
				for range 500 {
					req = append(req, encode("GET", acmeOwnKey)...)
				}
				_ = victim.write(req)
				for i := range 500 {
					if r := victim.read(); r.err != nil || r.v.str != acmeOwnValue {
						mu.Lock()
						bad = append(bad, fmt.Sprintf("GET %d: %s", i, r))
						mu.Unlock()
						if r.err != nil {
							return
						}
					}
				}
			}()
			r := a.do(eval("local t = {} t[1] = t return t", nil)...)
			wg.Wait()
			if r.err != nil {
				a.t.Errorf("a script returning a self-referencing table: no reply for acme: %v", r.err)
			} else {
				a.t.Logf("self-referencing table: reply nested %d deep (or error: %v)", r.v.depth(), r.isErr())
			}
			for _, b := range bad[:min(len(bad), 3)] {
				a.t.Errorf("another client's in-flight command failed while a deep reply was relayed: %s (%d failed)", b, len(bad))
			}
			a.acmeServed("after the deep reply")
			a.betaServed("after the deep reply")
		}},
		{name: "many-patterns", category: catResources, run: func(a *act) {
			base := heapInUse()
			c := a.conn()
			args := []string{"PSUBSCRIBE"}
			for i := range 5000 {
				args = append(args, "p"+strconv.Itoa(i)+"*")
			}
			_ = c.write(encode(args...))
			for range 5000 {
				if r := c.read(); r.err != nil {
					a.t.Errorf("PSUBSCRIBE of 5,000 patterns: %v", r.err)
					break
				}
			}
			a.betaServed("while acme holds 5,000 patterns")
			_ = c.Close()
			a.heapReturns("5,000 patterns", base)
		}},
		{name: "slow-subscriber", category: catResources, run: func(a *act) {
			base := heapInUse()
			sub := a.conn()
			_ = sub.write(encode("SUBSCRIBE", "flood"))
			if r := sub.read(); r.err != nil {
				a.t.Fatalf("SUBSCRIBE: %v", r.err)
			}
			pub := a.conn()
			msg := strings.Repeat("m", 10<<10)
			if _, err := pipeline(pub, 5000, func(int) []byte { return encode("PUBLISH", "flood", msg) }); err != nil {
				a.t.Errorf("publishing 50 MB to a subscriber that does not read: %v", err)
			}
			a.betaServed("while acme's subscriber does not read 50 MB")
			_ = sub.Close()
			a.heapReturns("a subscriber that did not read 50 MB", base)
		}},
		{name: "blocked-connections", category: catResources, run: func(a *act) {
			var conns []*rawConn
			for i := range 300 {
				c, err := a.f.dial(a.f.acme)
				if err != nil {
					break
				}
				conns = append(conns, c)
				_ = c.write(encode("BLPOP", "own-queue-"+strconv.Itoa(i), "0"))
			}
			time.Sleep(200 * time.Millisecond)
			a.betaServed("while acme holds 300 blocked BLPOPs")
			for _, c := range conns {
				_ = c.Close()
			}
			a.acmeServed("after acme's 300 BLPOPs")
		}},
		{name: "huge-multikey-request", category: catResources, run: func(a *act) {
			args := []string{"MGET"}
			for i := range 200000 {
				args = append(args, "k"+strconv.Itoa(i))
			}
			a.wantReply("MGET of 200,000 keys", a.do(args...))
			a.betaServed("after acme's MGET of 200,000 keys")
		}},
	}
}

// luaMemory is the upstream's memory for scripts (Lua VM and script cache).
func luaMemory(a *act) uint64 {
	info, err := a.f.adminDB(0).Info(a.ctx(), "memory").Result()
	if err != nil {
		a.t.Fatalf("INFO memory: %v", err)
	}
	var total uint64
	for _, f := range []string{"used_memory_lua", "used_memory_scripts"} {
		n, _ := strconv.ParseUint(infoField(info, f), 10, 64)
		total += n
	}
	return total
}
