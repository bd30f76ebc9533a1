package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Upstream databases of the tests in this file, which look at a whole
// database: TestGatewayRedisCLI's tenant is called acme, as in the README,
// without meeting another test's acme.
const (
	gatewayCLIDB  = 11
	gatewayManyDB = 13
)

// redis-cli picks its tenant the way an operator would: --user and --pass
// (or REDISCLI_AUTH), a redis:// URL, in RESP2 and RESP3; a wrong password
// gets Redis's WRONGPASS and nothing runs.
func TestGatewayRedisCLI(t *testing.T) {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatal("redis-cli not found in PATH: run `make test` (it installs it) or `apt-get install -y redis-tools`")
	}
	up := testRedis(t)
	ctx := testCtx(t)
	direct := directDB(t, up, gatewayCLIDB)
	file := tenantsFile(t, []gwTenant{{id: "acme", password: "acme-secret"}, {id: "beta", password: "beta-secret"}}, nil)
	_, addr := startGateway(t, up, file, func(c *GatewayConfig) { c.Server.Upstream.DB = gatewayCLIDB })
	host, port, _ := strings.Cut(addr, ":")

	// run runs redis-cli with args after the address, and env added to
	// its environment; it returns stdout and stderr.
	run := func(env []string, args ...string) (string, string) {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(rctx, cli, append([]string{"-h", host, "-p", port}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if rctx.Err() != nil {
			t.Fatalf("redis-cli %q did not finish: %v", args, rctx.Err())
		}
		t.Logf("redis-cli %q: exit %v, stdout %q, stderr %q", args, err, stdout.String(), stderr.String())
		return stdout.String(), stderr.String()
	}
	acme := []string{"--user", "acme", "--pass", "acme-secret", "--no-auth-warning"}
	beta := []string{"--user", "beta", "--pass", "beta-secret", "--no-auth-warning"}

	if out, _ := run(nil, append(acme, "SET", "greeting", "hello from acme")...); out != "OK\n" {
		t.Errorf("SET as acme: %q", out)
	}
	if out, _ := run(nil, append(acme, "SET", "counter", "41")...); out != "OK\n" {
		t.Errorf("SET as acme: %q", out)
	}
	if out, _ := run(nil, append(beta, "SET", "greeting", "hello from beta")...); out != "OK\n" {
		t.Errorf("SET as beta: %q", out)
	}
	if out, _ := run(nil, append(acme, "GET", "greeting")...); out != "hello from acme\n" {
		t.Errorf("GET as acme: %q", out)
	}
	if out, _ := run(nil, append(beta, "KEYS", "*")...); out != "greeting\n" {
		t.Errorf("KEYS * as beta (its one key, unprefixed): %q", out)
	}
	// RESP3, and the password from the environment instead of the command line.
	if out, _ := run([]string{"REDISCLI_AUTH=acme-secret"}, "-3", "--user", "acme", "INCR", "counter"); out != "42\n" {
		t.Errorf("INCR as acme over RESP3 with REDISCLI_AUTH: %q", out)
	}
	// A URL with the credentials, as the redis://acme:secret@host.
	if out, _ := run(nil, "-u", "redis://acme:acme-secret@"+addr, "--no-auth-warning", "KEYS", "*"); !equalLines(out, "counter", "greeting") {
		t.Errorf("KEYS * as acme by URL: %q", out)
	}

	// A wrong password: redis-cli reports Redis's WRONGPASS, and the command
	// that follows is refused before AUTH.
	out, stderr := run(nil, "--user", "acme", "--pass", "beta-secret", "--no-auth-warning", "SET", "greeting", "overwritten")
	if !strings.Contains(stderr, "AUTH failed: WRONGPASS invalid username-password pair or user is disabled.") {
		t.Errorf("redis-cli with a wrong password: stderr %q, want the WRONGPASS error", stderr)
	}
	if !strings.Contains(out, "NOAUTH Authentication required.") {
		t.Errorf("the command after a failed AUTH: %q, want NOAUTH", out)
	}
	_, stderr = run(nil, "--user", "nobody", "--pass", "acme-secret", "--no-auth-warning", "PING")
	if !strings.Contains(stderr, "AUTH failed: WRONGPASS invalid username-password pair or user is disabled.") {
		t.Errorf("redis-cli as an unknown tenant: stderr %q, want the WRONGPASS error", stderr)
	}

	// Upstream: each tenant's keys under its own prefix, nothing else.
	keys, err := direct.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if !equalLines(strings.Join(keys, "\n"), "tenant:acme:counter", "tenant:acme:greeting", "tenant:beta:greeting") {
		t.Errorf("upstream keys: %q", keys)
	}
	if v, _ := direct.Get(ctx, "tenant:acme:greeting").Result(); v != "hello from acme" {
		t.Errorf("upstream tenant:acme:greeting = %q", v)
	}
	if v, _ := direct.Get(ctx, "tenant:acme:counter").Result(); v != strconv.Itoa(42) {
		t.Errorf("upstream tenant:acme:counter = %q", v)
	}
}

// equalLines reports whether text's lines are want, in any order.
func equalLines(text string, want ...string) bool {
	got := strings.Fields(text)
	if len(got) != len(want) {
		return false
	}
	seen := map[string]bool{}
	for _, g := range got {
		seen[g] = true
	}
	for _, w := range want {
		if !seen[w] {
			return false
		}
	}
	return true
}

// Many tenants' connections through one gateway all work and stay apart:
// 2,000 connections spread over 100 tenants, all open at once, each
// authenticated as its tenant; every connection's commands land in its own
// tenant's namespace, and each tenant counts and lists only its own
// connections. (bench/cmd/loadgen -mode gateway-conns does 10,000 and
// measures memory and time; this test proves correctness at a size -race
// runs comfortably.)
func TestGatewayManyTenants(t *testing.T) {
	const (
		nTenants  = 100
		perTenant = 20
		nConns    = nTenants * perTenant
		dialers   = 32
	)
	up := testRedis(t)
	ctx := testCtx(t)
	direct := directDB(t, up, gatewayManyDB)
	if err := direct.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	id := func(i int) string { return fmt.Sprintf("many-%03d", i) }
	var list []gwTenant
	for i := range nTenants {
		list = append(list, gwTenant{id: id(i), password: "pw-" + id(i)})
	}
	g, addr := startGateway(t, up, tenantsFile(t, list, nil), func(c *GatewayConfig) { c.Server.Upstream.DB = gatewayManyDB })

	// Connection j belongs to tenant j % nTenants and is that tenant's
	// (j / nTenants)-th.
	conns := make([]*rawConn, nConns)
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.nc.Close()
			}
		}
	})
	// each runs f for every connection on dialers goroutines and returns
	// the first error.
	each := func(f func(j int) error) error {
		var next sync.Mutex
		n := 0
		var errs []error
		var wg sync.WaitGroup
		for range dialers {
			wg.Go(func() {
				for {
					next.Lock()
					j := n
					n++
					next.Unlock()
					if j >= nConns {
						return
					}
					if err := f(j); err != nil {
						next.Lock()
						errs = append(errs, fmt.Errorf("connection %d (tenant %s): %w", j, id(j%nTenants), err))
						n = nConns // stop early: one broken connection says enough
						next.Unlock()
						return
					}
				}
			})
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	expect := func(c *rawConn, want string, args ...string) error {
		got, err := c.doE(args...)
		if err != nil {
			return fmt.Errorf("%q: %w", args, err)
		}
		if string(got) != want {
			return fmt.Errorf("%q: %q, want %q", args, got, want)
		}
		return nil
	}

	// Open every connection, authenticate it and count it in its tenant.
	err := each(func(j int) error {
		nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		c := &rawConn{nc: nc, br: bufio.NewReaderSize(nc, 16)}
		conns[j] = c
		tn := id(j % nTenants)
		if err := expect(c, "+OK\r\n", "AUTH", tn, "pw-"+tn); err != nil {
			return err
		}
		_, err = c.doE("INCR", "conns")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	st := g.Stats()
	t.Logf("gateway with all connections open: %+v", st)
	if st.Clients != nConns || st.Lobby != 0 || st.Tenants != nTenants || st.AuthFailed != 0 {
		t.Errorf("gateway stats %+v: want %d clients, none in the lobby, %d tenants, no AUTH refused", st, nConns, nTenants)
	}

	// With all of them open, every connection writes a key of its own and
	// reads its tenant's count, pipelined.
	err = each(func(j int) error {
		c := conns[j]
		name := "conn:" + strconv.Itoa(j/nTenants)
		req := encode(nil, "SET", name, id(j%nTenants))
		req = encode(req, "GET", "conns")
		if err := c.writeE(req); err != nil {
			return err
		}
		count := strconv.Itoa(perTenant)
		for _, want := range []string{"+OK\r\n", "$" + strconv.Itoa(len(count)) + "\r\n" + count + "\r\n"} {
			got, err := c.readE()
			if err != nil {
				return err
			}
			if string(got) != want {
				return fmt.Errorf("pipelined SET, GET conns: %q, want %q", got, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Each tenant sees its own keys and connections only.
	dbsize := ":" + strconv.Itoa(perTenant+1) + "\r\n" // its conn:<n> keys and conns
	for i := range nTenants {
		c := conns[i]
		if err := expect(c, dbsize, "DBSIZE"); err != nil {
			t.Errorf("tenant %s: %v", id(i), err)
		}
		list, err := c.doE("CLIENT", "LIST")
		if err != nil {
			t.Fatalf("tenant %s: CLIENT LIST: %v", id(i), err)
		}
		if n := strings.Count(string(list), "id="); n != perTenant {
			t.Errorf("tenant %s: CLIENT LIST shows %d connections, want its own %d", id(i), n, perTenant)
		}
	}

	// Upstream: exactly each tenant's keys, under its prefix, with its values.
	var cursor uint64
	perPrefix := map[string]int{}
	for range nConns { // bounded: ~2,100 keys, 500 a page
		keys, next, err := direct.Scan(ctx, cursor, "*", 500).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			rest, ok := strings.CutPrefix(k, "tenant:")
			tn, name, ok2 := strings.Cut(rest, ":")
			if !ok || !ok2 || !strings.HasPrefix(tn, "many-") {
				t.Errorf("upstream key %q is outside every tenant's namespace", k)
				continue
			}
			perPrefix[tn]++
			if strings.HasPrefix(name, "conn:") {
				if v, err := direct.Get(ctx, k).Result(); err != nil || v != tn {
					t.Errorf("upstream %s = %q, %v: written by another tenant", k, v, err)
				}
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	if len(perPrefix) != nTenants {
		t.Errorf("upstream holds keys of %d tenants, want %d", len(perPrefix), nTenants)
	}
	for tn, n := range perPrefix {
		if n != perTenant+1 {
			t.Errorf("tenant %s has %d keys upstream, want %d", tn, n, perTenant+1)
		}
	}
	t.Logf("%d connections over %d tenants: every one authenticated, counted and wrote in its own tenant only", nConns, nTenants)
}
