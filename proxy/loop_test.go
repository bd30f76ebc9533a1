//go:build linux

package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keyfence/keyfence/internal/faultproxy"
	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/internal/uring"
	"github.com/keyfence/keyfence/upstream"
)

// onLoop counts the sessions the event loop serves now.
func (s *Server) onLoop() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for sess := range s.sessions {
		if sess.lc != nil {
			n++
		}
	}
	return n
}

// TestEventLoopMatchesGoroutineSessions sends the same bytes, in the same
// pieces, to a keyfence serving clients on its event loop and to one
// serving each on a goroutine: the replies must be the same bytes, and the
// session must be where the case says (on the loop, or handed off).
func TestEventLoopMatchesGoroutineSessions(t *testing.T) {
	up := testRedis(t)
	loopSrv, loopAddr := startProxyServer(t, up, func(c *Config) { c.Tenant = "loop" })
	_, goAddr := startProxyServer(t, up, func(c *Config) { c.Tenant = "gor"; c.GoroutinePerClient = true })
	if !waitFor(5*time.Second, func() bool {
		loopSrv.mu.Lock()
		defer loopSrv.mu.Unlock()
		return loopSrv.loop != nil
	}) {
		t.Fatal("a sidecar on plain TCP has no event loop")
	}
	cmds := func(cmds ...[]string) []byte {
		var b []byte
		for _, c := range cmds {
			b = encode(b, c...)
		}
		return b
	}
	big := strings.Repeat("x", 10000)
	for _, tc := range []struct {
		name    string
		pieces  [][]byte // written one after the other
		replies int
		onLoop  bool // the session is still on the loop afterwards
		closes  bool // keyfence closes the connection after the replies
	}{
		{"keyed commands and local replies", [][]byte{cmds([]string{"SET", "k", "1"}, []string{"GET", "k"}, []string{"PING"}, []string{"ECHO", "e"}, []string{"INCR", "k"}, []string{"EXISTS", "k", "nope"})}, 6, true, false},
		{"errors answered on the loop", [][]byte{cmds([]string{"BGSAVE"}, []string{"ACL", "WHOAMI"}, []string{"NOSUCH", "a"}, []string{"GET"}, []string{"GET", "k", "extra"})}, 5, true, false},
		{"a transaction mid-pipeline hands off, in order", [][]byte{cmds([]string{"SET", "t", "1"}, []string{"GET", "t"}, []string{"MULTI"}, []string{"INCR", "t"}, []string{"EXEC"}, []string{"GET", "t"})}, 6, false, false},
		{"HELLO 3 opening a batch stays on the loop", [][]byte{cmds([]string{"HELLO", "3"}), cmds([]string{"CLIENT", "SETINFO", "LIB-NAME", "x"}, []string{"HGETALL", "nope"}, []string{"GET", "nope"})}, 4, true, false},
		{"HELLO mid-batch hands off", [][]byte{cmds([]string{"GET", "h"}, []string{"HELLO", "3"}, []string{"GET", "h"})}, 3, false, false},
		{"SELECT hands off", [][]byte{cmds([]string{"SELECT", "1"}, []string{"GET", "h"})}, 2, false, false},
		{"a blocking pop hands off", [][]byte{cmds([]string{"RPUSH", "q", "a"}, []string{"BLPOP", "q", "1"}, []string{"LLEN", "q"})}, 3, false, false},
		{"byte by byte", split(cmds([]string{"SET", "b", "vv"}, []string{"GET", "b"}), 1), 2, true, false},
		{"a request cut across reads", split(cmds([]string{"SET", "c", strings.Repeat("y", 3000)}, []string{"STRLEN", "c"}), 1000), 2, true, false},
		{"a request over the loop's 4 KiB hands off", [][]byte{cmds([]string{"SET", "big", big}, []string{"STRLEN", "big"}, []string{"GET", "k"})}, 3, false, false},
		{"inline commands", [][]byte{[]byte("PING\r\nGET k\r\n")}, 2, true, false},
		{"QUIT", [][]byte{cmds([]string{"GET", "k"}, []string{"QUIT"})}, 2, false, true},
		{"a protocol error", [][]byte{cmds([]string{"GET", "k"}), []byte("*1\r\n$x\r\n")}, 2, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := map[string][]byte{}
			for _, target := range []struct{ name, addr string }{{"loop", loopAddr}, {"goroutine", goAddr}} {
				c := dialRaw(t, target.addr)
				for _, p := range tc.pieces {
					c.write(t, p)
				}
				var all []byte
				for i := 0; i < tc.replies; i++ {
					r, err := c.readE()
					if err != nil {
						t.Fatalf("%s: reply %d: %v (so far %q)", target.name, i, err, all)
					}
					all = append(all, r...)
				}
				if tc.closes {
					if _, err := c.readTimeout(5 * time.Second); !errors.Is(err, io.EOF) {
						t.Errorf("%s: after the replies: %v, want the connection closed", target.name, err)
					}
				}
				got[target.name] = all
				if target.name == "loop" && !tc.closes {
					if n := loopSrv.onLoop(); (n == 1) != tc.onLoop {
						t.Errorf("sessions on the loop: %d; want on the loop: %v", n, tc.onLoop)
					}
				}
				c.nc.Close()
			}
			if !bytes.Equal(got["loop"], got["goroutine"]) {
				t.Errorf("replies differ:\nloop      %q\ngoroutine %q", got["loop"], got["goroutine"])
			}
			waitFor(5*time.Second, func() bool { return loopSrv.Stats().Sessions == 0 })
		})
	}
}

