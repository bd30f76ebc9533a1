package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/upstream"
)

// The tests of this file bound keyfence's own memory against a hostile
// tenant (issue 8, item 5). They are not parallel: Go runs them before the
// parallel tests, so the heap they measure is keyfence's and theirs alone.

const mib = 1 << 20

// heapAfterGC is the live heap after a full collection.
func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// heapPeak samples HeapInuse until the returned stop is called and returns
// the highest figure seen: garbage included, so bounds stay generous.
func heapPeak() (stop func() uint64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return func() uint64 {
		close(done)
		<-finished
		return peak.Load()
	}
}

func mb(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/mib) }

// growth is after-before, or 0 when the heap shrank.
func growth(before, after uint64) uint64 {
	if after < before {
		return 0
	}
	return after - before
}

// TestOutOfRangeSelectLeavesNoState: each distinct out-of-range SELECT used
// to leave a connection group behind (220,000 of them: RSS 14 → 155 MB).
// Now an index upstream lacks is refused with Redis's words before anything
// exists for it, and valid ones still work.
func TestOutOfRangeSelectLeavesNoState(t *testing.T) {
	up := testRedis(t)
	srv, addr := startProxyServer(t, up, nil)
	c := dialRaw(t, addr)
	direct := dialRaw(t, up.Addr())
	// The reference: Redis's own reply to the same commands.
	for _, args := range [][]string{{"SELECT", "16"}, {"SELECT", "-1"}, {"SELECT", "2147483648"}, {"SELECT", "x"}, {"SELECT", "99999999999999999999"}, {"SELECT", "5"}, {"SELECT", "0"}} {
		want := direct.do(t, args...)
		if got := c.do(t, args...); !bytes.Equal(got, want) {
			t.Errorf("%q: keyfence %q, Redis %q", args, got, want)
		}
	}
	groupsBefore := srv.Stats().ConnGroups
	before := heapAfterGC()
	const total, chunk = 200000, 5000
	want := []byte("-ERR DB index is out of range\r\n")
	var req []byte
	for sent := 0; sent < total; sent += chunk {
		req = req[:0]
		for i := sent; i < sent+chunk; i++ {
			req = encode(req, "SELECT", strconv.Itoa(16+i))
		}
		c.write(t, req)
		for i := 0; i < chunk; i++ {
			if got := c.read(t); !bytes.Equal(got, want) {
				t.Fatalf("SELECT %d: %q, want %q", 16+sent+i, got, want)
			}
		}
	}
	after := heapAfterGC()
	t.Logf("%d out-of-range SELECTs: heap %s → %s, connection groups %d → %d",
		total, mb(before), mb(after), groupsBefore, srv.Stats().ConnGroups)
	if g := growth(before, after); g > 4*mib {
		t.Errorf("heap grew by %s over %d out-of-range SELECTs; want < 4 MiB", mb(g), total)
	}
	if n := srv.Stats().ConnGroups; n != groupsBefore {
		t.Errorf("connection groups %d after the SELECTs, %d before", n, groupsBefore)
	}
	// The session still works, on a valid database.
	if got := string(c.do(t, "SELECT", "6")); got != "+OK\r\n" {
		t.Fatalf("SELECT 6: %q", got)
	}
	if got := string(c.do(t, "SET", "k", "v")); got != "+OK\r\n" {
		t.Fatalf("SET in db 6: %q", got)
	}
	if got, err := directDB(t, up, 6).Get(testCtx(t), "tenant:"+tenantFor(t)+":k").Result(); err != nil || got != "v" {
		t.Fatalf("the key in upstream db 6: %q, %v", got, err)
	}
	if got := string(c.do(t, "SELECT", "0")); got != "+OK\r\n" {
		t.Fatalf("SELECT 0: %q", got)
	}
}

