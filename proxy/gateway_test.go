package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/proxy/tenants"
	"github.com/keyfence/keyfence/telemetry"
	"github.com/keyfence/keyfence/upstream"
)

// gwTenant is one tenant of a test's tenants file.
type gwTenant struct {
	id, password string
	extra        string // more YAML lines under the tenant, indented by 4
}

// tenantsFile builds a tenants file. Passwords are hashed with bcrypt's
// least cost: the tests exercise the gateway, not the hash's strength.
func tenantsFile(t testing.TB, list []gwTenant, env map[string]string) *tenants.File {
	t.Helper()
	var b strings.Builder
	b.WriteString("tenants:\n")
	for _, tn := range list {
		h, err := bcrypt.GenerateFromPassword([]byte(tn.password), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "  - id: %s\n    password_hash: %q\n%s", tn.id, h, tn.extra)
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	f, err := tenants.Parse([]byte(b.String()), lookup, func(string) ([]byte, error) { return nil, errors.New("no files in this test") })
	if err != nil {
		t.Fatalf("tenants file:\n%s\n%v", b.String(), err)
	}
	return f
}

// startGateway starts an in-process gateway keyfence in front of up.
func startGateway(t testing.TB, up *redistest.Server, file *tenants.File, mutate func(*GatewayConfig)) (*Gateway, string) {
	t.Helper()
	cfg := GatewayConfig{
		Server: Config{
			Listen:   "127.0.0.1:0",
			Upstream: upstream.Config{Addr: up.Addr()},
			Logger:   slog.New(slog.DiscardHandler),
		},
		Tenants: file,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	g, err := NewGateway(cfg)
	if err != nil {
		t.Fatalf("NewGateway: %v", err)
	}
	if err := g.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if err := g.Shutdown(sctx); err != nil {
			t.Errorf("gateway Shutdown: %v", err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway Serve: %v", err)
		}
	})
	return g, g.Addr().String()
}

const wrongPass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n"

// Before AUTH only AUTH, HELLO, QUIT and RESET are served; a wrong tenant or
// password gets Redis's exact error; AUTH picks the namespace; re-AUTH as
// another tenant switches cleanly; RESET logs out.
func TestGatewayAuthentication(t *testing.T) {
	up := testRedis(t)
	ctx := testCtx(t)
	file := tenantsFile(t, []gwTenant{{id: "gwa-acme", password: "acme-pw"}, {id: "gwa-beta", password: "beta-pw"}}, nil)
	g, addr := startGateway(t, up, file, nil)
	direct := directDB(t, up, 0)

	c := dialRaw(t, addr)
	for _, cmd := range [][]string{{"GET", "k"}, {"PING"}, {"CLIENT", "LIST"}, {"INFO"}, {"KEYS", "*"}, {"EVAL", "return 1", "0"}, {"SUBSCRIBE", "ch"}} {
		if got := string(c.do(t, cmd...)); got != "-NOAUTH Authentication required.\r\n" {
			t.Errorf("%q before AUTH: %q", cmd, got)
		}
	}
	if got := string(c.do(t, "HELLO", "3")); !strings.HasPrefix(got, "-NOAUTH HELLO must be called with the client already authenticated") {
		t.Errorf("HELLO 3 before AUTH: %q", got)
	}
	for _, creds := range [][]string{{"nobody", "acme-pw"}, {"gwa-acme", "beta-pw"}, {"gwa-acme", ""}, {"acme-pw"}} {
		if got := string(c.do(t, append([]string{"AUTH"}, creds...)...)); got != wrongPass {
			t.Errorf("AUTH %q: %q", creds, got)
		}
	}
	if got := g.Stats().AuthFailed; got != 4 {
		t.Errorf("AuthFailed = %d, want 4", got)
	}
	if got := string(c.do(t, "AUTH", "gwa-acme", "acme-pw")); got != "+OK\r\n" {
		t.Fatalf("AUTH: %q", got)
	}
	c.do(t, "SET", "k", "from-acme")
	if v, err := direct.Get(ctx, "tenant:gwa-acme:k").Result(); err != nil || v != "from-acme" {
		t.Fatalf("upstream tenant:gwa-acme:k = %q, %v", v, err)
	}
	// A failed re-AUTH keeps the tenant, as Redis keeps the user.
	if got := string(c.do(t, "AUTH", "gwa-beta", "wrong")); got != wrongPass {
		t.Errorf("failed re-AUTH: %q", got)
	}
	if got := string(c.do(t, "GET", "k")); got != "$9\r\nfrom-acme\r\n" {
		t.Errorf("GET after a failed re-AUTH: %q", got)
	}
	// Re-AUTH as the other tenant, pipelined behind a command of the first.
	c.write(t, append(append(encode(nil, "SET", "k2", "acme-too"), encode(nil, "AUTH", "gwa-beta", "beta-pw")...), encode(nil, "GET", "k")...))
	for i, want := range []string{"+OK\r\n", "+OK\r\n", "$-1\r\n"} {
		if got := string(c.read(t)); got != want {
			t.Errorf("pipelined reply %d: %q, want %q", i, got, want)
		}
	}
	if v, _ := direct.Get(ctx, "tenant:gwa-acme:k2").Result(); v != "acme-too" {
		t.Errorf("the command before the re-AUTH ran as %q", v)
	}
	c.do(t, "SET", "k", "from-beta")
	if v, _ := direct.Get(ctx, "tenant:gwa-beta:k").Result(); v != "from-beta" {
		t.Errorf("upstream tenant:gwa-beta:k = %q", v)
	}
	if v, _ := direct.Get(ctx, "tenant:gwa-acme:k").Result(); v != "from-acme" {
		t.Errorf("beta's SET changed acme's key: %q", v)
	}
	// HELLO 3 AUTH switches back and speaks RESP3.
	hello := string(c.do(t, "HELLO", "3", "AUTH", "gwa-acme", "acme-pw", "SETNAME", "worker"))
	if !strings.HasPrefix(hello, "%7\r\n") || !strings.Contains(hello, ":3\r\n") {
		t.Errorf("HELLO 3 AUTH: %q", hello)
	}
	if got := string(c.do(t, "GET", "k")); got != "$9\r\nfrom-acme\r\n" {
		t.Errorf("GET after HELLO AUTH: %q", got)
	}
	// CLIENT LIST shows the tenant's own connections only.
	other := dialRaw(t, addr)
	other.do(t, "AUTH", "gwa-beta", "beta-pw")
	third := dialRaw(t, addr)
	third.do(t, "AUTH", "gwa-acme", "acme-pw")
	list := string(c.do(t, "CLIENT", "LIST"))
	if n := strings.Count(list, "id="); n != 2 || !strings.Contains(list, "name=worker") {
		t.Errorf("acme's CLIENT LIST (want its 2 connections): %q", list)
	}
	if got := g.Stats().Tenants; got != 2 {
		t.Errorf("tenants started = %d, want 2", got)
	}
	// RESET logs out.
	if got := string(c.do(t, "RESET")); got != "+RESET\r\n" {
		t.Errorf("RESET: %q", got)
	}
	if got := string(c.do(t, "GET", "k")); got != "-NOAUTH Authentication required.\r\n" {
		t.Errorf("GET after RESET: %q", got)
	}
	if st := g.Stats(); st.Lobby != 1 {
		t.Errorf("lobby holds %d connections after RESET, want 1", st.Lobby)
	}
}

// Nothing a client sends before AUTH reaches upstream.
func TestGatewayLobbyForwardsNothing(t *testing.T) {
	up := redistest.StartT(t, redistest.Options{})
	file := tenantsFile(t, []gwTenant{{id: "lobby-a", password: "pw"}}, nil)
	_, addr := startGateway(t, up, file, nil)
	ctx := testCtx(t)
	direct := redis.NewClient(&redis.Options{Addr: up.Addr(), Protocol: 2, DisableIdentity: true})
	defer direct.Close()
	if err := direct.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	c := dialRaw(t, addr)
	for _, cmd := range [][]string{{"SET", "k", "v"}, {"FLUSHALL"}, {"EVAL", "redis.call('set','x','1')", "0"}, {"SCAN", "0"}, {"PUBLISH", "ch", "m"}, {"MULTI"}, {"SELECT", "1"}, {"CLIENT", "KILL", "ID", "1"}} {
		c.do(t, cmd...)
	}
	stats, err := direct.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(stats, "\n") {
		if strings.HasPrefix(line, "cmdstat_") && !strings.HasPrefix(line, "cmdstat_info") && !strings.HasPrefix(line, "cmdstat_config") {
			t.Errorf("upstream ran a command for a client that never authenticated: %s", line)
		}
	}
}

// Re-AUTH as another tenant drops the old tenant's transaction state,
// WATCH and subscriptions; AUTH inside MULTI is refused in gateway mode.
func TestGatewayReauthDropsState(t *testing.T) {
	up := testRedis(t)
	file := tenantsFile(t, []gwTenant{{id: "gwr-a", password: "a"}, {id: "gwr-b", password: "b"}}, nil)
	g, addr := startGateway(t, up, file, nil)

	c := dialRaw(t, addr)
	c.do(t, "AUTH", "gwr-a", "a")
	c.do(t, "WATCH", "w")
	a, _ := g.Tenant("gwr-a")
	if n := a.Stats().PinnedConns; n != 1 {
		t.Fatalf("WATCH pinned %d connections, want 1", n)
	}
	c.do(t, "AUTH", "gwr-b", "b")
	if n := a.Stats().PinnedConns; n != 0 {
		t.Errorf("a's pinned connection (WATCH) is held after re-AUTH: %d", n)
	}
	// MULTI, and AUTH inside it.
	c.do(t, "MULTI")
	c.do(t, "SET", "m", "1")
	if got := string(c.do(t, "AUTH", "gwr-a", "a")); !strings.Contains(got, "inside MULTI is not supported in gateway mode") {
		t.Errorf("AUTH inside MULTI: %q", got)
	}
	if got := string(c.do(t, "EXEC")); !strings.HasPrefix(got, "-EXECABORT") {
		t.Errorf("EXEC after a refused AUTH: %q", got)
	}
	// A RESP3 subscriber that re-AUTHs loses its subscriptions.
	s := dialRaw(t, addr)
	s.do(t, "HELLO", "3", "AUTH", "gwr-a", "a")
	s.do(t, "SUBSCRIBE", "news")
	pub := dialRaw(t, addr)
	pub.do(t, "AUTH", "gwr-a", "a")
	if got := string(pub.do(t, "PUBLISH", "news", "one")); got != ":1\r\n" {
		t.Fatalf("PUBLISH to a subscriber: %q", got)
	}
	if got := string(s.read(t)); !strings.Contains(got, "one") {
		t.Fatalf("subscriber got %q", got)
	}
	if got := string(s.do(t, "AUTH", "gwr-b", "b")); got != "+OK\r\n" {
		t.Fatalf("re-AUTH of a RESP3 subscriber: %q", got)
	}
	if got := string(pub.do(t, "PUBLISH", "news", "two")); got != ":0\r\n" {
		t.Errorf("PUBLISH after the subscriber left for another tenant: %q", got)
	}
	if got := string(s.do(t, "PING")); got != "+PONG\r\n" {
		t.Errorf("PING after re-AUTH (no message may come first): %q", got)
	}
}

// A tenant's max_connections is its maxclients: one AUTH past it gets
// Redis's error and is closed, other tenants are not affected, and a
// connection that goes makes room.
func TestGatewayMaxConnections(t *testing.T) {
	up := testRedis(t)
	file := tenantsFile(t, []gwTenant{
		{id: "gwm-small", password: "s", extra: "    limits:\n      max_connections: 2\n"},
		{id: "gwm-other", password: "o"},
	}, nil)
	g, addr := startGateway(t, up, file, nil)
	c1, c2 := dialRaw(t, addr), dialRaw(t, addr)
	c1.do(t, "AUTH", "gwm-small", "s")
	c2.do(t, "AUTH", "gwm-small", "s")
	c3 := dialRaw(t, addr)
	if got := string(c3.do(t, "AUTH", "gwm-small", "s")); got != "-ERR max number of clients reached\r\n" {
		t.Errorf("AUTH past max_connections: %q", got)
	}
	if _, err := c3.readTimeout(5 * time.Second); !errors.Is(err, io.EOF) {
		t.Errorf("the refused connection stays open: %v", err)
	}
	o := dialRaw(t, addr)
	if got := string(o.do(t, "AUTH", "gwm-other", "o")); got != "+OK\r\n" {
		t.Errorf("another tenant's AUTH while the first is full: %q", got)
	}
	c1.nc.Close()
	small, _ := g.Tenant("gwm-small")
	if !waitFor(5*time.Second, func() bool { return small.Stats().Sessions == 1 }) {
		t.Fatal("the closed connection did not leave its tenant")
	}
	c4 := dialRaw(t, addr)
	if got := string(c4.do(t, "AUTH", "gwm-small", "s")); got != "+OK\r\n" {
		t.Errorf("AUTH once a connection left: %q", got)
	}
}

// max_ops_per_second paces a tenant's clients: commands over the rate wait
// their turn rather than fail, and one that would wait past the gateway's
// QuotaWait is refused.
func TestGatewayOpsQuota(t *testing.T) {
	up := testRedis(t)
	file := tenantsFile(t, []gwTenant{
		{id: "gwq-paced", password: "p", extra: "    limits:\n      max_ops_per_second: 200\n      burst: 10\n"},
		{id: "gwq-slow", password: "s", extra: "    limits:\n      max_ops_per_second: 1\n      burst: 1\n"},
	}, nil)
	_, addr := startGateway(t, up, file, func(c *GatewayConfig) { c.QuotaWait = 300 * time.Millisecond })
	c := dialRaw(t, addr)
	c.do(t, "AUTH", "gwq-paced", "p")
	// 110 commands at 200/s with a burst of 10 take at least 0.5 s: the
	// pacing is a lower bound only, which a slow machine cannot break.
	const n = 110
	var batch []byte
	for i := 0; i < n; i++ {
		batch = encode(batch, "INCR", "paced")
	}
	start := time.Now()
	c.write(t, batch)
	for i := 0; i < n; i++ {
		if got := string(c.read(t)); got != fmt.Sprintf(":%d\r\n", i+1) {
			t.Fatalf("reply %d: %q", i, got)
		}
	}
	if d := time.Since(start); d < 450*time.Millisecond {
		t.Errorf("%d commands at max_ops_per_second 200 (burst 10) took %v: not paced", n, d)
	}
	s := dialRaw(t, addr)
	// The first command takes the one token; the next would wait a
	// second, past QuotaWait.
	s.do(t, "AUTH", "gwq-slow", "s")
	if got := string(s.do(t, "PING")); got != "+PONG\r\n" {
		t.Errorf("the first command within the quota: %q", got)
	}
	if got := string(s.do(t, "PING")); got != "-"+errOverQuota+"\r\n" {
		t.Errorf("a command over the quota: %q", got)
	}
}

// Failed AUTHs from one address are answered at once at first, then later
// and later, up to a bound; the run ends with the window.
func TestAuthFailuresSlowDown(t *testing.T) {
	var f authFailures
	addr := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 1234}
	other := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 1234}
	now := time.Unix(1000, 0)
	tests := []struct {
		addr net.Addr
		at   time.Duration
		want time.Duration
	}{
		{addr, 0, 0}, {addr, time.Second, 0}, {addr, 2 * time.Second, 0},
		{addr, 3 * time.Second, 100 * time.Millisecond},
		{addr, 4 * time.Second, 200 * time.Millisecond},
		{other, 4 * time.Second, 0}, // another address is not slowed
		{addr, 5 * time.Second, 400 * time.Millisecond},
		{addr, 6 * time.Second, 800 * time.Millisecond},
		{addr, 7 * time.Second, 1600 * time.Millisecond},
		{addr, 8 * time.Second, 3200 * time.Millisecond},
		{addr, 9 * time.Second, authMaxDelay},
		{addr, 10 * time.Second, authMaxDelay},
		{addr, 10*time.Second + authFailureWindow + time.Second, 0}, // a new run
	}
	for i, tt := range tests {
		if got := f.note(tt.addr, now.Add(tt.at)); got != tt.want {
			t.Errorf("failure %d at +%v: delay %v, want %v", i, tt.at, got, tt.want)
		}
	}
	// Same IP, other port: the same run.
	if got := f.note(&net.TCPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 9}, now.Add(4*time.Second)); got != 0 {
		t.Errorf("second failure of other: %v", got)
	}
}