// split cuts b into pieces of n bytes.
func split(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > n {
		out = append(out, b[:n])
		b = b[n:]
	}
	return append(out, b)
}

// TestEventLoopManyClients: clients pipelining at once, one command at a
// time and sixteen, some cutting their requests in two, each get their own
// replies in their own order while another client's transaction takes it
// off the loop.
func TestEventLoopManyClients(t *testing.T) {
	up := testRedis(t)
	writePaths(t, func(t *testing.T, mutate func(*Config)) *Server {
		return testEventLoopManyClients(t, up, mutate)
	})
}

// writePaths runs f once with the loop sending each turn's replies through
// io_uring and once with write(2) (Config.NoIOURing), and checks that the
// server f ran had the ring in the first case: where io_uring cannot be
// set up the first case fails, so that its path is never skipped unseen.
func writePaths(t *testing.T, f func(t *testing.T, mutate func(*Config)) *Server) {
	for _, ring := range []bool{true, false} {
		name := map[bool]string{true: "io_uring", false: "write(2)"}[ring]
		t.Run(name, func(t *testing.T) {
			srv := f(t, func(c *Config) { c.NoIOURing = !ring })
			srv.mu.Lock()
			l := srv.loop
			srv.mu.Unlock()
			if got := l != nil && l.ring != nil; got != ring {
				r, err := uring.New(1)
				if err != nil {
					t.Fatalf("io_uring cannot be set up on this machine (kernel.io_uring_disabled, or a seccomp profile that forbids it), so the event loop's io_uring path is not tested: %v", err)
				}
				r.Close()
				t.Fatalf("the event loop writes through io_uring: %v, want %v", got, ring)
			}
		})
	}
}

func testEventLoopManyClients(t *testing.T, up *redistest.Server, mutate func(*Config)) *Server {
	srv, addr := startProxyServer(t, up, mutate)
	const clients, rounds = 24, 40
	eachClient(t, addr, clients+1, func(i int, c *rawConn) error {
		if i == clients { // the transaction
			for _, step := range []struct{ args, want string }{{"SET tx 0", "+OK\r\n"}, {"MULTI", "+OK\r\n"}, {"INCR tx", "+QUEUED\r\n"}, {"EXEC", "*1\r\n:1\r\n"}} {
				if got, err := c.doE(strings.Fields(step.args)...); err != nil || string(got) != step.want {
					return fmt.Errorf("%s: %q, %v; want %q", step.args, got, err, step.want)
				}
			}
			return nil
		}
		depth := 1 + 15*(i%2)
		for r := range rounds {
			var req []byte
			for j := range depth {
				k, v := fmt.Sprintf("c%d:%d:%d", i, r, j), fmt.Sprintf("v%d-%d-%d", i, r, j)
				req = encode(encode(req, "SET", k, v), "GET", k)
			}
			// Every third client cuts its requests in two, a moment apart,
			// so that turns read partial requests beside whole ones.
			cut := len(req)
			if i%3 == 2 {
				cut = len(req) / 3
			}
			if err := c.writeE(req[:cut]); err != nil {
				return err
			}
			if cut < len(req) {
				time.Sleep(time.Millisecond)
				if err := c.writeE(req[cut:]); err != nil {
					return err
				}
			}
			for j := range depth {
				want := fmt.Sprintf("v%d-%d-%d", i, r, j)
				for _, exp := range []string{"+OK\r\n", fmt.Sprintf("$%d\r\n%s\r\n", len(want), want)} {
					got, err := c.readE()
					if err != nil || string(got) != exp {
						return fmt.Errorf("client %d round %d: %q, %v; want %q", i, r, got, err, exp)
					}
				}
			}
		}
		return nil
	})
	if !waitFor(5*time.Second, func() bool { return srv.Stats().Sessions == 0 }) {
		t.Errorf("sessions %d after every client left, want 0", srv.Stats().Sessions)
	}
	return srv
}