// TestDatabaseCountWithoutConfig: the database count is learned by SELECT,
// so an upstream user that may not run CONFIG gets it too, on a server with
// an unusual count and from any starting database.
func TestDatabaseCountWithoutConfig(t *testing.T) {
	up := redistest.StartT(t, redistest.Options{Args: []string{"--databases", "37"}})
	ctx := testCtx(t)
	if err := up.AddTenantUser(ctx, "acme", "pw", "acme"); err != nil {
		t.Fatal(err)
	}
	if err := redis.NewClient(&redis.Options{Addr: up.Addr(), Username: "acme", Password: "pw"}).ConfigGet(ctx, "databases").Err(); err == nil {
		t.Fatal("the tenant user may run CONFIG GET: this test would not show that keyfence does without it")
	}
	for _, tc := range []struct {
		name string
		cfg  upstream.Config
	}{
		{"default user", upstream.Config{Addr: up.Addr(), DialTimeout: 2 * time.Second}},
		{"tenant user (no CONFIG)", upstream.Config{Addr: up.Addr(), Username: "acme", Password: "pw", DialTimeout: 2 * time.Second}},
		{"tenant user from db 20", upstream.Config{Addr: up.Addr(), Username: "acme", Password: "pw", DB: 20, DialTimeout: 2 * time.Second}},
	} {
		n, err := learnDatabases(ctx, &tc.cfg)
		if err != nil || n != 37 {
			t.Errorf("%s: %d, %v; want 37", tc.name, n, err)
		}
	}
	addr := startProxy(t, up, func(c *Config) { c.Upstream.Username, c.Upstream.Password = "acme", "pw"; c.Tenant = "acme" })
	c := dialRaw(t, addr)
	for arg, want := range map[string]string{"36": "+OK\r\n", "37": "-ERR DB index is out of range\r\n", "1000": "-ERR DB index is out of range\r\n"} {
		if got := string(c.do(t, "SELECT", arg)); got != want {
			t.Errorf("SELECT %s: %q, want %q", arg, got, want)
		}
	}
}

// TestIdleConnGroupsAreReaped: a database no session uses any more lets its
// upstream connections go; the configured database's stay.
func TestIdleConnGroupsAreReaped(t *testing.T) {
	up := testRedis(t)
	srv, addr := startProxyServer(t, up, nil)
	c := dialRaw(t, addr)
	// SELECT takes the session off the event loop to a goroutine of its
	// own, which holds the configured database's group.
	c.do(t, "SELECT", "0")
	base := srv.Stats().ConnGroups
	for _, db := range []string{"5", "6"} {
		if got := string(c.do(t, "SELECT", db)); got != "+OK\r\n" {
			t.Fatalf("SELECT %s: %q", db, got)
		}
	}
	if n := srv.Stats().ConnGroups; n != base+2 {
		t.Fatalf("groups after SELECT 5, 6: %d, want %d", n, base+2)
	}
	if n := srv.reapIdleGroups(); n != 0 { // both carried a PING since
		t.Fatalf("reaped %d groups at once, want 0", n)
	}
	if n := srv.reapIdleGroups(); n != 1 { // db 5; db 6 is in use
		t.Fatalf("reaped %d groups, want 1 (db 5)", n)
	}
	c.nc.Close()
	if !waitFor(5*time.Second, func() bool { return srv.Stats().Sessions == 0 }) {
		t.Fatal("session did not end")
	}
	if n := srv.reapIdleGroups(); n != 1 {
		t.Fatalf("reaped %d groups after the client left, want 1 (db 6)", n)
	}
	if n := srv.Stats().ConnGroups; n != base {
		t.Fatalf("groups %d, want %d: the configured database's stay", n, base)
	}
	c2 := dialRaw(t, addr)
	if got := string(c2.do(t, "SELECT", "5")); got != "+OK\r\n" {
		t.Fatalf("SELECT 5 after reaping: %q", got)
	}
	if got := string(c2.do(t, "PING")); got != "+PONG\r\n" {
		t.Fatalf("PING: %q", got)
	}
}

