package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyfence/keyfence/upstream"
	"github.com/redis/go-redis/v9"
)

// expect sends args on c and checks the raw reply.
func expect(t *testing.T, c *rawConn, want string, args ...string) {
	t.Helper()
	if got := c.do(t, args...); string(got) != want {
		t.Errorf("%q:\n  got  %s\n  want %s", args, quoteReply(got), quoteReply([]byte(want)))
	}
}

func bulk(s string) string { return "$" + strconv.Itoa(len(s)) + "\r\n" + s + "\r\n" }

func arr(elems ...string) string {
	return "*" + strconv.Itoa(len(elems)) + "\r\n" + strings.Join(elems, "")
}

// readUntilClosed reads replies until the peer closes the connection and
// returns them back to back; it fails when the connection stays open.
func readUntilClosed(t *testing.T, c *rawConn, d time.Duration) []byte {
	t.Helper()
	var out []byte
	deadline := time.Now().Add(d)
	for {
		r, err := c.readTimeout(time.Until(deadline))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Errorf("connection still open after %v; replies so far %s", d, quoteReply(out))
			}
			return out
		}
		out = append(out, r...)
	}
}

// TestMalformedRESP: a malformed request gets Redis's own protocol error and
// the connection is closed, exactly as Redis does; other clients go on.
func TestMalformedRESP(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	addr := startProxy(t, up, nil)
	bystander := dialRaw(t, addr)
	expect(t, bystander, "+OK\r\n", "SET", "bystander", "still here")

	cases := []struct{ name, input string }{
		{"multibulk length not a number", "*abc\r\n"},
		{"multibulk length past INT_MAX", "*99999999999\r\n"},
		{"bulk header expected", "*1\r\n+PING\r\n"},
		{"bulk length not a number", "*1\r\n$x\r\n"},
		{"negative bulk length", "*1\r\n$-5\r\n"},
		{"inline unbalanced quotes", "SET \"abc\r\n"},
		{"inline quote followed by a letter", "SET \"a\"b c\r\n"},
		{"inline request too big", strings.Repeat("a", 70000)},
		{"valid command, then garbage", "*1\r\n$4\r\nPING\r\n*abc\r\n"},
		{"SET runs, then garbage", "*3\r\n$3\r\nSET\r\n$10\r\nmalformedk\r\n$1\r\n1\r\n*1\r\n$x\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			direct := dialRaw(t, up.Addr())
			direct.write(t, []byte(tc.input))
			want := readUntilClosed(t, direct, 5*time.Second)
			if !bytes.Contains(want, []byte("-ERR Protocol error")) {
				t.Fatalf("direct Redis answered %s; the case is wrong", quoteReply(want))
			}
			c := dialRaw(t, addr)
			c.write(t, []byte(tc.input))
			got := readUntilClosed(t, c, 5*time.Second)
			if !bytes.Equal(got, want) {
				t.Errorf("got  %s\nwant %s (Redis)", quoteReply(got), quoteReply(want))
			}
			expect(t, bystander, bulk("still here"), "GET", "bystander")
		})
	}
}

// TestOversizedRequest: a request over MaxRequestBytes is refused with the
// documented protocol error, the connection closes, nothing reaches
// upstream, and other clients are unaffected.
func TestOversizedRequest(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	tenant := tenantFor(t)
	addr := startProxy(t, up, func(c *Config) { c.MaxRequestBytes = 1024 })
	bystander := dialRaw(t, addr)
	expect(t, bystander, "+OK\r\n", "SET", "small", strings.Repeat("s", 500))

	c := dialRaw(t, addr)
	c.write(t, encode(nil, "SET", "big", strings.Repeat("b", 2000)))
	got := readUntilClosed(t, c, 5*time.Second)
	if want := "-ERR Protocol error: request is larger than the proxy's --max-request-bytes\r\n"; string(got) != want {
		t.Errorf("got %s, want %s", quoteReply(got), quoteReply([]byte(want)))
	}
	ctx := testCtx(t)
	if n := up.Client().Exists(ctx, "tenant:"+tenant+":big").Val(); n != 0 {
		t.Errorf("the oversized SET reached upstream")
	}
	// Many small arguments adding up past the limit are refused too.
	c2 := dialRaw(t, addr)
	args := []string{"MSET"}
	for i := 0; i < 100; i++ {
		args = append(args, fmt.Sprintf("key%03d", i), strings.Repeat("v", 20))
	}
	c2.write(t, encode(nil, args...))
	if got := readUntilClosed(t, c2, 5*time.Second); !bytes.HasPrefix(got, []byte("-ERR Protocol error: request is larger")) {
		t.Errorf("MSET over the limit: got %s", quoteReply(got))
	}
	if n := up.Client().Exists(ctx, "tenant:"+tenant+":key000").Val(); n != 0 {
		t.Errorf("the oversized MSET reached upstream")
	}
	expect(t, bystander, bulk(strings.Repeat("s", 500)), "GET", "small")
}