// A reload disconnects the clients of a removed tenant and nobody else's;
// a changed password applies to the next AUTH, changed limits at once.
func TestGatewayReload(t *testing.T) {
	up := testRedis(t)
	g, addr := startGateway(t, up, tenantsFile(t, []gwTenant{
		{id: "gwl-gone", password: "g"},
		{id: "gwl-kept", password: "old"},
		{id: "gwl-limited", password: "l", extra: "    limits:\n      max_ops_per_second: 1\n      burst: 1\n"},
	}, nil), func(c *GatewayConfig) { c.QuotaWait = 50 * time.Millisecond })
	gone, kept, limited := dialRaw(t, addr), dialRaw(t, addr), dialRaw(t, addr)
	gone.do(t, "AUTH", "gwl-gone", "g")
	kept.do(t, "AUTH", "gwl-kept", "old")
	kept.do(t, "SET", "k", "v")
	limited.do(t, "AUTH", "gwl-limited", "l")
	limited.do(t, "PING")
	if got := string(limited.do(t, "PING")); got != "-"+errOverQuota+"\r\n" {
		t.Fatalf("over the quota before the reload: %q", got)
	}

	g.Reload(tenantsFile(t, []gwTenant{
		{id: "gwl-kept", password: "new"},
		{id: "gwl-limited", password: "l"},
	}, nil))
	if _, err := gone.readTimeout(5 * time.Second); err == nil {
		t.Error("a removed tenant's connection is still open")
	}
	if got := string(kept.do(t, "GET", "k")); got != "$1\r\nv\r\n" {
		t.Errorf("a kept tenant's connection after the reload: %q", got)
	}
	for i := 0; i < 20; i++ {
		if got := string(limited.do(t, "PING")); got != "+PONG\r\n" {
			t.Fatalf("PING %d once the limit was lifted: %q", i, got)
		}
	}
	c := dialRaw(t, addr)
	if got := string(c.do(t, "AUTH", "gwl-gone", "g")); got != wrongPass {
		t.Errorf("AUTH as a removed tenant: %q", got)
	}
	if got := string(c.do(t, "AUTH", "gwl-kept", "old")); got != wrongPass {
		t.Errorf("AUTH with the old password: %q", got)
	}
	if got := string(c.do(t, "AUTH", "gwl-kept", "new")); got != "+OK\r\n" {
		t.Errorf("AUTH with the new password: %q", got)
	}
	if st := g.Stats(); st.Tenants != 2 {
		t.Errorf("running tenants after the reload: %d, want 2", st.Tenants)
	}
}

