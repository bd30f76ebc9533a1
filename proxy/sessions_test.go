package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/proxy"
	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/telemetry"
	"github.com/keyfence/keyfence/upstream"
)

// startKeyfence runs an in-process keyfence for tenant in front of srv.
func startKeyfence(t *testing.T, srv *redistest.Server, tenant string, mutate func(*proxy.Config)) (string, *proxy.Server) {
	t.Helper()
	cfg := proxy.Config{
		Listen:   "127.0.0.1:0",
		Tenant:   tenant,
		Upstream: upstream.Config{Addr: srv.Addr()},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	p, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Serve(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = p.Shutdown(sctx)
	})
	return p.Addr().String(), p
}

// rawClient speaks RESP over one connection and returns raw replies.
type rawClient struct {
	t   *testing.T
	nc  net.Conn
	buf []byte
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawClient{t: t, nc: nc}
}

func (c *rawClient) send(args ...string) {
	c.t.Helper()
	var req []byte
	req = resp.AppendArrayHeader(req, len(args))
	for _, a := range args {
		req = resp.AppendBulk(req, []byte(a))
	}
	if _, err := c.nc.Write(req); err != nil {
		c.t.Fatal(err)
	}
}

// reply reads one whole reply within d.
func (c *rawClient) reply(d time.Duration) string {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(d))
	defer c.nc.SetReadDeadline(time.Time{})
	for {
		if n, err := resp.ReplyLen(c.buf); err != nil {
			c.t.Fatalf("bad reply %q: %v", c.buf, err)
		} else if n > 0 {
			r := string(c.buf[:n])
			c.buf = c.buf[n:]
			return r
		}
		var chunk [4096]byte
		n, err := c.nc.Read(chunk[:])
		if err != nil {
			c.t.Fatalf("reading reply: %v (have %q)", err, c.buf)
		}
		c.buf = append(c.buf, chunk[:n]...)
	}
}

func (c *rawClient) do(args ...string) string {
	c.t.Helper()
	c.send(args...)
	return c.reply(5 * time.Second)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func blockedClients(t *testing.T, srv *redistest.Server) int {
	t.Helper()
	return int(srv.InfoInt(t, "clients", "blocked_clients"))
}

// A thousand clients blocked forever, then dropped: every upstream
// connection they pinned must go at once, nothing left blocked in Redis.
func TestThousandBlockedClientsDropped(t *testing.T) {
	srv := redistest.StartT(t, redistest.Options{})
	addr, kf := startKeyfence(t, srv, "blk", func(c *proxy.Config) { c.MaxPinned = 1100 })

	const n = 1000
	clients := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		clients = append(clients, nc)
		q := fmt.Sprintf("queue%d", i)
		fmt.Fprintf(nc, "*3\r\n$5\r\nBLPOP\r\n$%d\r\n%s\r\n$1\r\n0\r\n", len(q), q)
	}
	waitFor(t, "1000 clients blocked upstream", 20*time.Second, func() bool { return blockedClients(t, srv) == n })
	if st := kf.Stats(); st.PinnedConns != n {
		t.Fatalf("pinned connections while blocked: %d, want %d", st.PinnedConns, n)
	}
	// A blocked client never delays the others.
	other := dialRaw(t, addr)
	if got := other.do("SET", "k", "v"); got != "+OK\r\n" {
		t.Fatalf("SET while 1000 are blocked: %q", got)
	}
	for _, nc := range clients {
		nc.Close()
	}
	waitFor(t, "no client blocked upstream", 10*time.Second, func() bool { return blockedClients(t, srv) == 0 })
	waitFor(t, "pinned connections released", 10*time.Second, func() bool { return kf.Stats().PinnedConns == 0 })
	t.Logf("blocked-client leak test: %d clients blocked and dropped; blocked upstream after: %d; pinned after: %d; commands on pinned connections: %d",
		n, blockedClients(t, srv), kf.Stats().PinnedConns, kf.Stats().PinnedCommands)
}