// serverStats reads the counters that any command reaching Redis moves:
// calls (executed, rejected or failed) per command from INFO commandstats,
// and the error replies sent. Health-check commands (PING, and the INFO that
// reads the counters) are left out, so a keep-alive cannot make the test
// flaky.
func serverStats(t *testing.T, c *redis.Client) (calls map[string]int64, errors int64, info string) {
	t.Helper()
	ctx := testCtx(t)
	info, err := c.Info(ctx, "stats", "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	e, _ := infoField(info, "total_error_replies")
	errors, _ = strconv.ParseInt(e, 10, 64)
	calls = map[string]int64{}
	for _, m := range regexp.MustCompile(`(?m)^cmdstat_([^:]+):calls=(\d+),.*rejected_calls=(\d+),failed_calls=(\d+)`).FindAllStringSubmatch(info, -1) {
		if m[1] == "ping" || m[1] == "info" {
			continue
		}
		for _, n := range m[2:] {
			v, _ := strconv.ParseInt(n, 10, 64)
			calls[m[1]] += v
		}
	}
	return calls, errors, info
}

// TestRefusedCommandsNeverReachUpstream: unknown commands, unknown
// subcommands, wrong arity and denied commands get their error from keyfence
// and nothing at all is sent upstream. Not parallel: it reads server-wide
// counters, so it must have the server to itself.
func TestRefusedCommandsNeverReachUpstream(t *testing.T) {
	up := testRedis(t)
	admin := directDB(t, up, 0)
	tenant := tenantFor(t)
	addr := startProxy(t, up, nil)
	c := dialRaw(t, addr)
	direct := dialRaw(t, up.Addr())

	denied := func(name string) string { return "-ERR command '" + name + "' is not allowed through keyfence: " }
	cases := []struct {
		args []string
		want string // exact reply, or prefix when it ends in ": "
		same bool   // the reply must equal direct Redis's
	}{
		{[]string{"NOSUCHCMD", "a", "b"}, "", true},
		{[]string{"OBJECT", "NOSUCH", "k"}, "", true},
		{[]string{"CONFIG", "NOSUCH"}, "", true},
		{[]string{"GET"}, "", true},
		{[]string{"GET", "a", "b"}, "", true},
		{[]string{"OBJECT", "ENCODING"}, "", true},
		{[]string{"CONFIG", "GET", "maxmemory"}, denied("config|get"), false},
		{[]string{"CONFIG", "SET", "maxmemory", "1"}, denied("config|set"), false},
		{[]string{"MIGRATE", "127.0.0.1", "1", "k", "0", "1000"}, denied("migrate"), false},
		{[]string{"MOVE", "k", "1"}, denied("move"), false},
		{[]string{"SWAPDB", "0", "1"}, denied("swapdb"), false},
		{[]string{"SCRIPT", "KILL"}, denied("script|kill"), false},
		{[]string{"SCRIPT", "DEBUG", "YES"}, denied("script|debug"), false},
		{[]string{"CLIENT", "KILL", "ID", "1"}, denied("client|kill"), false},
		{[]string{"CLIENT", "PAUSE", "10"}, denied("client|pause"), false},
		{[]string{"MONITOR"}, denied("monitor"), false},
		{[]string{"DEBUG", "SLEEP", "0"}, denied("debug"), false},
		{[]string{"SHUTDOWN", "NOSAVE"}, denied("shutdown"), false},
		{[]string{"ACL", "WHOAMI"}, denied("acl|whoami"), false},
		{[]string{"SAVE"}, denied("save"), false},
		{[]string{"BGSAVE"}, denied("bgsave"), false},
		{[]string{"REPLICAOF", "NO", "ONE"}, denied("replicaof"), false},
		{[]string{"SLOWLOG", "GET"}, denied("slowlog|get"), false},
		{[]string{"LATENCY", "LATEST"}, denied("latency|latest"), false},
		{[]string{"MODULE", "LIST"}, denied("module|list"), false},
		{[]string{"CLUSTER", "INFO"}, denied("cluster|info"), false},
		{[]string{"FAILOVER"}, denied("failover"), false},
	}
	// What Redis says to the cases that must match it; asked before the
	// counters are read.
	for i, tc := range cases {
		if tc.same {
			cases[i].want = string(direct.do(t, tc.args...))
		}
	}
	// Warm up: keyfence dials its upstream connections.
	expect(t, c, "$-1\r\n", "GET", "warm-up")
	calls0, errors0, _ := serverStats(t, admin)
	for _, tc := range cases {
		got := string(c.do(t, tc.args...))
		switch {
		case strings.HasSuffix(tc.want, ": "):
			if !strings.HasPrefix(got, tc.want) || !strings.HasSuffix(got, "\r\n") || len(got) <= len(tc.want)+2 {
				t.Errorf("%q: got %s, want an error starting %q with a reason", tc.args, quoteReply([]byte(got)), tc.want)
			}
		case got != tc.want:
			t.Errorf("%q: got %s, want %s", tc.args, quoteReply([]byte(got)), quoteReply([]byte(tc.want)))
		}
	}
	// The connection is still usable after every refusal (MONITOR included).
	expect(t, c, "+PONG\r\n", "PING")
	calls1, errors1, stats := serverStats(t, admin)
	for name, n := range calls1 {
		if n != calls0[name] {
			t.Errorf("upstream ran %s %d times while keyfence refused %d commands", name, n-calls0[name], len(cases))
		}
	}
	if d := errors1 - errors0; d != 0 {
		t.Errorf("upstream sent %d error replies meanwhile; the refused commands reached it", d)
	}
	// The refused commands never reached upstream: the call counts above
	// are unchanged, and none of them is in commandstats.
	for _, name := range []string{"config", "migrate", "move", "swapdb", "client|kill", "client|pause", "monitor", "debug", "shutdown", "save", "bgsave", "replicaof", "failover"} {
		if strings.Contains(stats, "cmdstat_"+name) {
			t.Errorf("INFO commandstats shows cmdstat_%s", name)
		}
	}

	// FLUSHALL is allowed: it removes this tenant's keys, in every db, only.
	ctx := testCtx(t)
	expect(t, c, "+OK\r\n", "SET", "mine", "1")
	admin.Set(ctx, "tenant:refused-other:k", "other", 0)
	db5 := directDB(t, up, 5)
	db5.Set(ctx, "tenant:"+tenant+":in5", "x", 0)
	t.Cleanup(func() { admin.Del(context.Background(), "tenant:refused-other:k") })
	expect(t, c, "+OK\r\n", "FLUSHALL")
	if n := admin.Exists(ctx, "tenant:"+tenant+":mine").Val() + db5.Exists(ctx, "tenant:"+tenant+":in5").Val(); n != 0 {
		t.Errorf("FLUSHALL left %d of the tenant's keys", n)
	}
	if v := admin.Get(ctx, "tenant:refused-other:k").Val(); v != "other" {
		t.Errorf("FLUSHALL removed another tenant's key")
	}
}

// TestMaxClients: the client past MaxClients gets Redis's error and is
// disconnected; a slot that frees up can be taken again.
func TestMaxClients(t *testing.T) {
	t.Parallel()
	addr := startProxy(t, testRedis(t), func(c *Config) { c.MaxClients = 3 })
	var conns []*rawConn
	for i := 0; i < 3; i++ {
		c := dialRaw(t, addr)
		expect(t, c, "+PONG\r\n", "PING")
		conns = append(conns, c)
	}
	extra := dialRaw(t, addr)
	if got := readUntilClosed(t, extra, 5*time.Second); string(got) != "-ERR max number of clients reached\r\n" {
		t.Errorf("4th client: got %s", quoteReply(got))
	}
	for _, c := range conns {
		expect(t, c, "+PONG\r\n", "PING")
	}
	conns[0].nc.Close()
	ok := waitFor(3*time.Second, func() bool {
		c, err := dialRawE(addr)
		if err != nil {
			return false
		}
		defer c.nc.Close()
		r, err := c.doE("PING")
		return err == nil && string(r) == "+PONG\r\n"
	})
	if !ok {
		t.Errorf("no client could connect after one of the 3 left")
	}
}

// TestPipelineOfThousandKeepsOrder: 1000 commands written at once, local and
// upstream ones mixed, come back in order.
func TestPipelineOfThousandKeepsOrder(t *testing.T) {
	t.Parallel()
	c := dialRaw(t, startProxy(t, testRedis(t), nil))
	var req []byte
	var want []string
	for i := 0; i < 250; i++ {
		v := "v" + strconv.Itoa(i)
		req = encode(req, "SET", "k"+strconv.Itoa(i%17), v)
		req = encode(req, "GET", "k"+strconv.Itoa(i%17))
		req = encode(req, "INCR", "ctr")
		req = encode(req, "ECHO", "e"+strconv.Itoa(i))
		want = append(want, "+OK\r\n", bulk(v), ":"+strconv.Itoa(i+1)+"\r\n", bulk("e"+strconv.Itoa(i)))
	}
	c.write(t, req)
	for i, w := range want {
		got := c.read(t)
		if string(got) != w {
			t.Fatalf("reply %d of %d: got %s, want %s", i, len(want), quoteReply(got), quoteReply([]byte(w)))
		}
	}
}

// TestConcurrentClientsNeverGetAnothersReply: 50 clients share keyfence's
// multiplexed upstream connections; each sees only its own replies.
func TestConcurrentClientsNeverGetAnothersReply(t *testing.T) {
	t.Parallel()
	addr := startProxy(t, testRedis(t), nil)
	const clients, rounds = 50, 60
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for id := 0; id < clients; id++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- func() error {
				c, err := dialRawE(addr)
				if err != nil {
					return err
				}
				defer c.nc.Close()
				me := "client" + strconv.Itoa(id)
				for i := 1; i <= rounds; i++ {
					val := fmt.Sprintf("%s-round-%d", me, i)
					var req []byte
					req = encode(req, "INCR", me+":ctr")
					req = encode(req, "SET", me+":val", val)
					req = encode(req, "GET", me+":val")
					if i%10 == 0 {
						req = encode(req, "MGET", me+":val", me+":ctr")
					}
					if err := c.writeE(req); err != nil {
						return err
					}
					want := []string{":" + strconv.Itoa(i) + "\r\n", "+OK\r\n", bulk(val)}
					if i%10 == 0 {
						want = append(want, arr(bulk(val), bulk(strconv.Itoa(i))))
					}
					for _, w := range want {
						got, err := c.readE()
						if err != nil {
							return fmt.Errorf("%s round %d: %v", me, i, err)
						}
						if string(got) != w {
							return fmt.Errorf("%s round %d: got %s, want %s", me, i, quoteReply(got), quoteReply([]byte(w)))
						}
					}
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// TestSelectFlushdbFlushall: SELECT n is the tenant's namespace in upstream
// db n; FLUSHDB empties only that db's tenant keys, FLUSHALL the tenant's
// keys in every db; no other key is touched.
func TestSelectFlushdbFlushall(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	ctx := testCtx(t)
	tenant := tenantFor(t)
	p := "tenant:" + tenant + ":"
	addr := startProxy(t, up, nil)
	c := dialRaw(t, addr)
	direct := dialRaw(t, up.Addr())
	db := map[int]*redis.Client{0: directDB(t, up, 0), 5: directDB(t, up, 5), 6: directDB(t, up, 6)}
	for n, d := range db {
		d.Set(ctx, "tenant:selother:k", "other", 0)
		d.Set(ctx, "plain-app-key", "untouched", 0)
		t.Cleanup(func() { d.Del(context.Background(), "tenant:selother:k", "plain-app-key") })
		_ = n
	}

	expect(t, c, "+OK\r\n", "SET", "k0", "zero")
	expect(t, c, "+OK\r\n", "SELECT", "5")
	expect(t, c, "+OK\r\n", "SET", "k5", "five")
	expect(t, c, "+OK\r\n", "SET", "shared", "five")
	expect(t, c, "+OK\r\n", "SELECT", "6")
	expect(t, c, "+OK\r\n", "SET", "k6", "six")
	expect(t, c, "+OK\r\n", "SET", "shared", "six")
	expect(t, c, bulk("six"), "GET", "shared")
	for _, tc := range []struct {
		db       int
		key, val string
	}{{0, "k0", "zero"}, {5, "k5", "five"}, {5, "shared", "five"}, {6, "k6", "six"}, {6, "shared", "six"}} {
		if got := db[tc.db].Get(ctx, p+tc.key).Val(); got != tc.val {
			t.Errorf("upstream db %d %s%s = %q, want %q", tc.db, p, tc.key, got, tc.val)
		}
	}
	if n := db[0].Exists(ctx, p+"k5", p+"k6").Val() + db[5].Exists(ctx, p+"k6").Val(); n != 0 {
		t.Errorf("a key landed in the wrong db")
	}
	// SELECT's errors are Redis's.
	for _, args := range [][]string{{"SELECT", "99"}, {"SELECT", "abc"}, {"SELECT", "-1"}} {
		expect(t, c, string(direct.do(t, args...)), args...)
	}
	expect(t, c, ":2\r\n", "DBSIZE")

	expect(t, c, "+OK\r\n", "SELECT", "5")
	expect(t, c, ":2\r\n", "DBSIZE")
	expect(t, c, "+OK\r\n", "FLUSHDB")
	expect(t, c, ":0\r\n", "DBSIZE")
	if n := db[5].Exists(ctx, p+"k5", p+"shared").Val(); n != 0 {
		t.Errorf("FLUSHDB left %d tenant keys in db 5", n)
	}
	if n := db[6].Exists(ctx, p+"k6", p+"shared").Val() + db[0].Exists(ctx, p+"k0").Val(); n != 3 {
		t.Errorf("FLUSHDB in db 5 removed the tenant's keys of other dbs")
	}
	expect(t, c, "+OK\r\n", "FLUSHALL")
	for n, d := range db {
		if k := d.Exists(ctx, p+"k0", p+"k5", p+"k6", p+"shared").Val(); k != 0 {
			t.Errorf("FLUSHALL left %d tenant keys in db %d", k, n)
		}
		if d.Get(ctx, "tenant:selother:k").Val() != "other" || d.Get(ctx, "plain-app-key").Val() != "untouched" {
			t.Errorf("FLUSHDB/FLUSHALL removed keys of others in db %d", n)
		}
	}
}

// TestAuth: with a client password, commands before AUTH get NOAUTH, a wrong
// password WRONGPASS, and AUTH or HELLO 3 AUTH open the session; without
// one, AUTH behaves like Redis without requirepass.
func TestAuth(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	t.Run("with password", func(t *testing.T) {
		addr := startProxy(t, up, func(c *Config) { c.ClientPassword = "s3cret" })
		const wrongpass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
		c := dialRaw(t, addr)
		expect(t, c, "-NOAUTH Authentication required.\r\n", "GET", "k")
		expect(t, c, "-NOAUTH Authentication required.\r\n", "PING")
		expect(t, c, "-NOAUTH Authentication required.\r\n", "SELECT", "1")
		expect(t, c, wrongpass, "AUTH", "wrong")
		expect(t, c, wrongpass, "AUTH", "default", "wrong")
		expect(t, c, wrongpass, "AUTH", "someone", "s3cret")
		expect(t, c, "-ERR syntax error\r\n", "AUTH", "a", "b", "c")
		expect(t, c, "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n", "HELLO", "3")
		expect(t, c, "-NOAUTH Authentication required.\r\n", "GET", "k")
		expect(t, c, "+OK\r\n", "AUTH", "s3cret")
		expect(t, c, "+OK\r\n", "SET", "k", "v")
		expect(t, c, bulk("v"), "GET", "k")
		expect(t, c, "+OK\r\n", "AUTH", "default", "s3cret")

		h := dialRaw(t, addr)
		expect(t, h, wrongpass, "HELLO", "3", "AUTH", "default", "wrong")
		expect(t, h, "-NOAUTH Authentication required.\r\n", "GET", "k")
		r := h.do(t, "HELLO", "3", "AUTH", "default", "s3cret")
		if v := mustRV(t, r); v.typ != '%' || !bytes.Contains(r, []byte("$5\r\nproto\r\n:3\r\n")) {
			t.Errorf("HELLO 3 AUTH: %s", quoteReply(r))
		}
		expect(t, h, bulk("v"), "GET", "k")
		expect(t, h, "_\r\n", "GET", "nokey")

		// RESET forgets the authentication.
		expect(t, h, "+RESET\r\n", "RESET")
		expect(t, h, "-NOAUTH Authentication required.\r\n", "GET", "k")

		// A client library with the password configured just works.
		ctx := testCtx(t)
		gc := proxyClient(t, addr, func(o *redis.Options) { o.Password = "s3cret"; o.Protocol = 3 })
		if v, err := gc.Get(ctx, "k").Result(); err != nil || v != "v" {
			t.Errorf("go-redis with password: %q %v", v, err)
		}
		bad := proxyClient(t, addr, func(o *redis.Options) { o.Password = "nope" })
		if err := bad.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
			t.Errorf("go-redis with a wrong password: %v", err)
		}
	})
	t.Run("without password", func(t *testing.T) {
		addr := startProxy(t, up, nil)
		c := dialRaw(t, addr)
		direct := dialRaw(t, up.Addr())
		for _, args := range [][]string{
			{"AUTH", "x"},
			{"AUTH", "default", "anything"},
			{"AUTH", "other", "x"},
			{"HELLO", "3", "AUTH", "other", "x"},
			{"HELLO", "4"},
			{"HELLO", "x"},
		} {
			expect(t, c, string(direct.do(t, args...)), args...)
		}
		expect(t, c, "+PONG\r\n", "PING")
	})
}

// TestHello3RESP3: HELLO 3 switches the connection to RESP3 end to end: maps,
// doubles, sets and nulls come through as RESP3, key names stripped inside
// maps; HELLO 2 switches back.
func TestHello3RESP3(t *testing.T) {
	t.Parallel()
	c := dialRaw(t, startProxy(t, testRedis(t), nil))
	r := c.do(t, "HELLO", "3")
	if v := mustRV(t, r); v.typ != '%' || len(v.elems) != 14 || !bytes.Contains(r, []byte("$5\r\nproto\r\n:3\r\n")) {
		t.Fatalf("HELLO 3: %s", quoteReply(r))
	}
	expect(t, c, ":1\r\n", "HSET", "h", "f", "v")
	expect(t, c, "%1\r\n"+bulk("f")+bulk("v"), "HGETALL", "h")
	expect(t, c, ":1\r\n", "ZADD", "z", "1.5", "m")
	expect(t, c, ",1.5\r\n", "ZSCORE", "z", "m")
	expect(t, c, ":1\r\n", "SADD", "s", "only")
	expect(t, c, "~1\r\n"+bulk("only"), "SMEMBERS", "s")
	expect(t, c, "_\r\n", "GET", "nokey")
	expect(t, c, "_\r\n", "CLIENT", "GETNAME")
	expect(t, c, bulk("1-1"), "XADD", "st", "1-1", "a", "b")
	expect(t, c, "%1\r\n"+bulk("st")+arr(arr(bulk("1-1"), arr(bulk("a"), bulk("b")))), "XREAD", "STREAMS", "st", "0")
	expect(t, c, ":2\r\n", "RPUSH", "l", "x", "y")
	expect(t, c, arr(bulk("l"), bulk("x")), "BLPOP", "l", "1")
	expect(t, c, arr(bulk("l"), arr(bulk("y"))), "LMPOP", "1", "l", "LEFT")
	expect(t, c, "_\r\n", "BLPOP", "l", "0.05")
	// Back to RESP2.
	r = c.do(t, "HELLO", "2")
	if v := mustRV(t, r); v.typ != '*' || !bytes.Contains(r, []byte("$5\r\nproto\r\n:2\r\n")) {
		t.Fatalf("HELLO 2: %s", quoteReply(r))
	}
	expect(t, c, arr(bulk("f"), bulk("v")), "HGETALL", "h")
	expect(t, c, bulk("1.5"), "ZSCORE", "z", "m")
	expect(t, c, "$-1\r\n", "GET", "nokey")
	expect(t, c, "*-1\r\n", "BLPOP", "l", "0.05")
}

// TestQuit: QUIT answers OK and closes; what was pipelined after it never
// runs. Inside MULTI, QUIT is not queued: Redis runs it at once.
func TestQuit(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	tenant := tenantFor(t)
	addr := startProxy(t, up, nil)
	ctx := testCtx(t)
	exists := func(k string) int64 { return up.Client().Exists(ctx, "tenant:"+tenant+":"+k).Val() }
	t.Run("pipelined", func(t *testing.T) {
		c := dialRaw(t, addr)
		var req []byte
		req = encode(req, "SET", "before", "1")
		req = encode(req, "QUIT")
		req = encode(req, "SET", "after", "1")
		c.write(t, req)
		if got := readUntilClosed(t, c, 5*time.Second); string(got) != "+OK\r\n+OK\r\n" {
			t.Errorf("got %s, want two OKs and the connection closed", quoteReply(got))
		}
		if exists("before") != 1 {
			t.Errorf("the command before QUIT did not run")
		}
		if exists("after") != 0 {
			t.Errorf("the command after QUIT ran")
		}
	})
	t.Run("inside MULTI", func(t *testing.T) {
		// Redis 7.0: MULTI, SET (QUEUED), QUIT → +OK and the connection
		// closes; the transaction is dropped.
		c := dialRaw(t, addr)
		var req []byte
		req = encode(req, "MULTI")
		req = encode(req, "SET", "inmulti", "1")
		req = encode(req, "QUIT")
		req = encode(req, "SET", "afterquit", "1")
		c.write(t, req)
		if got := readUntilClosed(t, c, 2*time.Second); string(got) != "+OK\r\n+QUEUED\r\n+OK\r\n" {
			t.Errorf("got %s, want %s and the connection closed (as Redis)", quoteReply(got), quoteReply([]byte("+OK\r\n+QUEUED\r\n+OK\r\n")))
		}
		if n := exists("inmulti") + exists("afterquit"); n != 0 {
			t.Errorf("%d of the commands queued before or sent after QUIT ran", n)
		}
	})
}

// TestReset: RESET ends a transaction, drops the name, the db and RESP3.
// Inside MULTI, RESET is not queued: Redis runs it at once (as it does QUIT,
// MULTI, EXEC, DISCARD and WATCH).
func TestReset(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	tenant := tenantFor(t)
	addr := startProxy(t, up, nil)
	ctx := testCtx(t)
	inDB := func(db int, k string) int64 {
		return directDB(t, up, db).Exists(ctx, "tenant:"+tenant+":"+k).Val()
	}
	t.Run("outside MULTI", func(t *testing.T) {
		c := dialRaw(t, addr)
		expect(t, c, "+OK\r\n", "CLIENT", "SETNAME", "before-reset")
		expect(t, c, "+OK\r\n", "SELECT", "5")
		mustRV(t, c.do(t, "HELLO", "3"))
		expect(t, c, "+OK\r\n", "WATCH", "w")
		expect(t, c, "+RESET\r\n", "RESET")
		expect(t, c, "$-1\r\n", "CLIENT", "GETNAME") // RESP2 null: the protocol is back to 2
		expect(t, c, "+OK\r\n", "SET", "after1", "1")
		if inDB(0, "after1") != 1 {
			t.Errorf("after RESET the session is not back in its default db")
		}
		// The WATCH is gone: another client's write does not abort.
		other := dialRaw(t, addr)
		expect(t, other, "+OK\r\n", "SET", "w", "x")
		expect(t, c, "+OK\r\n", "MULTI")
		expect(t, c, "+QUEUED\r\n", "SET", "w", "y")
		expect(t, c, arr("+OK\r\n"), "EXEC")
	})
	t.Run("inside MULTI", func(t *testing.T) {
		c := dialRaw(t, addr)
		expect(t, c, "+OK\r\n", "CLIENT", "SETNAME", "before-reset")
		expect(t, c, "+OK\r\n", "SELECT", "5")
		expect(t, c, "+OK\r\n", "MULTI")
		expect(t, c, "+QUEUED\r\n", "SET", "queued", "1")
		expect(t, c, "+RESET\r\n", "RESET")
		expect(t, c, "$-1\r\n", "CLIENT", "GETNAME")
		expect(t, c, "-ERR EXEC without MULTI\r\n", "EXEC")
		expect(t, c, "+OK\r\n", "SET", "after2", "1")
		if inDB(0, "after2") != 1 {
			t.Errorf("after RESET the session is not back in its default db")
		}
		if inDB(5, "queued") != 0 {
			t.Errorf("the queued SET ran after RESET")
		}
	})
}

var clientIDRe = regexp.MustCompile(`(?m)^id=(\d+) `)

// TestClientCommands: CLIENT SETNAME/GETNAME/ID/INFO/LIST answer for the
// tenant's own connections only.
func TestClientCommands(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	addr := startProxy(t, up, nil)
	other := startProxy(t, up, func(c *Config) { c.Tenant = "clientcmd-other" })
	c1, c2, c3 := dialRaw(t, addr), dialRaw(t, addr), dialRaw(t, addr)
	o := dialRaw(t, other)
	expect(t, o, "+OK\r\n", "CLIENT", "SETNAME", "other-tenant-conn")
	direct := dialRaw(t, up.Addr())

	expect(t, c1, "$-1\r\n", "CLIENT", "GETNAME")
	expect(t, c1, "+OK\r\n", "CLIENT", "SETNAME", "app-1")
	expect(t, c1, bulk("app-1"), "CLIENT", "GETNAME")
	expect(t, c2, "+OK\r\n", "CLIENT", "SETNAME", "app-2")
	for _, args := range [][]string{{"CLIENT", "SETNAME", "bad name"}, {"CLIENT", "SETNAME", "a\nb"}, {"CLIENT", "SETNAME"}} {
		expect(t, c1, string(direct.do(t, args...)), args...)
	}
	expect(t, c3, "+OK\r\n", "SELECT", "5")

	ids := map[*rawConn]string{}
	for _, c := range []*rawConn{c1, c2, c3} {
		v := mustRV(t, c.do(t, "CLIENT", "ID"))
		if v.typ != ':' {
			t.Fatalf("CLIENT ID: %v", v)
		}
		ids[c] = v.str
	}
	if ids[c1] == ids[c2] || ids[c2] == ids[c3] || ids[c1] == ids[c3] {
		t.Errorf("CLIENT ID not unique: %v", ids)
	}
	info := mustRV(t, c1.do(t, "CLIENT", "INFO"))
	if !strings.HasPrefix(info.str, "id="+ids[c1]+" ") || !strings.Contains(info.str, " name=app-1 ") || !strings.HasSuffix(info.str, "\n") {
		t.Errorf("CLIENT INFO: %q", info.str)
	}

	list := mustRV(t, c1.do(t, "CLIENT", "LIST")).str
	lines := strings.Split(strings.TrimSuffix(list, "\n"), "\n")
	var listed []string
	for _, m := range clientIDRe.FindAllStringSubmatch(list, -1) {
		listed = append(listed, m[1])
	}
	if want := sortedStrs([]string{ids[c1], ids[c2], ids[c3]}); strings.Join(sortedStrs(listed), ",") != strings.Join(want, ",") || len(lines) != 3 {
		t.Errorf("CLIENT LIST shows ids %v (%d lines), want exactly %v:\n%s", listed, len(lines), want, list)
	}
	for _, l := range lines {
		if !strings.Contains(l, " laddr="+addr+" ") || strings.Contains(l, "other-tenant-conn") {
			t.Errorf("CLIENT LIST line of another listener or tenant: %q", l)
		}
	}
	one := mustRV(t, c1.do(t, "CLIENT", "LIST", "ID", ids[c3])).str
	if strings.Count(one, "\n") != 1 || !strings.HasPrefix(one, "id="+ids[c3]+" ") {
		t.Errorf("CLIENT LIST ID %s: %q", ids[c3], one)
	}
	expect(t, c1, bulk(""), "CLIENT", "LIST", "TYPE", "pubsub")
	expect(t, c1, "-ERR Unknown client type 'bogus'\r\n", "CLIENT", "LIST", "TYPE", "bogus")
	t.Run("other connections' name and db", func(t *testing.T) {
		// Like Redis, every line shows that connection's own name and db (job
		// queues such as BullMQ find their workers by CLIENT LIST names).
		for _, want := range []struct {
			c        *rawConn
			name, db string
		}{{c1, "app-1", "0"}, {c2, "app-2", "0"}, {c3, "", "5"}} {
			var line string
			for _, l := range lines {
				if strings.HasPrefix(l, "id="+ids[want.c]+" ") {
					line = l
				}
			}
			if !strings.Contains(line, " name="+want.name+" ") || !strings.Contains(line, " db="+want.db+" ") {
				t.Errorf("CLIENT LIST line of client %s: want name=%q db=%s, got %q", ids[want.c], want.name, want.db, line)
			}
		}
	})
}

// TestCommandEmulation: COMMAND answers over what keyfence allows.
func TestCommandEmulation(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	c := dialRaw(t, startProxy(t, up, nil))
	direct := dialRaw(t, up.Addr())

	n := mustRV(t, c.do(t, "COMMAND", "COUNT"))
	all := mustRV(t, direct.do(t, "COMMAND", "COUNT"))
	kn, _ := strconv.Atoi(n.str)
	an, _ := strconv.Atoi(all.str)
	if n.typ != ':' || kn < 150 || kn >= an {
		t.Errorf("COMMAND COUNT: keyfence %s, Redis %s; want fewer (denied ones hidden) but most", n.str, all.str)
	}
	whole := mustRV(t, c.do(t, "COMMAND"))
	if len(whole.elems) != kn {
		t.Errorf("COMMAND lists %d commands, COMMAND COUNT says %d", len(whole.elems), kn)
	}
	names := mustRV(t, c.do(t, "COMMAND", "LIST")).strs()
	set := map[string]bool{}
	for _, nm := range names {
		set[nm] = true
	}
	for _, nm := range []string{"get", "set", "blpop", "xreadgroup", "keys", "flushall", "fcall", "function"} {
		if !set[nm] {
			t.Errorf("COMMAND LIST lacks %s", nm)
		}
	}
	for _, nm := range []string{"config", "migrate", "move", "swapdb", "monitor", "debug", "shutdown"} {
		if set[nm] {
			t.Errorf("COMMAND LIST shows denied %s", nm)
		}
	}
	for _, args := range [][]string{
		{"COMMAND", "INFO", "get", "lpush"},
		{"COMMAND", "DOCS", "get"},
		{"COMMAND", "GETKEYS", "SORT", "ids", "BY", "w_*", "STORE", "dst"},
		{"COMMAND", "GETKEYS", "PING"},
		{"COMMAND", "GETKEYS", "GET"},
		{"COMMAND", "GETKEYS", "NOSUCH", "x"},
	} {
		expect(t, c, string(direct.do(t, args...)), args...)
	}
	// A denied command does not exist for the tenant: Redis's answer for an
	// unknown one.
	expect(t, c, string(direct.do(t, "COMMAND", "INFO", "nosuchcommand")), "COMMAND", "INFO", "config")
	expect(t, c, string(direct.do(t, "COMMAND", "INFO", "get", "nosuchcommand")), "COMMAND", "INFO", "get", "migrate")
	expect(t, c, string(direct.do(t, "COMMAND", "DOCS", "nosuchcommand")), "COMMAND", "DOCS", "config")
	// GETKEYS answers the keys in the client's own names.
	expect(t, c, arr(bulk("a")), "COMMAND", "GETKEYS", "SET", "a", "b")
	expect(t, c, arr(bulk("a"), bulk("b")), "COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2")
	expect(t, c, arr(bulk("d"), bulk("a"), bulk("b")), "COMMAND", "GETKEYS", "ZUNIONSTORE", "d", "2", "a", "b")
	expect(t, c, arr(bulk("x")), "COMMAND", "GETKEYS", "XREAD", "STREAMS", "x", "0")
	if r := string(c.do(t, "COMMAND", "GETKEYS", "CONFIG", "GET", "x")); !strings.HasPrefix(r, "-ERR command 'config|get' is not allowed through keyfence") {
		t.Errorf("COMMAND GETKEYS CONFIG GET: %s", quoteReply([]byte(r)))
	}
}

// TestInfoTenantView: INFO shows the tenant's own keyspace, connections,
// commands and errors, never the server's figures about other tenants, and
// hides the operators' paths; the server's own facts (version, memory) are
// there. TestInfoLikeRedis compares the rest with Redis.
func TestInfoTenantView(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	ctx := testCtx(t)
	admin := directDB(t, up, 0)
	for i := 0; i < 5; i++ {
		k := fmt.Sprintf("tenant:infoview-other:%d", i)
		admin.Set(ctx, k, "x", 0)
		t.Cleanup(func() { admin.Del(context.Background(), k) })
	}
	// Other clients of the server: their commands and errors are theirs.
	busy := dialRaw(t, up.Addr())
	for i := 0; i < 20; i++ {
		busy.do(t, "GET", "tenant:infoview-other:1")
		busy.do(t, "HGET", "tenant:infoview-other:1", "f")
	}
	addr := startProxy(t, up, nil)
	c := dialRaw(t, addr)
	expect(t, c, "+OK\r\n", "SET", "a", "1")
	expect(t, c, "+OK\r\n", "SET", "b", "2")
	expect(t, c, "+OK\r\n", "SET", "c", "3", "EX", "1000")

	ks := mustRV(t, c.do(t, "INFO", "keyspace")).str
	if !regexp.MustCompile(`^# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=\d+\r\n$`).MatchString(ks) {
		t.Errorf("INFO keyspace: %q", ks)
	}
	for _, section := range [][]string{nil, {"all"}, {"everything"}, {"default"}, {"server"}, {"commandstats"}, {"stats"}, {"clients"}, {"memory"}, {"errorstats"}} {
		info := mustRV(t, c.do(t, append([]string{"INFO"}, section...)...)).str
		if dbs := regexp.MustCompile(`(?m)^db\d+:.*$`).FindAllString(info, -1); len(dbs) > 1 || (len(dbs) == 1 && !strings.HasPrefix(dbs[0], "db0:keys=3,")) {
			t.Errorf("INFO %v shows keyspace lines %q; want only the tenant's db0:keys=3", section, dbs)
		}
		for _, bad := range []string{"cmdstat_get:", "cmdstat_hget:", "errorstat_WRONGTYPE"} {
			if strings.Contains(info, bad) {
				t.Errorf("INFO %v shows %q, which only another client ran into", section, bad)
			}
		}
	}
	all := mustRV(t, c.do(t, "INFO", "everything")).str
	for field, want := range map[string]string{
		"redis_version":              "7.0.15",
		"connected_clients":          "1",
		"blocked_clients":            "0",
		"total_connections_received": "1",
		"keyspace_hits":              "0",
		"connected_slaves":           "0",
		"executable":                 "",
		"config_file":                "",
		"cmdstat_set":                "calls=3,usec=0,usec_per_call=0.00,rejected_calls=0,failed_calls=0",
		"errorstat_WRONGTYPE":        "", // absent
	} {
		got, ok := infoField(all, field)
		if got != want || (!ok && want != "") {
			t.Errorf("INFO %s = %q (present %v), want %q", field, got, ok, want)
		}
	}
	// Three SETs, three INFO keyspace… and the INFOs before this one.
	if got, _ := infoField(all, "total_commands_processed"); got != "14" {
		t.Errorf("INFO total_commands_processed = %q, want 14 (the tenant's own commands)", got)
	}
	for _, field := range []string{"used_memory_human", "used_memory_peak_human", "used_cpu_user", "process_id", "run_id"} {
		if v, ok := infoField(all, field); !ok || v == "" {
			t.Errorf("INFO lacks the server's own %s", field)
		}
	}
}

// TestMultiExec: replies inside EXEC are stripped like outside; a queueing
// error aborts EXEC; WATCH aborts when another client changes the key.
func TestMultiExec(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	addr := startProxy(t, up, nil)
	t.Run("stripped replies", func(t *testing.T) {
		// A database of its own: SCAN's COUNT is capped upstream, and its
		// one step must cover the whole database to answer cursor 0.
		c := dialRaw(t, startProxy(t, up, func(c *Config) { c.Upstream.DB = multiExecDB }))
		expect(t, c, ":3\r\n", "RPUSH", "l", "x", "y", "z")
		expect(t, c, "+OK\r\n", "MULTI")
		for _, args := range [][]string{
			{"BLPOP", "l", "0"}, {"LMPOP", "1", "l", "LEFT"}, {"BRPOP", "nolist", "l", "0"}, {"SCAN", "0", "COUNT", "10000000"},
			{"XADD", "s", "1-1", "f", "v"}, {"XREAD", "STREAMS", "s", "0"}, {"ZADD", "z", "1", "m"}, {"ZMPOP", "1", "z", "MIN"},
		} {
			expect(t, c, "+QUEUED\r\n", args...)
		}
		expect(t, c, arr(
			arr(bulk("l"), bulk("x")),
			arr(bulk("l"), arr(bulk("y"))),
			arr(bulk("l"), bulk("z")),
			arr(bulk("0"), arr()),
			bulk("1-1"),
			arr(arr(bulk("s"), arr(arr(bulk("1-1"), arr(bulk("f"), bulk("v")))))),
			":1\r\n",
			arr(bulk("z"), arr(arr(bulk("m"), bulk("1")))),
		), "EXEC")
	})
	t.Run("KEYS inside MULTI answers in place", func(t *testing.T) {
		// KEYS runs at EXEC as the same bounded SCAN steps as outside a
		// transaction (never one call over every tenant's keys), after the
		// commands queued before it, in its place in EXEC's reply.
		c := dialRaw(t, startProxy(t, up, func(c *Config) { c.Tenant = "multikeys" }))
		expect(t, c, "+OK\r\n", "MULTI")
		expect(t, c, "+QUEUED\r\n", "SET", "mk", "1")
		expect(t, c, "+QUEUED\r\n", "KEYS", "*")
		expect(t, c, "+QUEUED\r\n", "DEL", "mk")
		expect(t, c, arr("+OK\r\n", arr(bulk("mk")), ":1\r\n"), "EXEC")
		expect(t, c, "$-1\r\n", "GET", "mk")
	})
	t.Run("queueing error aborts like Redis", func(t *testing.T) {
		c := dialRaw(t, addr)
		direct := dialRaw(t, up.Addr())
		expect(t, direct, "+OK\r\n", "SELECT", "12")
		for _, args := range [][]string{
			{"MULTI"}, {"SET", "qa", "1"}, {"NOSUCHCMD", "x"}, {"EXEC"}, {"GET", "qa"},
			{"MULTI"}, {"SET", "qa", "2"}, {"GET"}, {"EXEC"}, {"GET", "qa"},
			{"MULTI"}, {"SET", "qa", "3"}, {"INCR", "qa"}, {"EXEC"}, {"GET", "qa"},
			{"MULTI"}, {"SET", "qa", "4"}, {"DISCARD"}, {"GET", "qa"},
		} {
			expect(t, c, string(direct.do(t, args...)), args...)
		}
		expect(t, direct, ":1\r\n", "DEL", "qa")
	})
	t.Run("WATCH aborts on another client's write", func(t *testing.T) {
		c, other := dialRaw(t, addr), dialRaw(t, addr)
		expect(t, c, "+OK\r\n", "SET", "wk", "start")
		expect(t, c, "+OK\r\n", "WATCH", "wk")
		expect(t, c, bulk("start"), "GET", "wk")
		expect(t, other, "+OK\r\n", "SET", "wk", "other")
		expect(t, c, "+OK\r\n", "MULTI")
		expect(t, c, "+QUEUED\r\n", "SET", "wk", "mine")
		expect(t, c, "*-1\r\n", "EXEC")
		expect(t, c, bulk("other"), "GET", "wk")
		// Without interference the same sequence commits.
		expect(t, c, "+OK\r\n", "WATCH", "wk")
		expect(t, c, "+OK\r\n", "MULTI")
		expect(t, c, "+QUEUED\r\n", "SET", "wk", "mine")
		expect(t, c, arr("+OK\r\n"), "EXEC")
		expect(t, other, bulk("mine"), "GET", "wk")
		// UNWATCH forgets the watch.
		expect(t, c, "+OK\r\n", "WATCH", "wk")
		expect(t, other, "+OK\r\n", "SET", "wk", "again")
		expect(t, c, "+OK\r\n", "UNWATCH")
		expect(t, c, "+OK\r\n", "MULTI")
		expect(t, c, "+QUEUED\r\n", "SET", "wk", "final")
		expect(t, c, arr("+OK\r\n"), "EXEC")
		expect(t, other, bulk("final"), "GET", "wk")
	})
}

// TestBlockedClientDoesNotDelayOthers: one client in BLPOP … 0 does not slow
// down ten others sharing the same keyfence.
func TestBlockedClientDoesNotDelayOthers(t *testing.T) {
	t.Parallel()
	addr := startProxy(t, testRedis(t), nil)
	blocked := dialRaw(t, addr)
	blocked.write(t, encode(nil, "BLPOP", "wakeup", "0"))
	time.Sleep(50 * time.Millisecond) // let it block upstream

	start := time.Now()
	eachClient(t, addr, 10, func(i int, c *rawConn) error {
		for j := 0; j < 20; j++ {
			r, err := c.doE("GET", "k"+strconv.Itoa(i))
			if err != nil || string(r) != "$-1\r\n" {
				return fmt.Errorf("client %d: %s %v", i, quoteReply(r), err)
			}
		}
		return nil
	})
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("200 GETs of 10 clients took %v while one client was blocked", d)
	}
	pusher := dialRaw(t, addr)
	expect(t, pusher, ":1\r\n", "RPUSH", "wakeup", "now")
	if got := blocked.read(t); string(got) != arr(bulk("wakeup"), bulk("now")) {
		t.Errorf("BLPOP woke with %s", quoteReply(got))
	}
	expect(t, blocked, "+PONG\r\n", "PING")
}

// TestBlockedClientDisconnectReleasesUpstream: a client that goes away while
// in BLPOP … 0 does not leave a connection blocked upstream.
func TestBlockedClientDisconnectReleasesUpstream(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	const db = 7
	addr := startProxy(t, up, func(c *Config) { c.Upstream.DB = db })
	admin := directDB(t, up, 0)
	ctx := testCtx(t)
	blockedUpstream := func() []string {
		var out []string
		for _, l := range strings.Split(admin.ClientList(ctx).Val(), "\n") {
			if strings.Contains(l, " db=7 ") && strings.Contains(l, " cmd=blpop ") && strings.Contains(l, " flags=b ") {
				out = append(out, l)
			}
		}
		return out
	}
	c := dialRaw(t, addr)
	c.write(t, encode(nil, "BLPOP", "never", "0"))
	if !waitFor(3*time.Second, func() bool { return len(blockedUpstream()) == 1 }) {
		t.Fatalf("no blocked BLPOP upstream: %q", blockedUpstream())
	}
	c.nc.Close()
	if !waitFor(2*time.Second, func() bool { return len(blockedUpstream()) == 0 }) {
		t.Errorf("upstream BLPOP still blocked 2 s after the client left: %q", blockedUpstream())
	}
	// The keyfence is fine and can block again.
	c2 := dialRaw(t, addr)
	expect(t, c2, "*-1\r\n", "BLPOP", "never", "0.05")
}

// TestPubSub: subscriber mode works through keyfence inside the tenant's
// namespace: confirmations and messages carry the client's own channel
// names, another tenant's messages never arrive, and the Redis rules of
// subscriber mode hold (RESP2: only (P|S)SUBSCRIBE, PING, QUIT, RESET).
func TestPubSub(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	tenant := tenantFor(t)
	addr := startProxy(t, up, nil)
	otherAddr := startProxy(t, up, func(c *Config) { c.Tenant = "pubsub-other" })
	push := func(resp3 bool, elems ...string) string {
		if resp3 {
			return ">" + strconv.Itoa(len(elems)) + "\r\n" + strings.Join(elems, "")
		}
		return arr(elems...)
	}
	for _, resp3 := range []bool{false, true} {
		name := "RESP2"
		if resp3 {
			name = "RESP3"
		}
		t.Run(name, func(t *testing.T) {
			sub, pub, other := dialRaw(t, addr), dialRaw(t, addr), dialRaw(t, otherAddr)
			if resp3 {
				mustRV(t, sub.do(t, "HELLO", "3"))
			}
			sub.write(t, encode(nil, "SUBSCRIBE", "news", "alerts"))
			if got, want := string(sub.read(t))+string(sub.read(t)), push(resp3, bulk("subscribe"), bulk("news"), ":1\r\n")+push(resp3, bulk("subscribe"), bulk("alerts"), ":2\r\n"); got != want {
				t.Fatalf("SUBSCRIBE: got %s, want %s", quoteReply([]byte(got)), quoteReply([]byte(want)))
			}
			expect(t, sub, push(resp3, bulk("psubscribe"), bulk("n*"), ":3\r\n"), "PSUBSCRIBE", "n*")
			expect(t, pub, ":2\r\n", "PUBLISH", "news", "hello")
			msgs := string(sub.read(t)) + string(sub.read(t))
			if want := push(resp3, bulk("message"), bulk("news"), bulk("hello")) + push(resp3, bulk("pmessage"), bulk("n*"), bulk("news"), bulk("hello")); msgs != want {
				t.Errorf("messages: got %s, want %s", quoteReply([]byte(msgs)), quoteReply([]byte(want)))
			}
			// PUBSUB answers in the tenant's names and counts.
			expect(t, pub, arr(bulk("news"), ":1\r\n", bulk("nothing"), ":0\r\n"), "PUBSUB", "NUMSUB", "news", "nothing")
			if got := sortedStrs(mustRV(t, pub.do(t, "PUBSUB", "CHANNELS")).strs()); strings.Join(got, ",") != "alerts,news" {
				t.Errorf("PUBSUB CHANNELS: %q", got)
			}
			// Another tenant's channel of the same name is another channel.
			expect(t, other, ":0\r\n", "PUBLISH", "news", "from the other tenant")
			expect(t, other, "*0\r\n", "PUBSUB", "CHANNELS")
			// Upstream, the message of this tenant's channel arrives. Redis
			// counts two receivers: the channel, and the one literal pattern
			// keyfence holds upstream for all of the client's patterns.
			if n := up.Client().Publish(testCtx(t), "tenant:"+tenant+":alerts", "via upstream").Val(); n != 2 {
				t.Errorf("upstream PUBLISH reached %d subscribers", n)
			}
			if got, want := string(sub.read(t)), push(resp3, bulk("message"), bulk("alerts"), bulk("via upstream")); got != want {
				t.Errorf("got %s, want %s (the other tenant's message must not arrive)", quoteReply([]byte(got)), quoteReply([]byte(want)))
			}
			if resp3 {
				// RESP3 allows ordinary commands in subscriber mode.
				expect(t, sub, "+OK\r\n", "SET", "k", "v")
				expect(t, sub, bulk("v"), "GET", "k")
				expect(t, sub, "+PONG\r\n", "PING")
			} else {
				expect(t, sub, "-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n", "GET", "k")
				expect(t, sub, arr(bulk("pong"), bulk("")), "PING")
			}
			expect(t, sub, push(resp3, bulk("punsubscribe"), bulk("n*"), ":2\r\n"), "PUNSUBSCRIBE", "n*")
			// UNSUBSCRIBE without names: one confirmation per channel, in
			// Redis's dict order, counting down.
			sub.write(t, encode(nil, "UNSUBSCRIBE"))
			var chans []string
			for i, left := range []string{"1", "0"} {
				v := mustRV(t, sub.read(t))
				if len(v.elems) != 3 || v.elems[0].str != "unsubscribe" || v.elems[2].str != left || (resp3 != (v.typ == '>')) {
					t.Errorf("UNSUBSCRIBE confirmation %d: %+v", i, v)
					continue
				}
				chans = append(chans, v.elems[1].str)
			}
			if got := strings.Join(sortedStrs(chans), ","); got != "alerts,news" {
				t.Errorf("UNSUBSCRIBE confirmed %q, want alerts and news", chans)
			}
			// Out of subscriber mode: an ordinary connection again.
			expect(t, sub, "+OK\r\n", "SET", "k", "w")
			expect(t, sub, ":0\r\n", "PUBLISH", "news", "nobody listens")
		})
	}
}

// TestGracefulShutdownCompletesInFlightPipeline: Shutdown while a client's
// pipeline is being answered lets every command the client already sent
// complete, and accepts no new clients.
func TestGracefulShutdownCompletesInFlightPipeline(t *testing.T) {
	t.Parallel()
	srv, addr := startProxyServer(t, testRedis(t), nil)
	c := dialRaw(t, addr)
	expect(t, c, "+PONG\r\n", "PING")
	const n = 3000
	var req []byte
	for i := 0; i < n; i++ {
		req = encode(req, "SET", "k"+strconv.Itoa(i%100), strconv.Itoa(i))
	}
	writeErr := make(chan error, 1)
	go func() { writeErr <- c.writeE(req) }()
	if got := c.read(t); string(got) != "+OK\r\n" {
		t.Fatalf("first reply: %s", quoteReply(got))
	}
	shutdownErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdownErr <- srv.Shutdown(ctx)
	}()
	got := 1
	for ; got < n; got++ {
		r, err := c.readE()
		if err != nil {
			break
		}
		if string(r) != "+OK\r\n" {
			t.Fatalf("reply %d: %s", got, quoteReply(r))
		}
	}
	if got != n {
		t.Errorf("Shutdown cut the client's pipeline: %d of %d replies arrived", got, n)
	}
	if err := <-writeErr; err != nil {
		t.Errorf("writing the pipeline: %v", err)
	}
	if err := <-shutdownErr; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if nc, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		nc.Close()
		t.Errorf("keyfence accepts clients after Shutdown")
	}
}