// A tenant that names an upstream user runs all of its traffic as that user,
// the narrowest one `keyfence acl` prints, over its own connections; a tenant
// without one runs as the gateway's.
func TestGatewayUpstreamUsers(t *testing.T) {
	up := testRedis(t)
	ctx := testCtx(t)
	user := addLeastPrivilegeUser(t, up, "gwu-narrow", "narrow-upstream-pw")
	_, addr := startGateway(t, up, tenantsFile(t, []gwTenant{
		{id: "gwu-narrow", password: "n", extra: "    upstream:\n      user: " + user + "\n      password_env: GWU_PW\n"},
		{id: "gwu-wide", password: "w"},
	}, map[string]string{"GWU_PW": "narrow-upstream-pw"}), func(c *GatewayConfig) {
		c.Server.Upstream.AssumeRestoreSanitized = true
	})
	narrow := proxyClient(t, addr, func(o *redis.Options) { o.Username, o.Password = "gwu-narrow", "n" })
	wide := proxyClient(t, addr, func(o *redis.Options) { o.Username, o.Password = "gwu-wide", "w" })
	for _, c := range []*redis.Client{narrow, wide} {
		if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if v, err := c.Eval(ctx, "return redis.call('GET', KEYS[1])", []string{"k"}).Result(); err != nil || v != "v" {
			t.Fatalf("EVAL: %v, %v", v, err)
		}
		if n, err := c.DBSize(ctx).Result(); err != nil || n != 1 {
			t.Fatalf("DBSIZE: %d, %v", n, err)
		}
	}
	list, err := up.Client().ClientList(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(list, "user="+user+" ") {
		t.Errorf("no upstream connection runs as %s:\n%s", user, list)
	}
}

// The tenants file refuses the tenant id the metrics use for the tenants
// past their cap, whatever telemetry calls it.
func TestTenantsFileRefusesOverflowID(t *testing.T) {
	h, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tenants.Parse([]byte("tenants:\n- id: "+telemetry.OverflowTenant+"\n  password_hash: '"+string(h)+"'\n"), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("tenant id %q: %v, want refused as reserved", telemetry.OverflowTenant, err)
	}
}

// Client ids are numbered per tenant: another tenant's connections do not
// move them, so they cannot be counted through CLIENT ID.
func TestGatewayClientIDsPerTenant(t *testing.T) {
	up := testRedis(t)
	_, addr := startGateway(t, up, tenantsFile(t, []gwTenant{{id: "gwi-a", password: "a"}, {id: "gwi-b", password: "b"}}, nil), nil)
	for i := 0; i < 5; i++ {
		c := dialRaw(t, addr)
		c.do(t, "AUTH", "gwi-a", "a")
	}
	b := dialRaw(t, addr)
	b.do(t, "AUTH", "gwi-b", "b")
	if got := string(b.do(t, "CLIENT", "ID")); got != ":1\r\n" {
		t.Errorf("the first connection of tenant b after five of a: CLIENT ID %q, want 1", got)
	}
	if got := string(b.do(t, "CLIENT", "LIST", "ID", "1")); !strings.Contains(got, "id=1 ") || strings.Count(got, "id=") != 1 {
		t.Errorf("CLIENT LIST ID 1: %q", got)
	}
	b2 := dialRaw(t, addr)
	if got := string(b2.do(t, "HELLO", "2", "AUTH", "gwi-b", "b")); !strings.Contains(got, "$2\r\nid\r\n:2\r\n") {
		t.Errorf("HELLO AUTH of b's second connection: %q, want id 2", got)
	}
}
