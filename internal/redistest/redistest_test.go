package redistest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const wantNotFound = "redis-server not found in PATH: run `make test` (it installs it) or `apt-get install -y redis-server`"

func TestTenantUserIsConfinedToItsPrefix(t *testing.T) {
	// DEBUG is enabled so that refusing it is the ACL's doing, not the
	// server's default.
	srv := StartT(t, Options{Args: []string{"--enable-debug-command", "yes"}})
	ctx := t.Context()
	admin := srv.Client()

	for _, kv := range [][2]string{
		{"tenant:acme:k", "acme-value"},
		{"tenant:globex:k", "globex-value"},
		{"unprefixed", "shared-value"},
	} {
		if err := admin.Set(ctx, kv[0], kv[1], 0).Err(); err != nil {
			t.Fatalf("SET %s as default user: %v", kv[0], err)
		}
	}
	if err := admin.RPush(ctx, "tenant:acme:list", 3, 1, 2).Err(); err != nil {
		t.Fatalf("RPUSH: %v", err)
	}
	if err := srv.AddTenantUser(ctx, "acme", "acme-pw", "acme"); err != nil {
		t.Fatalf("AddTenantUser: %v", err)
	}

	acme := srv.UserClient("acme", "acme-pw")
	t.Cleanup(func() { _ = acme.Close() })

	tests := []struct {
		name    string
		cmd     []any
		wantErr string // prefix of the error; "" means the command must succeed
	}{
		{"get own key", []any{"GET", "tenant:acme:k"}, ""},
		{"set own key", []any{"SET", "tenant:acme:new", "1"}, ""},
		{"get other tenant's key", []any{"GET", "tenant:globex:k"}, "NOPERM"},
		{"set other tenant's key", []any{"SET", "tenant:globex:k", "stolen"}, "NOPERM"},
		{"get unprefixed key", []any{"GET", "unprefixed"}, "NOPERM"},
		{"unlink own key", []any{"UNLINK", "tenant:acme:new"}, ""},
		{"unlink other tenant's key", []any{"UNLINK", "tenant:globex:k"}, "NOPERM"},
		{"mixed keys", []any{"MGET", "tenant:acme:k", "tenant:globex:k"}, "NOPERM"},
		{"scan", []any{"SCAN", "0", "MATCH", "tenant:acme:*"}, ""},
		{"keys", []any{"KEYS", "tenant:acme:*"}, "NOPERM"},
		{"info", []any{"INFO", "keyspace"}, ""},
		{"client list", []any{"CLIENT", "LIST"}, ""},
		{"client info", []any{"CLIENT", "INFO"}, ""},
		{"client id", []any{"CLIENT", "ID"}, ""},
		{"client setname", []any{"CLIENT", "SETNAME", "kf"}, ""},
		{"client getname", []any{"CLIENT", "GETNAME"}, ""},
		{"select", []any{"SELECT", "1"}, ""},
		{"ping", []any{"PING"}, ""},
		{"command count", []any{"COMMAND", "COUNT"}, ""},
		{"sort own list", []any{"SORT", "tenant:acme:list"}, ""},
		{"sort_ro own list", []any{"SORT_RO", "tenant:acme:list"}, ""},
		{"sort by pattern", []any{"SORT", "tenant:acme:list", "BY", "tenant:acme:w_*"}, "ERR BY option of SORT denied"},
		{"dump and restore own key", []any{"RESTORE", "tenant:acme:bad", "0", "not-a-payload"}, "ERR DUMP payload"},
		{"publish own channel", []any{"PUBLISH", "tenant:acme:ch", "hi"}, ""},
		{"publish other channel", []any{"PUBLISH", "tenant:globex:ch", "hi"}, "NOPERM"},
		{"eval", []any{"EVAL", "return redis.call('GET', KEYS[1])", "1", "tenant:acme:k"}, "NOPERM"},
		{"flushdb", []any{"FLUSHDB"}, "NOPERM"},
		{"flushall", []any{"FLUSHALL"}, "NOPERM"},
		{"swapdb", []any{"SWAPDB", "0", "1"}, "NOPERM"},
		{"config get", []any{"CONFIG", "GET", "maxmemory"}, "NOPERM"},
		{"client kill", []any{"CLIENT", "KILL", "ID", "1"}, "NOPERM"},
		{"debug", []any{"DEBUG", "SLEEP", "0"}, "NOPERM"},
		{"acl", []any{"ACL", "WHOAMI"}, ""},
		{"acl list", []any{"ACL", "LIST"}, "NOPERM"},
		{"script flush", []any{"SCRIPT", "FLUSH"}, "NOPERM"},
		{"script load", []any{"SCRIPT", "LOAD", "return 1"}, "NOPERM"},
		{"function list", []any{"FUNCTION", "LIST"}, "NOPERM"},
		{"function load", []any{"FUNCTION", "LOAD", "#!lua name=acmelib\nredis.register_function('acme_f', function(keys) return redis.call('GET', 'tenant:globex:k') end)"}, ""},
		// keyfence's sandbox runs scripts as FCALL; what they run is checked
		// against this user.
		{"fcall reaching other key", []any{"FCALL", "acme_f", "0"}, "ERR The user executing the script can't access"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A connection of its own, so that SELECT or SETNAME in one case
			// cannot leak into the next through the pool.
			conn := acme.Conn()
			defer conn.Close()
			err := conn.Do(ctx, tc.cmd...).Err()
			if errors.Is(err, redis.Nil) {
				err = nil
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("%v: want success, got %v", tc.cmd, err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("%v: want error %q..., got success", tc.cmd, tc.wantErr)
			case tc.wantErr != "" && !strings.HasPrefix(err.Error(), tc.wantErr):
				t.Fatalf("%v: want error %q..., got %v", tc.cmd, tc.wantErr, err)
			}
		})
	}

	// Nothing the tenant tried reached the other tenant's data.
	if got, err := admin.Get(ctx, "tenant:globex:k").Result(); err != nil || got != "globex-value" {
		t.Fatalf("tenant:globex:k = %q, %v; want globex-value", got, err)
	}
}