// TestBlockingCommandsWakeUp: every kind of blocking command, left waiting
// with timeout 0, wakes up when another client provides data, with the key
// names of its reply stripped; commands pipelined behind it keep their order.
func TestBlockingCommandsWakeUp(t *testing.T) {
	t.Parallel()
	addr := startProxy(t, testRedis(t), nil)
	pusher := dialRaw(t, addr)
	cases := []struct {
		name   string
		block  []string
		feed   []string
		want   string
		behind [][]string // pipelined after the blocking command
		after  []string   // their replies
	}{
		{"BLPOP", []string{"BLPOP", "nolist", "bl", "0"}, []string{"RPUSH", "bl", "v"},
			arr(bulk("bl"), bulk("v")), [][]string{{"SET", "x1", "1"}, {"GET", "x1"}}, []string{"+OK\r\n", bulk("1")}},
		{"BRPOP", []string{"BRPOP", "br", "0"}, []string{"RPUSH", "br", "a", "b"}, arr(bulk("br"), bulk("b")), nil, nil},
		{"BLMOVE", []string{"BLMOVE", "bm", "bmdst", "LEFT", "RIGHT", "0"}, []string{"RPUSH", "bm", "m"}, bulk("m"),
			[][]string{{"LRANGE", "bmdst", "0", "-1"}}, []string{arr(bulk("m"))}},
		{"BLMPOP", []string{"BLMPOP", "0", "2", "nolist", "bmp", "LEFT"}, []string{"RPUSH", "bmp", "p"}, arr(bulk("bmp"), arr(bulk("p"))), nil, nil},
		{"BZPOPMIN", []string{"BZPOPMIN", "bz", "0"}, []string{"ZADD", "bz", "1", "m"}, arr(bulk("bz"), bulk("m"), bulk("1")), nil, nil},
		{"BZMPOP", []string{"BZMPOP", "0", "1", "bzm", "MAX"}, []string{"ZADD", "bzm", "2", "n"}, arr(bulk("bzm"), arr(arr(bulk("n"), bulk("2")))), nil, nil},
		{"XREAD BLOCK", []string{"XREAD", "BLOCK", "0", "STREAMS", "xs", "$"}, []string{"XADD", "xs", "5-1", "f", "v"},
			arr(arr(bulk("xs"), arr(arr(bulk("5-1"), arr(bulk("f"), bulk("v")))))), [][]string{{"XLEN", "xs"}}, []string{":1\r\n"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, addr)
			req := encode(nil, tc.block...)
			for _, b := range tc.behind {
				req = encode(req, b...)
			}
			c.write(t, req)
			if r, err := c.readTimeout(150 * time.Millisecond); err == nil {
				t.Fatalf("%q answered before any data: %s", tc.block, quoteReply(r))
			}
			pusher.do(t, tc.feed...)
			if got := c.read(t); string(got) != tc.want {
				t.Errorf("%q woke with %s, want %s", tc.block, quoteReply(got), quoteReply([]byte(tc.want)))
			}
			for i, w := range tc.after {
				if got := c.read(t); string(got) != w {
					t.Errorf("pipelined %q: got %s, want %s", tc.behind[i], quoteReply(got), quoteReply([]byte(w)))
				}
			}
			expect(t, c, "+PONG\r\n", "PING")
		})
	}
}