// A subscriber that stops reading is cut off and the proxy does not buffer
// its messages: memory stays bounded while 256 MiB are published to it.
func TestSlowSubscriberIsDisconnectedWithBoundedMemory(t *testing.T) {
	srv := redistest.StartT(t, redistest.Options{})
	addr, kf := startKeyfence(t, srv, "slow", nil)

	sub := dialRaw(t, addr)
	sub.send("SUBSCRIBE", "firehose")
	if got := sub.reply(5 * time.Second); !strings.Contains(got, "firehose") {
		t.Fatalf("subscribe confirmation: %q", got)
	}
	// From here on the subscriber reads nothing.
	payload := strings.Repeat("x", 64<<10)
	pub := srv.Client()
	ctx := context.Background()
	var maxHeap uint64
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	baseHeap := ms.HeapInuse
	published := 0
	for i := 0; i < 4096; i++ {
		n, err := pub.Publish(ctx, "tenant:slow:firehose", payload).Result()
		if err != nil {
			t.Fatal(err)
		}
		published++
		if i%64 == 0 {
			runtime.ReadMemStats(&ms)
			maxHeap = max(maxHeap, ms.HeapInuse-min(ms.HeapInuse, baseHeap))
		}
		if n == 0 {
			break // Redis dropped the subscriber's upstream connection
		}
	}
	// The proxy closes the client once upstream cut the subscription off.
	_ = sub.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	drained, err := io.Copy(io.Discard, sub.nc)
	if err != nil {
		t.Fatalf("subscriber connection not closed by keyfence: %v after %d bytes", err, drained)
	}
	waitFor(t, "subscriber's pinned connection released", 10*time.Second, func() bool { return kf.Stats().PinnedConns == 0 })
	t.Logf("slow subscriber: %d messages of 64 KiB published (the last reached no subscriber), %d bytes reached the client before the cut, heap growth at most %d MiB",
		published, drained, maxHeap>>20)
	if maxHeap > 48<<20 {
		t.Fatalf("heap grew to %d MiB while a subscriber stalled", maxHeap>>20)
	}
	if published == 4096 {
		t.Fatal("the stalled subscriber was never cut off")
	}
}