// TestSlowClientPastOutputHardLimit: 200 GETs of a 2 MB value sent in one
// write by a client that never reads used to make keyfence hold every reply
// twice (RSS → 2 GB). Now the batch stops being kept at the hard limit, the
// client is disconnected, the shared connection reads and drops the rest,
// and another client is served meanwhile and after.
func TestSlowClientPastOutputHardLimit(t *testing.T) {
	const hard = 32 * mib
	up := testRedis(t)
	srv, addr := startProxyServer(t, up, func(c *Config) {
		c.ClientOutputSoftLimit, c.ClientOutputHardLimit = 4*mib, hard
	})
	ctx := testCtx(t)
	other := proxyClient(t, addr, nil)
	big := strings.Repeat("x", 2*mib)
	if err := other.Set(ctx, "big", big, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := other.Set(ctx, "small", "s", 0).Err(); err != nil {
		t.Fatal(err)
	}
	before := heapAfterGC()
	stop := heapPeak()
	slow := dialRaw(t, addr)
	var req []byte
	for range 200 {
		req = encode(req, "GET", "big")
	}
	slow.write(t, req)
	// Another client on the same shared connection, meanwhile.
	for i := range 20 {
		if got, err := other.Get(ctx, "small").Result(); err != nil || got != "s" {
			t.Fatalf("other client's GET %d: %q, %v", i, got, err)
		}
	}
	if !waitFor(20*time.Second, func() bool { return srv.Stats().ClientOutputDisconnects == 1 }) {
		t.Fatalf("slow client not disconnected: %+v", srv.Stats())
	}
	peak := stop()
	_ = slow.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, slow.nc)
	if err != nil && !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("slow client: %v after %d bytes; want the connection closed", err, n)
	}
	slow.nc.Close()
	if got, err := other.Get(ctx, "big").Result(); err != nil || got != big {
		t.Fatalf("other client's GET big after the drop: %d bytes, %v", len(got), err)
	}
	after := heapAfterGC()
	t.Logf("200 pipelined GETs of 2 MiB, client not reading, hard limit %s: heap %s before, peak in use %s, %s after; slow client got %d bytes",
		mb(hard), mb(before), mb(peak), mb(after), n)
	// Expected: the hard limit's worth of replies, twice over for the
	// collector's headroom (HeapInuse counts garbage); before: 800 MB.
	if g := growth(before, peak); g > 6*hard {
		t.Errorf("heap peaked %s above the start; want < %s (6 × the hard limit)", mb(g), mb(6*hard))
	}
	if g := growth(before, after); g > 8*mib {
		t.Errorf("heap %s above the start after the client left; want < 8 MiB", mb(g))
	}
}

// TestReadingClientPastSoftLimitServed: a client that reads gets every reply
// of a pipeline whose replies pass the soft limit (but not the hard one),
// in order: keyfence writes as it goes instead of keeping a second copy.
func TestReadingClientPastSoftLimitServed(t *testing.T) {
	up := testRedis(t)
	srv, addr := startProxyServer(t, up, func(c *Config) {
		c.ClientOutputSoftLimit, c.ClientOutputHardLimit = 1*mib, 32*mib
	})
	c := dialRaw(t, addr)
	val := strings.Repeat("v", 100<<10)
	if got := string(c.do(t, "SET", "v", val)); got != "+OK\r\n" {
		t.Fatal(got)
	}
	var req []byte
	for i := range 200 {
		req = encode(req, "GET", "v")
		req = encode(req, "ECHO", strconv.Itoa(i))
		req = encode(req, "COMMAND", "COUNT")
	}
	go func() { _ = c.writeE(req) }()
	wantGet := "$" + strconv.Itoa(len(val)) + "\r\n" + val + "\r\n"
	for i := range 200 {
		if got := string(c.read(t)); got != wantGet {
			t.Fatalf("reply %d to GET: %.40q…", i, got)
		}
		if got, want := string(c.read(t)), "$"+strconv.Itoa(len(strconv.Itoa(i)))+"\r\n"+strconv.Itoa(i)+"\r\n"; got != want {
			t.Fatalf("reply %d to ECHO: %q, want %q", i, got, want)
		}
		if got := c.read(t); got[0] != ':' {
			t.Fatalf("reply %d to COMMAND COUNT: %q", i, got)
		}
	}
	if n := srv.Stats().ClientOutputDisconnects; n != 0 {
		t.Fatalf("%d clients disconnected; want none", n)
	}
}