// TestLargeValues: values of several megabytes, alone and in a pipeline,
// go through whole.
func TestLargeValues(t *testing.T) {
	t.Parallel()
	c := dialRaw(t, startProxy(t, testRedis(t), nil))
	big := strings.Repeat("0123456789abcdef", 1<<18) // 4 MiB
	expect(t, c, "+OK\r\n", "SET", "big", big)
	expect(t, c, bulk(big), "GET", "big")
	expect(t, c, ":"+strconv.Itoa(len(big))+"\r\n", "STRLEN", "big")
	var req []byte
	for i := 0; i < 3; i++ {
		req = encode(req, "SET", "big"+strconv.Itoa(i), big[:1<<20+i])
		req = encode(req, "GET", "big"+strconv.Itoa(i))
	}
	c.write(t, req)
	for i := 0; i < 3; i++ {
		if got := c.read(t); string(got) != "+OK\r\n" {
			t.Fatalf("SET big%d: %s", i, quoteReply(got))
		}
		if got := c.read(t); string(got) != bulk(big[:1<<20+i]) {
			t.Fatalf("GET big%d: %d bytes, wrong", i, len(got))
		}
	}
	expect(t, c, arr(bulk(big[:1<<20]), bulk(big[:1<<20+1])), "MGET", "big0", "big1")
}