func TestPsubscribeMatchesChannelRulesLiterally(t *testing.T) {
	// Documents a Redis ACL limit that keyfence has to live with (see
	// tenantCommandRules): only the literal pattern of the channel rule passes.
	srv := StartT(t, Options{})
	ctx := t.Context()
	if err := srv.AddTenantUser(ctx, "acme", "pw", "acme"); err != nil {
		t.Fatal(err)
	}
	acme := srv.UserClient("acme", "pw")
	defer acme.Close()
	for _, tc := range []struct {
		pattern string
		wantErr bool
	}{
		{"tenant:acme:*", false},
		{"tenant:acme:news.*", true},
		{"tenant:globex:*", true},
	} {
		ps := acme.PSubscribe(ctx, tc.pattern)
		_, err := ps.Receive(ctx)
		_ = ps.Close()
		if gotErr := err != nil; gotErr != tc.wantErr {
			t.Errorf("PSUBSCRIBE %s: err = %v, want error: %v", tc.pattern, err, tc.wantErr)
		}
	}
}

func TestTenantACLRules(t *testing.T) {
	for _, tc := range []struct {
		tenant  string
		wantErr bool
	}{
		{"acme", false},
		{"Acme_2-prod", false},
		{strings.Repeat("a", 64), false},
		{"", true},
		{strings.Repeat("a", 65), true},
		{"a*b", true},
		{"a{b}", true},
		{"a:b", true},
	} {
		rules, err := TenantACLRules(tc.tenant)
		if gotErr := err != nil; gotErr != tc.wantErr {
			t.Errorf("TenantACLRules(%q): err = %v, want error: %v", tc.tenant, err, tc.wantErr)
			continue
		}
		if err == nil && (rules[0] != "reset" || rules[1] != "~tenant:"+tc.tenant+":*" || rules[2] != "&tenant:"+tc.tenant+":*") {
			t.Errorf("TenantACLRules(%q) starts with %q", tc.tenant, rules[:3])
		}
	}
	for _, r := range append(tenantCommandRules, setinfoRule) {
		if r.why == "" {
			t.Errorf("rule %s has no reason", r.rule)
		}
	}
}

func TestStartWithoutRedisServerFailsWithInstallHint(t *testing.T) {
	t.Setenv("PATH", t.TempDir())

	_, err := Start(t.Context(), Options{})
	if !errors.Is(err, ErrNotFound) || err.Error() != wantNotFound {
		t.Fatalf("Start: err = %v, want %q", err, wantNotFound)
	}

	// StartT must fail the test with exactly that message, never skip.
	ft := &fatalTB{ctx: t.Context()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		StartT(ft, Options{})
	}()
	<-done
	if ft.msg != wantNotFound {
		t.Fatalf("StartT: Fatal(%q), want Fatal(%q)", ft.msg, wantNotFound)
	}
}