// TestEventLoopClientLeavesMidBatch: a client that closes while its batch
// waits on upstream ends its session when the replies come; nothing leaks
// and the next client is served.
func TestEventLoopClientLeavesMidBatch(t *testing.T) {
	up := testRedis(t)
	fp := faultproxy.StartT(t, up.Addr())
	srv, addr := startProxyServer(t, up, func(c *Config) { c.Upstream.Addr = fp.Addr() })
	c := dialRaw(t, addr)
	c.do(t, "SET", "k", "v")
	if err := fp.SetMode(faultproxy.Delay(300 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	c.write(t, encode(nil, "GET", "k"))
	time.Sleep(50 * time.Millisecond) // the GET is upstream now
	c.nc.Close()
	if srv.onLoop() != 1 {
		t.Fatal("the session left the loop before its reply came")
	}
	if !waitFor(5*time.Second, func() bool { return srv.Stats().Sessions == 0 }) {
		t.Fatalf("sessions %d after the client left, want 0", srv.Stats().Sessions)
	}
	if err := fp.SetMode(faultproxy.Pass); err != nil {
		t.Fatal(err)
	}
	if got := string(dialRaw(t, addr).do(t, "GET", "k")); got != "$1\r\nv\r\n" {
		t.Fatalf("GET after: %q", got)
	}
}

// TestEventLoopSlowReaderStallsNobody: a client that does not read its
// replies fills its own socket; the loop goes on serving everyone else,
// and the slow client gets every reply once it reads.
func TestEventLoopSlowReaderStallsNobody(t *testing.T) {
	up := testRedis(t)
	writePaths(t, func(t *testing.T, mutate func(*Config)) *Server {
		return testEventLoopSlowReader(t, up, mutate)
	})
}

func testEventLoopSlowReader(t *testing.T, up *redistest.Server, mutate func(*Config)) *Server {
	srv, addr := startProxyServer(t, up, mutate)
	fast := dialRaw(t, addr)
	value := strings.Repeat("z", 64<<10)
	fast.do(t, "SET", "big", value)
	slow := dialRaw(t, addr)
	const n = 200 // 12.5 MiB of replies, far more than the sockets hold
	var req []byte
	for range n {
		req = encode(req, "GET", "big")
	}
	go func() { _ = slow.writeE(req) }()
	time.Sleep(200 * time.Millisecond)
	for i := range 50 {
		if got := string(fast.do(t, "INCR", "n")); got != fmt.Sprintf(":%d\r\n", i+1) {
			t.Fatalf("INCR %d beside the slow reader: %q", i, got)
		}
	}
	want := fmt.Sprintf("$%d\r\n%s\r\n", len(value), value)
	for i := range n {
		got, err := slow.readE()
		if err != nil || string(got) != want {
			t.Fatalf("slow reader's reply %d: %d bytes, %v", i, len(got), err)
		}
	}
	return srv
}

// TestEventLoopShutdown: an idle client on the loop is closed by a drain,
// and a forced shutdown ends a client whose batch upstream never answers.
func TestEventLoopShutdown(t *testing.T) {
	up := testRedis(t)
	fp := faultproxy.StartT(t, up.Addr())
	srv, addr := startProxyServer(t, up, func(c *Config) { c.Upstream.Addr = fp.Addr() })
	idle := dialRaw(t, addr)
	idle.do(t, "PING")
	stuck := dialRaw(t, addr)
	stuck.do(t, "PING")
	stuck.do(t, "GET", "k") // the loop's upstream connection is open
	if err := fp.SetMode(faultproxy.Blackhole); err != nil {
		t.Fatal(err)
	}
	stuck.write(t, encode(nil, "GET", "k"))
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a batch that never gets its reply: %v, want the deadline", err)
	}
	if n := srv.Stats().Sessions; n != 0 {
		t.Fatalf("sessions after a forced Shutdown: %d", n)
	}
	if _, err := idle.readTimeout(time.Second); !errors.Is(err, io.EOF) {
		t.Errorf("idle client after Shutdown: %v, want EOF", err)
	}
	if r, err := stuck.readTimeout(time.Second); err == nil && !bytes.HasPrefix(r, []byte("-")) {
		t.Errorf("stuck client after Shutdown: %q, want an error or the connection closed", r)
	}
}

// TestEventLoopServesGoRedis: go-redis's handshake (HELLO 3, CLIENT
// SETINFO) and its plain commands keep its connections on the loop, in
// RESP3.
func TestEventLoopServesGoRedis(t *testing.T) {
	up := testRedis(t)
	srv, addr := startProxyServer(t, up, nil)
	c := proxyClient(t, addr, func(o *redis.Options) { o.Protocol, o.DisableIdentity, o.PoolSize = 3, false, 2 })
	ctx := testCtx(t)
	if err := c.HSet(ctx, "h", "f", "v").Err(); err != nil {
		t.Fatal(err)
	}
	got, err := c.HGetAll(ctx, "h").Result()
	if err != nil || len(got) != 1 || got["f"] != "v" {
		t.Fatalf("HGETALL: %v, %v", got, err)
	}
	if n, sessions := srv.onLoop(), srv.Stats().Sessions; n == 0 || n != sessions {
		t.Fatalf("%d of %d go-redis connections on the loop, want all", n, sessions)
	}
	if err := c.Do(ctx, "SELECT", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if n, sessions := srv.onLoop(), srv.Stats().Sessions; n != sessions-1 {
		t.Fatalf("after SELECT on one connection: %d of %d on the loop, want all but that one", n, sessions)
	}
}

// TestEventLoopFloodStallsNobody: beside a client that never stops sending
// PINGs (answered on the loop, never waiting on upstream), another client is
// served while the flood goes on. (The loop gives each client one batch per
// turn; on this machine the flood could not be made to outpace the loop
// even without that bound, so this checks liveness, not the bound itself.)
func TestEventLoopFloodStallsNobody(t *testing.T) {
	up := testRedis(t)
	_, addr := startProxyServer(t, up, nil)
	flood := dialRaw(t, addr)
	var pings []byte
	for range 2000 {
		pings = encode(pings, "PING")
	}
	stop := make(chan struct{})
	var flooded sync.WaitGroup
	flooded.Add(2)
	go func() { // write without pause until stopped
		defer flooded.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if flood.writeE(pings) != nil {
				return
			}
		}
	}()
	go func() { // read the replies, so that the flood never blocks on its socket
		defer flooded.Done()
		buf := make([]byte, 64<<10)
		for {
			_ = flood.nc.SetReadDeadline(time.Now().Add(rawTimeout))
			if _, err := flood.nc.Read(buf); err != nil {
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond) // the flood is under way
	other := dialRaw(t, addr)
	for i := range 100 {
		if got := string(other.do(t, "INCR", "n")); got != fmt.Sprintf(":%d\r\n", i+1) {
			t.Fatalf("INCR %d beside the flood: %q", i, got)
		}
	}
	select {
	case <-stop:
	default:
		close(stop)
	}
	flood.nc.Close()
	flooded.Wait()
}

// loopFuzzCommands are what FuzzEventLoop sends: commands the loop serves
// and ones it hands off, with replies that depend on nothing but the
// commands before them.
var loopFuzzCommands = [][]string{
	{"SET", "k%d", "v"}, {"GET", "k%d"}, {"INCR", "n%d"}, {"DEL", "k%d"}, {"EXISTS", "k%d", "n%d"},
	{"APPEND", "k%d", "xy"}, {"STRLEN", "k%d"}, {"RPUSH", "l%d", "a"}, {"LRANGE", "l%d", "0", "-1"},
	{"HSET", "h%d", "f", "v"}, {"HGETALL", "h%d"}, {"MGET", "k%d", "n%d"}, {"PING"}, {"ECHO", "e"},
	{"MULTI"}, {"EXEC"}, {"DISCARD"}, {"WATCH", "k%d"}, {"UNWATCH"}, {"SELECT", "%d"},
	{"HELLO", "3"}, {"HELLO", "2"}, {"CLIENT", "SETNAME", "c%d"}, {"CLIENT", "GETNAME"},
	{"BLPOP", "l%d", "0.01"}, {"SET", "big%d", strings.Repeat("b", 5000)}, {"NOSUCH"}, {"GET"},
	{"BGSAVE"}, {"SUBSCRIBE", "ch%d"}, {"UNSUBSCRIBE"}, {"QUIT"},
}

// FuzzEventLoop sends the same commands, cut into the same pieces, to a
// keyfence serving clients on its event loop and to one serving each on a
// goroutine: every reply must be the same bytes. Each input byte picks a
// command and a key; a high bit cuts the stream after it.
func FuzzEventLoop(f *testing.F) {
	up := testRedis(f)
	_, loopAddr := startProxyServer(f, up, func(c *Config) { c.Tenant = "fuzzloop" })
	_, goAddr := startProxyServer(f, up, func(c *Config) { c.Tenant = "fuzzgor"; c.GoroutinePerClient = true })
	f.Add([]byte{0, 1, 2, 0x80 | 14, 2, 15, 1})
	f.Add([]byte{20, 0x80 | 1, 10, 19, 1, 25, 6})
	f.Add([]byte{17, 14, 2, 15, 24, 29, 28, 30, 12})
	f.Fuzz(func(t *testing.T, data []byte) {
		var pieces [][]byte
		var cur []byte
		n := 0
		for _, b := range data[:min(len(data), 40)] {
			c := loopFuzzCommands[int(b&0x7f)%len(loopFuzzCommands)]
			args := make([]string, len(c))
			for i, a := range c {
				if strings.Contains(a, "%d") {
					a = fmt.Sprintf(a, int(b>>5)&1)
				}
				args[i] = a
			}
			cur = encode(cur, args...)
			n++
			if b&0x80 != 0 {
				pieces, cur = append(pieces, cur), nil
			}
			if args[0] == "QUIT" || args[0] == "SUBSCRIBE" {
				break // the connection ends, or only pub/sub replies follow
			}
		}
		pieces = append(pieces, cur)
		var got [2][]byte
		for i, addr := range []string{loopAddr, goAddr} {
			c, err := dialRawE(addr)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range pieces {
				if len(p) > 0 {
					if err := c.writeE(p); err != nil {
						t.Fatal(err)
					}
				}
			}
			for range n {
				r, err := c.readE()
				if err != nil {
					t.Fatalf("server %d: %v after %q", i, err, got[i])
				}
				got[i] = append(got[i], r...)
			}
			c.nc.Close()
		}
		if !bytes.Equal(got[0], got[1]) {
			t.Fatalf("replies differ:\nloop      %q\ngoroutine %q", got[0], got[1])
		}
	})
}

// TestEventLoopUpstreamBackpressure: while Redis runs a script and answers
// nothing, 1,000 clients go on sending; their batches wait behind the one
// in flight (loopUpstream.writeDue) and go upstream together, megabytes in
// one write, when its reply comes. Every request is then answered, in each
// client's order, and every write took effect. (Loopback sockets here take
// that much without a short write; TestWriteDue covers the rule for one.)
func TestEventLoopUpstreamBackpressure(t *testing.T) {
	up := testRedis(t)
	writePaths(t, func(t *testing.T, mutate func(*Config)) *Server {
		srv, addr := startProxyServer(t, up, mutate)
		direct := dialRaw(t, up.Addr())
		// 600 ms of Redis answering nothing: a script sent to Redis
		// directly, so that keyfence carries only the clients' SETs.
		const busy = `local t = redis.call('TIME') local s = t[1] * 1000000 + t[2]
repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - s > 600000 return 1`
		if err := direct.writeE(encode(nil, "EVAL", busy, "0")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // the script is running
		// A client has one batch in flight at a time (of one 4 KiB read at
		// most): 1,000 clients' SETs of 3,000 bytes are 3 MB a round.
		const clients, depth = 1000, 4
		value := strings.Repeat("v", 3000)
		eachClient(t, addr, clients, func(i int, c *rawConn) error {
			var req []byte
			for j := range depth {
				req = encode(req, "SET", fmt.Sprintf("bp:%d:%d", i, j), fmt.Sprintf("%s%d:%d", value, i, j))
			}
			if err := c.writeE(req); err != nil {
				return err
			}
			for j := range depth {
				if got, err := c.readE(); err != nil || string(got) != "+OK\r\n" {
					return fmt.Errorf("client %d, SET %d: %q, %v", i, j, got, err)
				}
			}
			for _, j := range []int{0, depth / 2, depth - 1} {
				want := fmt.Sprintf("%s%d:%d", value, i, j)
				if got, err := c.doE("GET", fmt.Sprintf("bp:%d:%d", i, j)); err != nil || string(got) != fmt.Sprintf("$%d\r\n%s\r\n", len(want), want) {
					return fmt.Errorf("client %d, GET bp:%d:%d after the stall: %.40q…, %v", i, i, j, got, err)
				}
			}
			return nil
		})
		if got, err := direct.readE(); err != nil || string(got) != ":1\r\n" {
			t.Fatalf("the busy script: %q, %v", got, err)
		}
		return srv
	})
}

// TestWriteDue: a turn's requests wait while an earlier batch is
// unanswered, unless they are many or a short write left bytes of the
// batches in flight, which must go on for their replies ever to come.
func TestWriteDue(t *testing.T) {
	batches := func(n int) []*loopConn { return make([]*loopConn, n) }
	for _, tc := range []struct {
		name       string
		up         loopUpstream
		due        bool
		wantSentTo int
	}{
		{"no connection yet", loopUpstream{fd: -1, out: []byte("x"), fifo: batches(1)}, false, 0},
		{"nothing to write", loopUpstream{fd: 3, fifo: batches(2), sentTo: 2}, false, 2},
		{"nothing in flight", loopUpstream{fd: 3, out: []byte("x"), fifo: batches(1)}, true, 1},
		{"all in flight answered", loopUpstream{fd: 3, out: []byte("x"), fifo: batches(3), head: 2, sentTo: 2}, true, 3},
		{"a batch in flight", loopUpstream{fd: 3, out: []byte("x"), fifo: batches(3), head: 1, sentTo: 2}, false, 2},
		{"a batch in flight, a short write left bytes", loopUpstream{fd: 3, out: []byte("x"), fifo: batches(3), head: 1, sentTo: 2, unsent: true}, true, 3},
		{"a batch in flight, 16 KiB waiting", loopUpstream{fd: 3, out: make([]byte, holdUpstreamBytes), fifo: batches(3), head: 1, sentTo: 2}, true, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := tc.up
			if got := up.writeDue(); got != tc.due || up.sentTo != tc.wantSentTo {
				t.Errorf("writeDue() = %v with sentTo %d, want %v with %d", got, up.sentTo, tc.due, tc.wantSentTo)
			}
		})
	}
}

// TestAwaitingReplies: the loop yields and looks again before sleeping only
// while a batch it wrote upstream lately is unanswered, not for batches it
// holds or has not been able to send (a dial under way), nor once Redis
// has taken over a millisecond.
func TestAwaitingReplies(t *testing.T) {
	batches := func(n int) []*loopConn { return make([]*loopConn, n) }
	db0, db1 := upstream.Key{DB: 0}, upstream.Key{DB: 1}
	now := time.Now()
	lately, long := now.Add(-100*time.Microsecond), now.Add(-2*time.Millisecond)
	for _, tc := range []struct {
		name string
		ups  map[upstream.Key][]*loopUpstream
		want bool
	}{
		{"no upstream connection", nil, false},
		{"nothing sent", map[upstream.Key][]*loopUpstream{db0: {{fd: 3}}}, false},
		{"batches queued behind a dial", map[upstream.Key][]*loopUpstream{db0: {{fd: -1, dialing: true, fifo: batches(2)}}}, false},
		{"a batch in flight", map[upstream.Key][]*loopUpstream{db0: {{fd: 3, fifo: batches(2), sentTo: 2, wroteAt: lately}}}, true},
		{"a batch in flight for 2 ms", map[upstream.Key][]*loopUpstream{db0: {{fd: 3, fifo: batches(2), sentTo: 2, wroteAt: long}}}, false},
		{"all answered", map[upstream.Key][]*loopUpstream{db0: {{fd: 3, fifo: batches(2), head: 2, sentTo: 2, wroteAt: lately}}}, false},
		{"one of two databases waiting", map[upstream.Key][]*loopUpstream{db0: {{fd: 3}}, db1: {{fd: 4, fifo: batches(3), head: 1, sentTo: 3, wroteAt: lately}}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &eventLoop{ups: tc.ups, now: now}
			if got := l.awaitingReplies(); got != tc.want {
				t.Errorf("awaitingReplies() = %v, want %v", got, tc.want)
			}
		})
	}
}
