package faultproxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keyfence/keyfence/internal/redistest"
)

// ioTimeout bounds every wait that should succeed; a local round trip takes
// well under a millisecond, so reaching it means the proxy is stuck.
const ioTimeout = 5 * time.Second

// setup starts a redis-server and a proxy in front of it, both stopped at the
// end of the test.
func setup(t *testing.T) (*redistest.Server, *Proxy) {
	t.Helper()
	srv := redistest.StartT(t, redistest.Options{})
	p, err := New(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return srv, p
}

// newClient returns a go-redis client of addr that never retries (a retry
// would hide the very fault under test) and honours context deadlines.
func newClient(t *testing.T, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{
		Addr:            addr,
		DisableIdentity: true,
		MaxRetries:      -1,
		DialTimeout:     ioTimeout,
		ReadTimeout:     ioTimeout,
		WriteTimeout:    ioTimeout,
		PoolSize:        2,
		// go-redis retries a failed dial 5 times by default, MaxRetries or not.
		DialerRetries: 1,
		// Without it go-redis ignores a context's deadline on the socket.
		ContextTimeoutEnabled: true,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func mustSetMode(t *testing.T, p *Proxy, m Mode) {
	t.Helper()
	if err := p.SetMode(m); err != nil {
		t.Fatalf("SetMode(%s): %v", m, err)
	}
}

func mustPing(t *testing.T, c *redis.Client, what string) {
	t.Helper()
	if err := c.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("PING %s: %v", what, err)
	}
}

// dialRaw opens a plain connection, closed at the end of the test.
func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// rawPing sends an inline PING and returns the reply line, read within d.
func rawPing(c net.Conn, d time.Duration) (string, error) {
	if err := c.SetDeadline(time.Now().Add(d)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(c, "PING\r\n"); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

// isConnLost tells whether err is what a client sees when its connection is
// closed or reset under it.
func isConnLost(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// expectClosed reads from c, which the proxy should have closed, and fails
// unless the read reports a lost connection promptly.
func expectClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
	n, err := c.Read(make([]byte, 64))
	if n != 0 || !isConnLost(err) {
		t.Fatalf("%s: read = %d bytes, %v; want EOF or connection reset", what, n, err)
	}
}

func TestNewRejectsNonLoopbackUpstream(t *testing.T) {
	t.Parallel()
	for _, upstream := range []string{"10.0.0.1:6379", "example.com:6379", ":6379", "127.0.0.1"} {
		if p, err := New(upstream); err == nil {
			_ = p.Close()
			t.Errorf("New(%q) succeeded; want an error", upstream)
		}
	}
	for _, upstream := range []string{"127.0.0.1:6379", "[::1]:6379", "localhost:6379"} {
		p, err := New(upstream)
		if err != nil {
			t.Errorf("New(%q): %v", upstream, err)
			continue
		}
		if !strings.HasPrefix(p.Addr(), "127.0.0.1:") {
			t.Errorf("Addr() = %q; want 127.0.0.1:port", p.Addr())
		}
		_ = p.Close()
	}
}

func TestPassForwardsAndCounts(t *testing.T) {
	t.Parallel()
	_, p := setup(t)
	c := newClient(t, p.Addr())
	ctx := t.Context()

	value := strings.Repeat("v", 1<<20)
	if err := c.Set(ctx, "big", value, 0).Err(); err != nil {
		t.Fatalf("SET through the proxy: %v", err)
	}
	got, err := c.Get(ctx, "big").Result()
	if err != nil || got != value {
		t.Fatalf("GET through the proxy: %d bytes, %v; want the 1 MiB value", len(got), err)
	}
	if m := p.Mode(); m != Pass {
		t.Errorf("Mode() = %s; want pass", m)
	}
	st := p.Stats()
	if st.Accepted != 1 || st.ToUpstream < 1<<20 || st.ToClient < 1<<20 || st.Resets != 0 {
		t.Errorf("Stats() = %+v; want 1 connection, more than 1 MiB each way, no reset", st)
	}
}

// TestFaultsAndRecovery puts each connection-level fault in place, checks
// what clients see, then switches back to Pass and checks that the same
// address serves old and new clients again.
func TestFaultsAndRecovery(t *testing.T) {
	t.Parallel()
	tests := []struct {
		mode Mode
		// fault checks what clients see under mode; before was connected,
		// and old has a pooled connection, before the mode was set.
		fault func(t *testing.T, p *Proxy, old *redis.Client, before net.Conn)
		// healed, if set, runs after the switch back to Pass.
		healed func(t *testing.T, p *Proxy)
	}{
		{
			mode: Drop,
			fault: func(t *testing.T, p *Proxy, old *redis.Client, before net.Conn) {
				expectClosed(t, before, "connection open before Drop")
				accepted := p.Stats().Accepted
				c := dialRaw(t, p.Addr()) // the listener is up: the dial works...
				expectClosed(t, c, "connection made under Drop")
				if got := p.Stats().Accepted; got != accepted+1 {
					t.Errorf("Accepted = %d; want %d (dropped connections count)", got, accepted+1)
				}
				if err := old.Ping(t.Context()).Err(); err == nil || !isConnLost(err) {
					t.Errorf("PING under Drop: %v; want EOF or connection reset", err)
				}
			},
		},
		{
			mode: Refuse,
			fault: func(t *testing.T, p *Proxy, old *redis.Client, before net.Conn) {
				expectClosed(t, before, "connection open before Refuse")
				c, err := net.DialTimeout("tcp", p.Addr(), ioTimeout)
				if err == nil {
					_ = c.Close()
				}
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Errorf("dial under Refuse: %v; want ECONNREFUSED", err)
				}
				if err := old.Ping(t.Context()).Err(); err == nil {
					t.Error("PING under Refuse succeeded")
				}
			},
		},
		{
			mode: Blackhole,
			fault: func(t *testing.T, p *Proxy, old *redis.Client, before net.Conn) {
				for what, c := range map[string]net.Conn{
					"connection open before Blackhole": before,
					"connection made under Blackhole":  dialRaw(t, p.Addr()),
				} {
					if reply, err := rawPing(c, 200*time.Millisecond); !isTimeout(err) {
						t.Errorf("PING on %s: %q, %v; want a read timeout", what, reply, err)
					}
				}
				ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
				defer cancel()
				if err := old.Ping(ctx).Err(); !isTimeout(err) && !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("PING with go-redis under Blackhole: %v; want a timeout", err)
				}
			},
			healed: func(t *testing.T, p *Proxy) {
				// A PING sent into the blackhole was held, not lost: it is
				// answered once the mode forwards again.
				c := dialRaw(t, p.Addr())
				mustSetMode(t, p, Blackhole)
				if reply, err := rawPing(c, 100*time.Millisecond); !isTimeout(err) {
					t.Fatalf("PING under Blackhole: %q, %v; want a read timeout", reply, err)
				}
				mustSetMode(t, p, Pass)
				_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
				reply, err := bufio.NewReader(c).ReadString('\n')
				if err != nil || reply != "+PONG\r\n" {
					t.Errorf("reply to the held PING after Pass: %q, %v; want +PONG", reply, err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.mode.String(), func(t *testing.T) {
			t.Parallel()
			_, p := setup(t)
			addr := p.Addr()
			old := newClient(t, addr)
			mustPing(t, old, "before the fault")
			before := dialRaw(t, addr)
			if reply, err := rawPing(before, ioTimeout); err != nil || reply != "+PONG\r\n" {
				t.Fatalf("raw PING before the fault: %q, %v", reply, err)
			}

			mustSetMode(t, p, tt.mode)
			if got := p.Mode(); got != tt.mode {
				t.Fatalf("Mode() = %s; want %s", got, tt.mode)
			}
			tt.fault(t, p, old, before)

			mustSetMode(t, p, Pass)
			if p.Addr() != addr {
				t.Fatalf("Addr() changed from %s to %s", addr, p.Addr())
			}
			mustPing(t, newClient(t, addr), "from a new client after Pass")
			mustPing(t, old, "from the old client after Pass")
			if reply, err := rawPing(dialRaw(t, addr), ioTimeout); err != nil || reply != "+PONG\r\n" {
				t.Fatalf("raw PING after Pass: %q, %v", reply, err)
			}
			if tt.healed != nil {
				tt.healed(t, p)
			}
		})
	}
}

// TestBlackholeHidesClose checks that a client closing its connection under
// Blackhole is not seen upstream until the partition heals.
func TestBlackholeHidesClose(t *testing.T) {
	t.Parallel()
	srv, p := setup(t)
	ctx := t.Context()
	// upstreamConns counts redis-server's clients other than the one asking.
	upstreamConns := func() int {
		list, err := srv.Client().ClientList(ctx).Result()
		if err != nil {
			t.Fatalf("CLIENT LIST: %v", err)
		}
		return strings.Count(list, "\n") - 1
	}
	waitConns := func(want int, what string) {
		t.Helper()
		deadline := time.Now().Add(ioTimeout)
		for upstreamConns() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: redis-server has %d proxied connections; want %d", what, upstreamConns(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	mustSetMode(t, p, Blackhole)
	c := dialRaw(t, p.Addr())
	waitConns(1, "after dialling under Blackhole")
	_ = c.Close()
	time.Sleep(100 * time.Millisecond) // time enough for a forwarded close to arrive
	if n := upstreamConns(); n != 1 {
		t.Fatalf("redis-server has %d proxied connections after the client closed under Blackhole; want 1", n)
	}
	mustSetMode(t, p, Pass)
	waitConns(0, "after Pass")
}

func TestDelay(t *testing.T) {
	t.Parallel()
	const d = 50 * time.Millisecond
	_, p := setup(t)
	c := newClient(t, p.Addr())
	ctx := t.Context()
	mustPing(t, c, "before Delay") // the connection and its handshake are not timed

	mustSetMode(t, p, Delay(d))
	if got, want := p.Mode().String(), "delay(50ms)"; got != want {
		t.Errorf("Mode() = %s; want %s", got, want)
	}
	start := time.Now()
	mustPing(t, c, "under Delay")
	// The request and the reply are each held d: only the lower bound is a
	// property of the injector, the rest depends on the machine.
	if rtt := time.Since(start); rtt < 2*d {
		t.Errorf("PING round trip under Delay(%s) took %s; want at least %s", d, rtt, 2*d)
	}

	// Order survives: a pipeline's replies come back in sequence.
	pipe := c.Pipeline()
	incrs := make([]*redis.IntCmd, 100)
	for i := range incrs {
		incrs[i] = pipe.Incr(ctx, "counter")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatalf("pipeline under Delay: %v", err)
	}
	for i, cmd := range incrs {
		if got := cmd.Val(); got != int64(i+1) {
			t.Fatalf("INCR #%d = %d; want %d", i+1, got, i+1)
		}
	}

	if Delay(0) != Pass || Delay(-time.Second) != Pass {
		t.Error("Delay(d <= 0) is not Pass")
	}
}

func TestResetMidReply(t *testing.T) {
	t.Parallel()
	srv, p := setup(t)
	ctx := t.Context()
	value := strings.Repeat("x", 1<<20)
	if err := srv.Client().Set(ctx, "big", value, 0).Err(); err != nil {
		t.Fatalf("SET directly: %v", err)
	}

	t.Run("go-redis", func(t *testing.T) {
		c := newClient(t, p.Addr())
		mustPing(t, c, "before the reset") // so the cut hits GET, not the handshake
		resets := p.Stats().Resets

		mustSetMode(t, p, ResetMidReply)
		got, err := c.Get(ctx, "big").Result()
		if err == nil || !isConnLost(err) {
			t.Errorf("GET cut mid-reply: %v; want EOF or connection reset", err)
		}
		if got != "" {
			t.Errorf("GET cut mid-reply returned %d bytes; want none", len(got))
		}
		if n := p.Stats().Resets; n != resets+1 {
			t.Errorf("Resets = %d; want %d", n, resets+1)
		}
		// One-shot: the proxy is back in Pass and the next GET is whole.
		if m := p.Mode(); m != Pass {
			t.Errorf("Mode() after the reset = %s; want pass", m)
		}
		if got, err := c.Get(ctx, "big").Result(); err != nil || got != value {
			t.Errorf("GET after the reset: %d bytes, %v; want the whole value", len(got), err)
		}
	})

	t.Run("raw", func(t *testing.T) {
		conn := dialRaw(t, p.Addr())
		mustSetMode(t, p, ResetMidReply)
		_ = conn.SetDeadline(time.Now().Add(ioTimeout))
		if _, err := io.WriteString(conn, "GET big\r\n"); err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, conn)
		if err == nil {
			err = io.EOF // io.Copy reports a clean end as nil
		}
		full := int64(len("$1048576\r\n") + len(value) + len("\r\n"))
		if n >= full || !isConnLost(err) {
			t.Errorf("raw GET cut mid-reply: read %d of %d bytes, then %v; want a part, then EOF or reset", n, full, err)
		}
		t.Logf("read %d of %d bytes before: %v", n, full, err)
	})
}

// TestCloseLeavesNothingBehind closes a proxy with connections in every
// waiting state and checks that it returns promptly, no goroutine of it
// survives, and its address is no longer served.
func TestCloseLeavesNothingBehind(t *testing.T) {
	// Not parallel: the goroutine count must not move with other tests.
	srv := redistest.StartT(t, redistest.Options{})
	before := runtime.NumGoroutine()

	p, err := New(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	addr := p.Addr()
	// Refuse and back first (it closes connections), so that a second accept
	// loop is the one running.
	mustSetMode(t, p, Refuse)
	mustSetMode(t, p, Pass)
	idle := dialRaw(t, addr) // both its goroutines wait in Read
	if reply, err := rawPing(idle, ioTimeout); err != nil || reply != "+PONG\r\n" {
		t.Fatalf("PING: %q, %v", reply, err)
	}
	mustSetMode(t, p, Blackhole)
	held := dialRaw(t, addr) // its PING waits for a mode change...
	if _, err := io.WriteString(held, "PING\r\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // ...once the proxy has read it
	mustSetMode(t, p, Delay(time.Hour))
	delayed := dialRaw(t, addr) // its PING, like held's, waits an hour
	if _, err := io.WriteString(delayed, "PING\r\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the proxy pick the PINGs up

	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(ioTimeout):
		t.Fatal("Close did not return")
	}

	for what, c := range map[string]net.Conn{"idle": idle, "held": held, "delayed": delayed} {
		expectClosed(t, c, what+" connection after Close")
		_ = c.Close()
	}
	if c, err := net.DialTimeout("tcp", addr, ioTimeout); err == nil {
		_ = c.Close()
		t.Error("dial after Close succeeded")
	}
	if err := p.SetMode(Pass); !errors.Is(err, ErrClosed) {
		t.Errorf("SetMode after Close: %v; want ErrClosed", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

	deadline := time.Now().Add(ioTimeout)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before New, %d after Close:\n%s",
				before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