// TestPipelinedCommandCallsBounded: 3,000 pipelined COMMAND calls used to
// take 1.1 GB, still held after the client left. Now a client that reads
// gets them all with keyfence's heap bounded, and one that does not read
// holds at most one read's worth of replies, released when it leaves.
func TestPipelinedCommandCallsBounded(t *testing.T) {
	const hard = 32 * mib
	up := testRedis(t)
	srv, addr := startProxyServer(t, up, func(c *Config) {
		c.ClientOutputSoftLimit, c.ClientOutputHardLimit = 4*mib, hard
	})
	probe := dialRaw(t, addr)
	one := len(probe.do(t, "COMMAND"))
	const calls = 3000
	var req []byte
	for range calls {
		req = encode(req, "COMMAND")
	}
	for _, reading := range []bool{true, false} {
		before := heapAfterGC()
		stop := heapPeak()
		c := dialRaw(t, addr)
		go func() { _ = c.writeE(req) }()
		var n int64
		if reading {
			// Generous: the bound is on memory, not speed, and -race on a
			// busy machine moves ~5 MB/s here.
			_ = c.nc.SetReadDeadline(time.Now().Add(2 * time.Minute))
			n, _ = io.CopyN(io.Discard, c.nc, int64(calls*one))
		} else {
			time.Sleep(time.Second) // let keyfence read and answer what it will
		}
		peak := stop()
		c.nc.Close()
		if !waitFor(5*time.Second, func() bool { return srv.Stats().Sessions == 1 }) {
			t.Fatalf("session did not end: %+v", srv.Stats())
		}
		after := heapAfterGC()
		t.Logf("%d pipelined COMMAND (%d bytes each), client reading %v: heap %s before, peak in use %s, %s after the client left; it read %d bytes",
			calls, one, reading, mb(before), mb(peak), mb(after), n)
		if reading && n != int64(calls*one) {
			t.Errorf("reading client got %d bytes, want %d", n, calls*one)
		}
		if g := growth(before, peak); g > 6*hard {
			t.Errorf("heap peaked %s above the start; want < %s", mb(g), mb(6*hard))
		}
		if g := growth(before, after); g > 8*mib {
			t.Errorf("heap %s above the start after the client left; want < 8 MiB", mb(g))
		}
	}
	if d := srv.Stats().ClientOutputDisconnects; d != 0 {
		t.Errorf("output disconnects %d, want 0: no read's replies reach the hard limit", d)
	}
	if got := probe.do(t, "COMMAND"); len(got) != one {
		t.Errorf("COMMAND on another client afterwards: %d bytes, want %d", len(got), one)
	}
}