// TestInlineCommands: telnet-style inline commands behave as in Redis.
func TestInlineCommands(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	addr := startProxy(t, up, nil)
	direct := dialRaw(t, up.Addr())
	expect(t, direct, "+OK\r\n", "SELECT", "12")
	c := dialRaw(t, addr)
	for _, line := range []string{
		"PING\r\n",
		"PING\n",
		"\r\n",
		"   \r\nPING\r\n",
		"SET inl \"two words\"\r\n",
		"GET inl\r\n",
		"SET inl2 'single \\' quoted'\r\n",
		"GET inl2\r\n",
		"SET inl3 \"esc\\x41\\n\\t\"\r\n",
		"GET inl3\r\n",
		"ECHO \"\"\r\n",
		"DEL inl inl2 inl3\r\n",
		"NOSUCH a 'b c'\r\n",
	} {
		direct.write(t, []byte(line))
		c.write(t, []byte(line))
		if strings.TrimSpace(line) == "" {
			continue // Redis ignores an empty line: no reply
		}
		want, got := direct.read(t), c.read(t)
		if !bytes.Equal(got, want) {
			t.Errorf("%q: got %s, want %s (Redis)", line, quoteReply(got), quoteReply(want))
		}
	}
	expect(t, c, "+PONG\r\n", "PING")
}

