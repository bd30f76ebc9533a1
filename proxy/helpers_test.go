package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/upstream"
)

// One redis-server serves the whole package. Tests keep out of each other's
// way by tenant id (every test has its own) and, where they look at a whole
// upstream database, by database number:
//
//	db 0   most tests (distinct tenants)
//	db 3,4 TestIsolation (upstream keys of tenants a and b only)
//	db 5,6 TestSelectFlushdbFlushall (SELECT)
//	db 7   TestBlockedClientDisconnectReleasesUpstream
//	db 8   TestDifferentialFunctions, through keyfence (tenant "difffn"; the
//	       direct side has a server of its own: functions are server-wide)
//	db 9   TestDifferential, direct connection (the app's own key names)
//	db 10  TestDifferential, through keyfence (tenant "diff")
//	db 11  TestGatewayRedisCLI (tenants acme and beta)
//	db 12  TestMultiExec, direct comparison
//	db 13  TestGatewayManyTenants (100 tenants)
//	db 15  TestMultiExec, stripped replies (SCAN over a whole database)
//
// Tests that read server-wide counters (INFO commandstats) are not parallel:
// Go runs every sequential top-level test before the parallel ones, so they
// see the server alone.
var sharedRedis *redistest.Server

const multiExecDB = 15

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	// sanitize-dump-payload yes, as keyfence's README asks of a shared
	// server: keyfence refuses RESTORE on one that does not sanitize
	// (restore_test.go starts servers of its own with no and clients).
	srv, err := redistest.Start(ctx, redistest.Options{Args: []string{"--sanitize-dump-payload", "yes"}})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxy tests:", err)
		os.Exit(1)
	}
	sharedRedis = srv
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "redis-server log tail:\n%s\n", srv.LogTail(2<<10))
	}
	if err := srv.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "proxy tests:", err)
	}
	os.Exit(code)
}

// testRedis returns the package's redis-server.
func testRedis(t testing.TB) *redistest.Server {
	t.Helper()
	if sharedRedis == nil {
		t.Fatal("shared redis-server not started (TestMain)")
	}
	return sharedRedis
}