// Pub/sub through keyfence: channels and patterns are the tenant's, messages
// and confirmations are stripped, keyspace notifications show the tenant's
// own keys only, and RESP3 subscribers get push frames.
func TestPubSubScopedAndStripped(t *testing.T) {
	srv := redistest.StartT(t, redistest.Options{Args: []string{"--notify-keyspace-events", "KEA"}})
	// Each keyfence logs in as its tenant's ACL user: any pattern or channel
	// that left the tenant's namespace upstream would fail with NOPERM.
	for _, id := range []string{"a", "b"} {
		if err := srv.AddTenantUser(context.Background(), "kf-"+id, "pw", id); err != nil {
			t.Fatal(err)
		}
	}
	addrA, _ := startKeyfence(t, srv, "a", func(c *proxy.Config) { c.Upstream.Username, c.Upstream.Password = "kf-a", "pw" })
	addrB, _ := startKeyfence(t, srv, "b", func(c *proxy.Config) { c.Upstream.Username, c.Upstream.Password = "kf-b", "pw" })

	subA := dialRaw(t, addrA)
	subA.send("SUBSCRIBE", "news", "__keyspace@0__:k")
	subA.reply(5 * time.Second)
	subA.reply(5 * time.Second)
	psubA := dialRaw(t, addrA)
	psubA.send("PSUBSCRIBE", "n*", "__keyevent@0__:*", "__keyspace@*__:k*")
	for i, w := range []string{
		"*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:1\r\n",
		"*3\r\n$10\r\npsubscribe\r\n$16\r\n__keyevent@0__:*\r\n:2\r\n",
		"*3\r\n$10\r\npsubscribe\r\n$17\r\n__keyspace@*__:k*\r\n:3\r\n",
	} {
		if got := psubA.reply(5 * time.Second); got != w {
			t.Fatalf("PSUBSCRIBE confirmation %d: %q, want %q", i, got, w)
		}
	}
	subB3 := dialRaw(t, addrB)
	if got := subB3.do("HELLO", "3"); !strings.HasPrefix(got, "%7") {
		t.Fatalf("HELLO 3: %q", got)
	}
	subB3.send("SUBSCRIBE", "news")
	if got := subB3.reply(5 * time.Second); got != ">3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n" {
		t.Fatalf("RESP3 confirmation: %q", got)
	}

	a := dialRaw(t, addrA)
	b := dialRaw(t, addrB)
	if got := a.do("PUBLISH", "news", "for-a"); got != ":2\r\n" {
		t.Fatalf("PUBLISH to a's news: %q (want 2 receivers: a's SUBSCRIBE and PSUBSCRIBE)", got)
	}
	if got := b.do("PUBLISH", "news", "for-b"); got != ":1\r\n" {
		t.Fatalf("PUBLISH to b's news: %q", got)
	}
	if got := b.do("SET", "k", "1"); got != "+OK\r\n" { // b's key k: a must hear nothing
		t.Fatal(got)
	}
	if got := a.do("SET", "k", "2"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	want := []string{
		"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nfor-a\r\n",
		"*3\r\n$7\r\nmessage\r\n$16\r\n__keyspace@0__:k\r\n$3\r\nset\r\n",
	}
	for _, w := range want {
		if got := subA.reply(5 * time.Second); got != w {
			t.Fatalf("a's subscriber got %q, want %q", got, w)
		}
	}
	wantP := []string{
		"*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$5\r\nfor-a\r\n",
		"*4\r\n$8\r\npmessage\r\n$17\r\n__keyspace@*__:k*\r\n$16\r\n__keyspace@0__:k\r\n$3\r\nset\r\n",
		"*4\r\n$8\r\npmessage\r\n$16\r\n__keyevent@0__:*\r\n$18\r\n__keyevent@0__:set\r\n$1\r\nk\r\n",
	}
	got := map[string]bool{}
	for range wantP {
		got[psubA.reply(5*time.Second)] = true
	}
	for _, w := range wantP { // keyspace and keyevent arrive in Redis's order
		if !got[w] {
			t.Fatalf("a's pattern subscriber: %q missing from %v", w, got)
		}
	}
	if got := a.do("PUBSUB", "NUMPAT"); got != ":3\r\n" {
		t.Fatalf("PUBSUB NUMPAT: %q", got)
	}
	if got := subB3.reply(5 * time.Second); got != ">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nfor-b\r\n" {
		t.Fatalf("b's RESP3 subscriber got %q", got)
	}
	// Nothing else is due: b's SET produced no message for a. PING proves
	// the order: its pong comes right after what was due.
	subA.send("PING")
	if got := subA.reply(5 * time.Second); got != "*2\r\n$4\r\npong\r\n$0\r\n\r\n" {
		t.Fatalf("a's subscriber saw another tenant's notification or a late message: %q", got)
	}
	psubA.send("PING")
	if got := psubA.reply(5 * time.Second); got != "*2\r\n$4\r\npong\r\n$0\r\n\r\n" {
		t.Fatalf("a's pattern subscriber saw another tenant's notification: %q", got)
	}
	// RESP2 subscriber mode refuses ordinary commands, as Redis does.
	if got := subA.do("GET", "k"); !strings.HasPrefix(got, "-ERR Can't execute 'get'") {
		t.Fatalf("GET in subscriber mode: %q", got)
	}
	// PUBSUB answers for the tenant, stripped.
	if got := a.do("PUBSUB", "NUMSUB", "news"); got != "*2\r\n$4\r\nnews\r\n:1\r\n" {
		t.Fatalf("PUBSUB NUMSUB: %q", got)
	}
	if got := a.do("PUBSUB", "CHANNELS"); !strings.Contains(got, "$4\r\nnews\r\n") || strings.Contains(got, "tenant:") {
		t.Fatalf("PUBSUB CHANNELS: %q", got)
	}
	// Unsubscribing from everything returns the connection to normal mode.
	subA.send("UNSUBSCRIBE")
	subA.reply(5 * time.Second)
	subA.reply(5 * time.Second)
	if got := subA.do("GET", "k"); got != "$1\r\n2\r\n" {
		t.Fatalf("GET after UNSUBSCRIBE: %q", got)
	}
}

// RESP3 replies of every type reach the client intact, stripped only where
// key names appear, and byte-identical to Redis's own otherwise.
func TestRESP3RepliesMatchRedis(t *testing.T) {
	srv := redistest.StartT(t, redistest.Options{})
	addr, _ := startKeyfence(t, srv, "r3", func(c *proxy.Config) { c.Upstream.DB = 1 })
	direct := dialRaw(t, srv.Addr())
	kf := dialRaw(t, addr)
	for _, c := range []*rawClient{direct, kf} {
		if got := c.do("HELLO", "3"); !strings.HasPrefix(got, "%") {
			t.Fatalf("HELLO 3: %q", got)
		}
	}
	setup := [][]string{
		{"HSET", "h", "f1", "v1", "f2", "v2"},
		{"SADD", "s", "1", "2", "3"},
		{"ZADD", "z", "1.5", "m"},
		{"XADD", "st", "1-1", "f", "v"},
		{"RPUSH", "l", "a", "b"},
	}
	cases := []struct {
		args []string
		typ  byte
	}{
		{[]string{"HGETALL", "h"}, '%'},
		{[]string{"SMEMBERS", "s"}, '~'},
		{[]string{"ZSCORE", "z", "m"}, ','},
		{[]string{"GET", "missing"}, '_'},
		{[]string{"ZRANGE", "z", "0", "-1", "WITHSCORES"}, '*'},
		{[]string{"XREAD", "STREAMS", "st", "0"}, '%'},
		{[]string{"BLPOP", "l", "1"}, '*'},
		{[]string{"LMPOP", "1", "l", "LEFT"}, '*'},
		{[]string{"HRANDFIELD", "h", "-1"}, '*'},
		{[]string{"EXISTS", "h", "s"}, ':'},
		{[]string{"OBJECT", "ENCODING", "h"}, '$'},
	}
	direct.do("SELECT", "2")
	direct.do("FLUSHDB")
	for _, c := range []*rawClient{direct, kf} {
		for _, s := range setup {
			if got := c.do(s...); strings.HasPrefix(got, "-") {
				t.Fatalf("%v: %q", s, got)
			}
		}
	}
	for _, tc := range cases {
		want := direct.do(tc.args...)
		got := kf.do(tc.args...)
		if want[0] != tc.typ {
			t.Fatalf("%v: Redis answered %q, not RESP3 type %q", tc.args, want, tc.typ)
		}
		if tc.args[0] == "HRANDFIELD" { // random order: compare the type and size
			got, want = got[:3], want[:3]
		}
		if got != want {
			t.Errorf("%v: keyfence %q, Redis %q", tc.args, got, want)
		}
	}
	// Emulated replies use RESP3 types too: INFO is verbatim text.
	if got := kf.do("INFO", "keyspace"); !strings.HasPrefix(got, "=") || !strings.Contains(got, "txt:# Keyspace") {
		t.Errorf("INFO in RESP3: %q", got)
	}
	// Upstream holds only the prefixed names.
	keys, err := srv.Client().Do(context.Background(), "SELECT", 1).Result()
	_ = keys
	if err != nil {
		t.Fatal(err)
	}
}

// Transactions and scripts run on pinned connections from a bounded pool:
// the same connection is reused (no new TCP connection per transaction) and
// comes back clean.
func TestTransactionsReusePinnedConnections(t *testing.T) {
	srv := redistest.StartT(t, redistest.Options{})
	addr, kf := startKeyfence(t, srv, "tx", nil)
	c := dialRaw(t, addr)
	before := connectedClients(t, srv)
	for i := 0; i < 50; i++ {
		c.do("MULTI")
		c.do("INCR", "n")
		c.do("EVAL", "return redis.call('incr', KEYS[1])", "1", "n")
		c.do("SCAN", "0") // KEYS cannot be queued: it runs as SCAN steps outside MULTI
		got := c.do("EXEC")
		want := fmt.Sprintf("*3\r\n:%d\r\n:%d\r\n*2\r\n$1\r\n0\r\n*1\r\n$1\r\nn\r\n", 2*i+1, 2*i+2)
		if got != want {
			t.Fatalf("EXEC %d: %q, want %q", i, got, want)
		}
	}
	if after := connectedClients(t, srv); after > before+2 { // the shared connection and one pinned
		t.Fatalf("upstream connections grew from %d to %d over 50 transactions", before, after)
	}
	// A client leaving mid-transaction leaves nothing pinned.
	d := dialRaw(t, addr)
	d.do("WATCH", "n")
	d.do("MULTI")
	d.do("INCR", "n")
	d.nc.Close()
	waitFor(t, "pinned connection of a dropped transaction closed", 5*time.Second, func() bool { return kf.Stats().PinnedConns <= 1 })
	if got := c.do("GET", "n"); got != "$3\r\n100\r\n" {
		t.Fatalf("a dropped transaction ran: n = %q", got)
	}
	t.Logf("transactions: 50 MULTI/EXEC on %d upstream connection(s); commands on pinned connections: %d", connectedClients(t, srv)-before+1, kf.Stats().PinnedCommands)
}

func connectedClients(t *testing.T, srv *redistest.Server) int {
	t.Helper()
	list, err := srv.Client().ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(list, "\n")
}

// Scripts see the client's own key names, build keys from ARGV and store
// key names as values, the way BullMQ and asynq do, and stay in the tenant.
func TestLuaScriptsStayInTenant(t *testing.T) {
	srv := redistest.StartT(t, redistest.Options{})
	if err := srv.AddTenantUser(context.Background(), "tenant-lua", "pw", "lua"); err != nil {
		t.Fatal(err)
	}
	addr, _ := startKeyfence(t, srv, "lua", func(c *proxy.Config) {
		c.Upstream.Username, c.Upstream.Password = "tenant-lua", "pw"
	})
	c := dialRaw(t, addr)
	script := `local jobKey = ARGV[1] .. ARGV[2]
redis.call("HSET", jobKey, "name", ARGV[2])
redis.call("LPUSH", KEYS[1], jobKey)
local got = redis.call("LRANGE", KEYS[1], 0, -1)
return {KEYS[1], got[1], redis.call("HGET", got[1], "name"), redis.call("EXISTS", "bull:q:1")}`
	got := c.do("EVAL", script, "1", "bull:q:wait", "bull:q:", "1")
	want := "*4\r\n$11\r\nbull:q:wait\r\n$8\r\nbull:q:1\r\n$1\r\n1\r\n:1\r\n"
	if got != want {
		t.Fatalf("EVAL: %q, want %q", got, want)
	}
	sha := c.do("SCRIPT", "LOAD", script)
	if sha != "$40\r\n"+rewrite.ScriptSHA([]byte(script))+"\r\n" {
		t.Fatalf("SCRIPT LOAD returned %q, not the SHA1 of the client's text", sha)
	}
	// EVALSHA from another connection, after upstream forgot every script.
	if err := srv.Client().ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	other := dialRaw(t, addr)
	if got := other.do("EVALSHA", rewrite.ScriptSHA([]byte(script)), "1", "bull:q:wait", "bull:q:", "2"); !strings.HasPrefix(got, "*4\r\n") {
		t.Fatalf("EVALSHA after upstream SCRIPT FLUSH: %q", got)
	}
	// Errors carry the client's line numbers and SHA.
	bad := "local x = 1\nlocal v = redis.call('GET', KEYS[1], 'extra')\nreturn v"
	got = c.do("EVAL", bad, "1", "k")
	if !strings.Contains(got, "on @user_script:2.") || !strings.Contains(got, rewrite.ScriptSHA([]byte(bad))) {
		t.Fatalf("script error: %q", got)
	}
	// A returned call names its line too, as Redis does (the sandbox makes
	// it an ordinary call so that Lua keeps the caller's line).
	tail := "local x = 1\nreturn redis.call('GET', KEYS[1], 'extra')"
	if got := c.do("EVAL", tail, "1", "k"); !strings.Contains(got, "on @user_script:2.") || !strings.HasPrefix(got, "-ERR Wrong number of args") {
		t.Fatalf("script error after a tail call: %q", got)
	}
	// Errors of the script's own code keep their line.
	if got := c.do("EVAL", "local x = 1\nreturn nosuch.field", "0"); !strings.Contains(got, "user_script:2:") {
		t.Fatalf("script error: %q", got)
	}
	// Key patterns are refused inside scripts.
	if got := c.do("EVAL", "return redis.call('KEYS', '*')", "0"); !strings.Contains(got, "not allowed inside scripts") {
		t.Fatalf("KEYS in a script: %q", got)
	}
	// FUNCTION is the tenant's own namespace, empty until it loads one
	// (functions_test.go).
	if got := c.do("FUNCTION", "LIST"); got != "*0\r\n" {
		t.Fatalf("FUNCTION LIST: %q", got)
	}
	if got := c.do("FCALL", "f", "0"); got != "-ERR Function not found\r\n" {
		t.Fatalf("FCALL: %q", got)
	}
	keys, err := srv.Client().Keys(context.Background(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "tenant:lua:") {
			t.Errorf("upstream key %q is outside the tenant", k)
		}
	}
	if len(keys) != 3 {
		t.Errorf("upstream keys %v, want the list and two job hashes", keys)
	}
}

var _ = bufio.NewReader
var _ = bytes.Equal
var _ sync.Mutex

// Every command is counted by name and outcome, and the gauges read the
// server's own counters.
func TestMetricsRecordedPerCommand(t *testing.T) {
	srv := redistest.StartT(t, redistest.Options{})
	var kf *proxy.Server
	m, err := telemetry.NewMetrics("met", rewrite.CommandNames(), telemetry.Gauges{
		Sessions:    func() int64 { return int64(kf.Stats().Sessions) },
		PinnedConns: func() int64 { return int64(kf.Stats().PinnedConns) },
	})
	if err != nil {
		t.Fatal(err)
	}
	var addr string
	addr, kf = startKeyfence(t, srv, "met", func(c *proxy.Config) { c.Metrics = m })
	c := dialRaw(t, addr)
	c.do("SET", "k", "v")
	c.do("GET", "k")
	c.do("GET", "k")
	c.do("CONFIG", "GET", "x")
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`command="get",otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version="",outcome="ok",tenant="met"} 2`,
		`command="set",otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version="",outcome="ok",tenant="met"} 1`,
		`command="config|get",otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version="",outcome="error",tenant="met"} 1`,
		`keyfence_client_connections{otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version="",tenant="met"} 1`,
		`keyfence_upstream_duration_seconds_count`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// A dead upstream gets every client a Redis-style error it can act on, at
// once, and the proxy keeps serving what it can answer itself.
func TestDeadUpstreamErrorsSayWhatToCheck(t *testing.T) {
	port, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(proxy.Config{Listen: "127.0.0.1:0", Tenant: "dead", Upstream: upstream.Config{Addr: fmt.Sprintf("127.0.0.1:%d", port)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go p.Serve(ctx)
	c := dialRaw(t, p.Addr().String())
	got := c.do("GET", "k")
	if !strings.HasPrefix(got, "-ERR keyfence: upstream unavailable") || !strings.Contains(got, "is Redis running") || !strings.Contains(got, "connection refused") {
		t.Fatalf("GET with no Redis: %q", got)
	}
	if got := c.do("PING"); got != "+PONG\r\n" {
		t.Fatalf("PING with no Redis: %q", got)
	}
}