// TestRequestBufferBudget: many clients each sending part of a huge request
// cannot make keyfence buffer more than --max-request-buffer-total: those
// past it are refused and closed, a normal client is served, and the budget
// comes back whole when they leave.
func TestRequestBufferBudget(t *testing.T) {
	const budget = 16 * mib
	up := testRedis(t)
	srv, addr := startProxyServer(t, up, func(c *Config) { c.MaxRequestBufferTotal = budget })
	ctx := testCtx(t)
	normal := proxyClient(t, addr, nil)
	before := heapAfterGC()
	stop := heapPeak()
	header := "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$33554432\r\n"
	part := bytes.Repeat([]byte("p"), 1*mib)
	var (
		mu       sync.Mutex
		refused  int
		held     []*rawConn
		messages = map[string]int{}
	)
	for range 50 {
		c := dialRaw(t, addr)
		_ = c.writeE(append([]byte(header), part...))
		// A refused client reads the error, then EOF; a held one reads
		// nothing until its request is complete.
		reply, err := c.readTimeout(500 * time.Millisecond)
		mu.Lock()
		switch {
		case err == nil:
			refused++
			messages[string(reply)]++
		case errors.Is(err, io.EOF) || strings.Contains(err.Error(), "reset"):
			refused++
			messages["(closed: "+err.Error()+")"]++
		default:
			held = append(held, c)
		}
		mu.Unlock()
		if got, err := normal.Set(ctx, "n", "v", 0).Result(); err != nil || got != "OK" {
			t.Fatalf("normal client's SET while %d are held: %q, %v", len(held), got, err)
		}
	}
	st := srv.Stats()
	peak := stop()
	t.Logf("50 clients × 1 MiB of a 32 MiB request, budget %s: %d held, %d refused %v; reserved %s; heap %s before, peak in use %s",
		mb(budget), len(held), refused, messages, mb(uint64(st.RequestBufferBytes)), mb(before), mb(peak))
	if st.RequestBufferBytes > budget {
		t.Errorf("reserved %d bytes; budget %d", st.RequestBufferBytes, budget)
	}
	if len(held) == 0 || refused < 30 || int64(refused) != st.RequestBufferRefused {
		t.Errorf("%d held, %d refused (server counted %d): want some held and the later ones refused", len(held), refused, st.RequestBufferRefused)
	}
	if messages["-"+errRequestBudget.Error()+"\r\n"] == 0 {
		t.Errorf("no refused client read %q: %v", errRequestBudget, messages)
	}
	if g := growth(before, peak); g > 4*budget {
		t.Errorf("heap peaked %s above the start; want < %s (4 × the budget)", mb(g), mb(4*budget))
	}
	for _, c := range held {
		c.nc.Close()
	}
	if !waitFor(5*time.Second, func() bool { return srv.Stats().RequestBufferBytes == 0 }) {
		t.Fatalf("budget not returned after the clients left: %d bytes still reserved", srv.Stats().RequestBufferBytes)
	}
	// A large request completes and gives its share back.
	if err := normal.Set(ctx, "big", strings.Repeat("b", 8*mib), 0).Err(); err != nil {
		t.Fatalf("8 MiB SET after the budget came back: %v", err)
	}
	if !waitFor(5*time.Second, func() bool { return srv.Stats().RequestBufferBytes == 0 }) {
		t.Fatalf("budget not returned after a large request: %d bytes", srv.Stats().RequestBufferBytes)
	}
}