// tenantFor derives a tenant id from the test name, so that every test has
// its own namespace on the shared server.
func tenantFor(t testing.TB) string {
	var b strings.Builder
	for _, r := range t.Name() {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	s := b.String()
	if len(s) > 64 {
		s = s[len(s)-64:]
	}
	return s
}

// startProxy starts an in-process keyfence in front of up and returns its
// address. mutate may change the config before New; by default the tenant
// is derived from the test name and the upstream db is 0.
func startProxy(t testing.TB, up *redistest.Server, mutate func(*Config)) (addr string) {
	t.Helper()
	_, addr = startProxyServer(t, up, mutate)
	return addr
}

// startProxyServer is startProxy that also returns the server, for tests
// that shut it down themselves.
func startProxyServer(t testing.TB, up *redistest.Server, mutate func(*Config)) (*Server, string) {
	t.Helper()
	cfg := Config{
		Listen:   "127.0.0.1:0",
		Tenant:   tenantFor(t),
		Upstream: upstream.Config{Addr: up.Addr()},
		Logger:   slog.New(slog.DiscardHandler),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("proxy.New: %v", err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatalf("proxy Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("proxy Shutdown: %v", err)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("proxy Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("proxy Serve did not return after Shutdown")
		}
	})
	return srv, srv.Addr().String()
}

// directDB returns a go-redis client (RESP2, so replies look like the raw
// ones) on database db of up; closed at cleanup.
func directDB(t testing.TB, up *redistest.Server, db int) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: up.Addr(), DB: db, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// proxyClient returns a go-redis client of keyfence at addr (RESP2 unless
// proto says otherwise); closed at cleanup.
func proxyClient(t testing.TB, addr string, mutate func(*redis.Options)) *redis.Client {
	t.Helper()
	o := &redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true, MaxRetries: -1}
	if mutate != nil {
		mutate(o)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// ---------------------------------------------------------------------------
// Raw RESP client: requests written as RESP arrays, replies read whole with
// resp.ReplyLen and returned as their exact bytes.

const rawTimeout = 10 * time.Second

type rawConn struct {
	nc  net.Conn
	br  *bufio.Reader
	buf []byte
}

func dialRawE(addr string) (*rawConn, error) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &rawConn{nc: nc, br: bufio.NewReaderSize(nc, 64<<10)}, nil
}

// eachClient runs f for n clients at once, each on a connection of its own
// to addr, and reports every error they return.
func eachClient(t testing.TB, addr string, n int, f func(i int, c *rawConn) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialRawE(addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.nc.Close()
			if err := f(i, c); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := dialRawE(addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.nc.Close() })
	return c
}

// encode appends args as one RESP request.
func encode(dst []byte, args ...string) []byte {
	dst = resp.AppendArrayHeader(dst, len(args))
	for _, a := range args {
		dst = resp.AppendBulk(dst, []byte(a))
	}
	return dst
}

// writeE writes raw bytes.
func (c *rawConn) writeE(b []byte) error {
	_ = c.nc.SetWriteDeadline(time.Now().Add(rawTimeout))
	_, err := c.nc.Write(b)
	return err
}

// readE reads one complete reply.
func (c *rawConn) readE() ([]byte, error) {
	return c.readTimeout(rawTimeout)
}

func (c *rawConn) readTimeout(d time.Duration) ([]byte, error) {
	_ = c.nc.SetReadDeadline(time.Now().Add(d))
	for {
		n, err := resp.ReplyLen(c.buf)
		if err != nil {
			return nil, fmt.Errorf("bad reply %q: %w", c.buf, err)
		}
		if n > 0 {
			out := append([]byte(nil), c.buf[:n]...)
			c.buf = append(c.buf[:0], c.buf[n:]...)
			return out, nil
		}
		var chunk [16 << 10]byte
		m, err := c.br.Read(chunk[:])
		c.buf = append(c.buf, chunk[:m]...)
		if m == 0 && err != nil {
			return nil, err
		}
	}
}

func (c *rawConn) doE(args ...string) ([]byte, error) {
	if err := c.writeE(encode(nil, args...)); err != nil {
		return nil, err
	}
	return c.readE()
}

func (c *rawConn) do(t testing.TB, args ...string) []byte {
	t.Helper()
	r, err := c.doE(args...)
	if err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	return r
}

func (c *rawConn) write(t testing.TB, b []byte) {
	t.Helper()
	if err := c.writeE(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func (c *rawConn) read(t testing.TB) []byte {
	t.Helper()
	r, err := c.readE()
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	return r
}

// ---------------------------------------------------------------------------
// A small RESP decoder for assertions.

type rv struct {
	typ   byte
	str   string
	elems []rv
	null  bool
}

func parseRV(b []byte) (rv, error) {
	v, n, err := decodeRV(b)
	if err != nil {
		return rv{}, err
	}
	if n != len(b) {
		return rv{}, fmt.Errorf("trailing bytes after reply: %q", b[n:])
	}
	return v, nil
}

func mustRV(t testing.TB, b []byte) rv {
	t.Helper()
	v, err := parseRV(b)
	if err != nil {
		t.Fatalf("parse %q: %v", b, err)
	}
	return v
}

func decodeRV(b []byte) (rv, int, error) {
	n, err := resp.ReplyLen(b)
	if err != nil || n == 0 {
		return rv{}, 0, fmt.Errorf("incomplete or bad reply %q", b)
	}
	end := bytes.Index(b, []byte("\r\n"))
	line := string(b[1:end])
	body := end + 2
	v := rv{typ: b[0]}
	switch b[0] {
	case '+', '-', ',', '(', '#', ':':
		v.str = line
	case '_':
		v.null = true
	case '$', '=', '!':
		size, _ := strconv.Atoi(line)
		if size < 0 {
			v.null = true
		} else {
			v.str = string(b[body : body+size])
		}
	case '*', '~', '>', '%', '|':
		count, _ := strconv.Atoi(line)
		if count < 0 {
			v.null = true
			break
		}
		if b[0] == '%' || b[0] == '|' {
			count *= 2
		}
		pos := body
		for i := 0; i < count; i++ {
			e, m, err := decodeRV(b[pos:])
			if err != nil {
				return rv{}, 0, err
			}
			v.elems = append(v.elems, e)
			pos += m
		}
	}
	return v, n, nil
}

// strs returns the string elements of an aggregate.
func (v rv) strs() []string {
	out := make([]string, 0, len(v.elems))
	for _, e := range v.elems {
		out = append(out, e.str)
	}
	return out
}

func sortedStrs(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

// quoteReply shows a reply readably in failure messages.
func quoteReply(b []byte) string {
	if len(b) > 600 {
		return strconv.Quote(string(b[:600])) + "…"
	}
	return strconv.Quote(string(b))
}

// infoField returns field's value in an INFO text.
func infoField(info, field string) (string, bool) {
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimRight(line, "\r")
		if k, v, ok := strings.Cut(line, ":"); ok && k == field {
			return v, true
		}
	}
	return "", false
}

// scanAll lists every key of a direct client's database.
func scanAll(ctx context.Context, t testing.TB, c *redis.Client) []string {
	t.Helper()
	var keys []string
	iter := c.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("SCAN: %v", err)
	}
	return keys
}

// waitFor polls cond every 20 ms until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// errCounter counts error replies by class, concurrently.
type errCounter struct {
	mu     sync.Mutex
	noperm []string
	other  []string
}

func (e *errCounter) note(what string, err error) {
	if err == nil || errors.Is(err, redis.Nil) {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	msg := what + ": " + err.Error()
	if strings.Contains(err.Error(), "NOPERM") || strings.Contains(err.Error(), "insufficient ACL permissions") {
		e.noperm = append(e.noperm, msg)
	} else {
		e.other = append(e.other, msg)
	}
}