func TestOptionsArgsAndPassword(t *testing.T) {
	srv := StartT(t, Options{Args: []string{"--maxmemory", "12mb"}, Password: "s3cret"})
	ctx := t.Context()

	got, err := srv.Client().ConfigGet(ctx, "maxmemory").Result()
	if err != nil {
		t.Fatalf("CONFIG GET with password: %v", err)
	}
	if got["maxmemory"] != "12582912" {
		t.Fatalf("maxmemory = %q, want 12582912", got["maxmemory"])
	}
	anon := redis.NewClient(&redis.Options{Addr: srv.Addr(), DisableIdentity: true, Protocol: 2})
	defer anon.Close()
	if err := anon.Ping(ctx).Err(); err == nil || !strings.HasPrefix(err.Error(), "NOAUTH") {
		t.Fatalf("PING without password: err = %v, want NOAUTH", err)
	}
	if srv.Version() == "" || srv.Host() != "127.0.0.1" || srv.Port() == 0 ||
		srv.Addr() != fmt.Sprintf("127.0.0.1:%d", srv.Port()) {
		t.Fatalf("version %q host %q port %d addr %q", srv.Version(), srv.Host(), srv.Port(), srv.Addr())
	}
}

func TestStopKillsServerAndRemovesDir(t *testing.T) {
	srv, err := Start(t.Context(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(srv.Dir()); err != nil {
		t.Fatalf("server dir: %v", err)
	}
	if err := srv.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := os.Stat(srv.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("server dir after Stop: %v, want it gone", err)
	}
	if c, err := net.DialTimeout("tcp", srv.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after Stop", srv.Addr())
	}
	if err := srv.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := srv.Restart(t.Context()); err == nil {
		t.Fatal("Restart after Stop succeeded")
	}
}

func TestKillAndRestartKeepThePort(t *testing.T) {
	srv := StartT(t, Options{})
	ctx := t.Context()
	if err := srv.Client().Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	probe := redis.NewClient(&redis.Options{Addr: srv.Addr(), DisableIdentity: true, MaxRetries: -1})
	defer probe.Close()
	if err := probe.Ping(ctx).Err(); err == nil {
		t.Fatal("PING answered after Kill")
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if err := probe.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
	if n, err := srv.Client().Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS k after Restart = %d, %v; want 0 (nothing persists)", n, err)
	}
}

func TestConcurrentStartsGetDistinctServers(t *testing.T) {
	const n = 4
	addrs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			srv, err := Start(t.Context(), Options{})
			if err != nil {
				errs[i] = err
				return
			}
			t.Cleanup(func() { _ = srv.Stop() })
			addrs[i] = srv.Addr()
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		if a == "" || seen[a] {
			t.Fatalf("addresses %v: want %d distinct", addrs, n)
		}
		seen[a] = true
	}
}

func TestLostPortRaceIsRecognised(t *testing.T) {
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(ErrNotFound)
	}
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	other := StartT(t, Options{})

	for _, tc := range []struct {
		name string
		port int
	}{
		{"taken by a plain listener", plain.Addr().(*net.TCPAddr).Port},
		// PING may reach the other server before ours fails to bind: the
		// process_id check must catch that.
		{"taken by another redis-server", other.Port()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := startOnce(t.Context(), path, tc.port, Options{}, slog.New(slog.DiscardHandler))
			if err == nil {
				_ = s.Stop()
				t.Fatal("start on a taken port succeeded")
			}
			if !errors.Is(err, errPortInUse) {
				t.Fatalf("err = %v, want errPortInUse", err)
			}
		})
	}
	if err := other.Client().Ping(t.Context()).Err(); err != nil {
		t.Fatalf("the other server was harmed: %v", err)
	}
}

func TestFreePort(t *testing.T) {
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("port %d from FreePort is not free: %v", port, err)
	}
	l.Close()
}

// fatalTB records the message of Fatal and ends the goroutine, as testing.T
// does, so that StartT's failure path can be checked without failing a test.
type fatalTB struct {
	testing.TB
	ctx context.Context
	msg string
}

func (f *fatalTB) Helper()                  {}
func (f *fatalTB) Context() context.Context { return f.ctx }
func (f *fatalTB) Fatal(args ...any) {
	f.msg = fmt.Sprint(args...)
	runtime.Goexit()
}