// TestDeepReplyDoesNotFailSharedConnection: Redis answers a script that
// returns a table containing itself with arrays nested about 8,000 deep.
// keyfence used to call that an invalid reply and drop the shared upstream
// connection, failing every other client's in-flight commands on it. Now
// the reply reaches its client exactly as Redis sent it, and 20 other
// clients' pipelines on the same connection all succeed meanwhile.
func TestDeepReplyDoesNotFailSharedConnection(t *testing.T) {
	up := testRedis(t)
	addr := startProxy(t, up, func(c *Config) { c.SharedConns = 1 })
	script := "local t = {} t[1] = t return t"
	want := dialRaw(t, up.Addr()).do(t, "EVAL", script, "0")
	depth := bytes.Count(want, []byte("*1\r\n"))
	if depth < 1000 {
		t.Fatalf("Redis's reply nests %d deep: %.80q", depth, want)
	}
	for _, proto := range []string{"2", "3"} {
		deep := dialRaw(t, addr)
		if proto == "3" {
			deep.do(t, "HELLO", "3")
		}
		var wg sync.WaitGroup
		var failures atomic.Int64
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := dialRawE(addr)
				if err != nil {
					failures.Add(1)
					return
				}
				defer c.nc.Close()
				for round := range 5 {
					var req []byte
					for j := range 50 {
						req = encode(req, "SET", fmt.Sprintf("k%d", i), fmt.Sprintf("%d.%d.%d", i, round, j))
						req = encode(req, "GET", fmt.Sprintf("k%d", i))
					}
					if err := c.writeE(req); err != nil {
						failures.Add(1)
						return
					}
					for j := range 50 {
						ok, err1 := c.readE()
						got, err2 := c.readE()
						v := fmt.Sprintf("%d.%d.%d", i, round, j)
						if err1 != nil || err2 != nil || string(ok) != "+OK\r\n" || string(got) != "$"+strconv.Itoa(len(v))+"\r\n"+v+"\r\n" {
							t.Errorf("client %d: SET/GET %d: %q %q %v %v", i, j, ok, got, err1, err2)
							failures.Add(1)
							return
						}
					}
				}
			}()
		}
		for range 10 {
			got, err := deep.doE("EVAL", script, "0")
			if err != nil {
				t.Fatalf("RESP%s deep EVAL: %v", proto, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("RESP%s deep EVAL through keyfence differs from Redis's reply: %d bytes (%d deep), want %d (%d deep); ends %q",
					proto, len(got), bytes.Count(got, []byte("*1\r\n")), len(want), depth, got[max(0, len(got)-60):])
			}
		}
		wg.Wait()
		if n := failures.Load(); n != 0 {
			t.Fatalf("RESP%s: %d of the other clients failed while the deep reply was relayed", proto, n)
		}
		t.Logf("RESP%s: reply nested %d deep (%d bytes) identical to Redis's; 20 clients × 500 commands all answered", proto, depth, len(want))
	}
}

// A tenant's MULTI cannot make keyfence grow without bound: the commands it
// queues in keyfence (behind an emulated command, where they wait, or each
// one's bookkeeping) are charged to the request buffer budget; past it the
// command is refused in place and EXEC discards the transaction, as Redis
// does when a queued command is refused for memory. Everything is given
// back after EXEC, and other clients are served meanwhile.
func TestTransactionQueueBounded(t *testing.T) {
	const budget = 4 * mib
	up := testRedis(t)
	srv, addr := startProxyServer(t, up, func(c *Config) { c.MaxRequestBufferTotal = budget })
	value := strings.Repeat("v", 64<<10)
	for _, tc := range []struct {
		name     string
		first    []string // queued first
		commands int
		value    string
	}{
		{"waiting behind an emulated command", []string{"DBSIZE"}, 200, value},
		{"many small commands", nil, 100_000, "v"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, addr)
			expect(t, c, "+OK\r\n", "MULTI")
			if tc.first != nil {
				expect(t, c, "+QUEUED\r\n", tc.first...)
			}
			var req []byte
			for i := range tc.commands {
				req = encode(req, "SET", "k"+strconv.Itoa(i%100), tc.value)
			}
			go c.writeE(req)
			refused := 0
			for range tc.commands {
				switch r := string(c.read(t)); r {
				case "+QUEUED\r\n":
				case "-" + errTxTooLarge + "\r\n":
					refused++
				default:
					t.Fatalf("reply while queueing: %q", r)
				}
			}
			if refused == 0 {
				t.Fatalf("%d queued commands past a %d-byte budget, none refused", tc.commands, budget)
			}
			expect(t, c, "-EXECABORT Transaction discarded because of previous errors.\r\n", "EXEC")
			if !waitFor(10*time.Second, func() bool { return srv.Stats().RequestBufferBytes == 0 }) {
				t.Fatalf("budget not given back after EXEC: %+v", srv.Stats())
			}
			other := dialRaw(t, addr)
			expect(t, other, "+PONG\r\n", "PING")
			t.Logf("%d of %d commands refused", refused, tc.commands)
		})
	}
}