// TestDrainAnswersBlockedCommands: a SIGTERM (Serve's ctx cancelled) and
// then Shutdown while one client waits in BLPOP q 2 and another in BLPOP w 0:
// each gets its own reply — nil after its 2 s, and the element pushed during
// the drain — not an upstream error, and Shutdown returns once both are
// answered.
func TestDrainAnswersBlockedCommands(t *testing.T) {
	t.Parallel()
	up := testRedis(t)
	tenant := tenantFor(t)
	srv, err := New(Config{Listen: "127.0.0.1:0", Tenant: tenant, Upstream: upstream.Config{Addr: up.Addr()}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	addr := srv.Addr().String()

	timed, forever := dialRaw(t, addr), dialRaw(t, addr)
	timed.write(t, encode(nil, "BLPOP", "q", "2"))
	forever.write(t, encode(nil, "BLPOP", "w", "0"))
	if !waitFor(10*time.Second, func() bool {
		list, _ := up.Client().ClientList(t.Context()).Result()
		return strings.Count(list, "cmd=blpop") == 2
	}) {
		t.Fatal("the two BLPOPs did not block upstream")
	}
	start := time.Now()
	cancel() // the signal: no more clients
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	drained := make(chan error, 1)
	go func() {
		sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer scancel()
		drained <- srv.Shutdown(sctx)
	}()
	if err := up.Client().RPush(t.Context(), "tenant:"+tenant+":w", "job").Err(); err != nil {
		t.Fatal(err)
	}
	if got := string(forever.read(t)); got != "*2\r\n$1\r\nw\r\n$3\r\njob\r\n" {
		t.Errorf("BLPOP w 0 during the drain: %q, want the element pushed", got)
	}
	if got := string(timed.read(t)); got != "*-1\r\n" {
		t.Errorf("BLPOP q 2 during the drain: %q, want its own timeout's nil", got)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("BLPOP q 2 answered after %v: not its own timeout", waited)
	}
	if err := <-drained; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}
