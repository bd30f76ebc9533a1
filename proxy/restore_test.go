package proxy

import (
	"strings"
	"testing"

	"github.com/keyfence/keyfence/internal/redistest"
)

const (
	refusedNotSanitized = "-ERR keyfence: RESTORE is refused because upstream does not sanitize DUMP payloads, and a crafted one can crash it: set sanitize-dump-payload yes on Redis\r\n"
	refusedUnknown      = "-ERR keyfence: RESTORE is refused because keyfence may not read sanitize-dump-payload upstream (CONFIG GET is refused): set sanitize-dump-payload yes on Redis and start keyfence with --assume-restore-sanitized\r\n"
	refusedSkipUser     = "-ERR keyfence: RESTORE is refused because upstream skips payload sanitizing for keyfence's user: remove skip-sanitize-payload from that ACL user, or set sanitize-dump-payload yes on Redis\r\n"
)

// TestRestoreOnlyWhenSanitized: RESTORE (alone and inside MULTI) reaches
// Redis only when Redis sanitizes DUMP payloads for keyfence's connection,
// as Redis itself answers CONFIG GET sanitize-dump-payload; when keyfence
// may not ask, only --assume-restore-sanitized lets it through. DUMP works
// everywhere.
func TestRestoreOnlyWhenSanitized(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		sanitize string // sanitize-dump-payload of the server
		user     string // ACL rules of keyfence's upstream user; "" default user, "tenant" the tenant user
		assume   bool   // --assume-restore-sanitized
		refusal  string // "" when RESTORE is forwarded
	}{
		{name: "no", sanitize: "no", refusal: refusedNotSanitized},
		{name: "no, even when assumed", sanitize: "no", assume: true, refusal: refusedNotSanitized},
		{name: "yes", sanitize: "yes"},
		{name: "clients", sanitize: "clients"},
		{name: "clients, user skips sanitizing", sanitize: "clients", user: "~* &* +@all skip-sanitize-payload", refusal: refusedSkipUser},
		{name: "clients, user with sanitize-payload", sanitize: "clients", user: "~* &* +@all sanitize-payload"},
		{name: "yes, CONFIG refused", sanitize: "yes", user: "tenant", refusal: refusedUnknown},
		{name: "yes, CONFIG refused, assumed", sanitize: "yes", user: "tenant", assume: true},
		{name: "no, CONFIG refused, assumed", sanitize: "no", user: "~* &* +@all -config", assume: true}, // the operator's word is all keyfence has
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := redistest.StartT(t, redistest.Options{Args: []string{"--sanitize-dump-payload", tt.sanitize}})
			ctx := testCtx(t)
			addr := startProxy(t, srv, func(c *Config) {
				c.Tenant = "r"
				c.Upstream.AssumeRestoreSanitized = tt.assume
				switch tt.user {
				case "":
				case "tenant":
					if err := srv.AddTenantUser(ctx, "kf", "pw", "r"); err != nil {
						t.Fatal(err)
					}
					c.Upstream.Username, c.Upstream.Password = "kf", "pw"
				default:
					args := []any{"ACL", "SETUSER", "kf", "reset", "on", ">pw"}
					for _, r := range strings.Fields(tt.user) {
						args = append(args, r)
					}
					if err := srv.Client().Do(ctx, args...).Err(); err != nil {
						t.Fatal(err)
					}
					c.Upstream.Username, c.Upstream.Password = "kf", "pw"
				}
			})
			for _, resp := range []string{"2", "3"} {
				c := dialRaw(t, addr)
				expect(t, c, "+OK\r\n", "SET", "src", "value-"+resp)
				if resp == "3" {
					c.do(t, "HELLO", "3")
				}
				dump := mustRV(t, c.do(t, "DUMP", "src"))
				if dump.typ != '$' || dump.null {
					t.Fatalf("RESP%s DUMP: %v", resp, dump)
				}
				if tt.refusal != "" {
					expect(t, c, tt.refusal, "RESTORE", "dst", "0", dump.str)
					expect(t, c, "+OK\r\n", "MULTI")
					expect(t, c, tt.refusal, "RESTORE", "dst", "0", dump.str)
					expect(t, c, "-EXECABORT Transaction discarded because of previous errors.\r\n", "EXEC")
					if n, err := srv.Client().Exists(ctx, "tenant:r:dst").Result(); err != nil || n != 0 {
						t.Errorf("RESP%s: upstream holds the refused key: %d, %v", resp, n, err)
					}
					continue
				}
				expect(t, c, "+OK\r\n", "RESTORE", "dst", "0", dump.str, "REPLACE")
				expect(t, c, bulk("value-"+resp), "GET", "dst")
				expect(t, c, "+OK\r\n", "MULTI")
				expect(t, c, "+QUEUED\r\n", "RESTORE", "dst2", "0", dump.str, "REPLACE")
				expect(t, c, "+QUEUED\r\n", "GET", "dst2")
				expect(t, c, arr("+OK\r\n", bulk("value-"+resp)), "EXEC")
				// A payload Redis cannot verify is Redis's own error.
				if r := string(c.do(t, "RESTORE", "bad", "0", "garbage")); !strings.HasPrefix(r, "-ERR DUMP payload") {
					t.Errorf("RESP%s: RESTORE of garbage: %q", resp, r)
				}
			}
		})
	}
}

// TestRestoreCheckedAgainAfterReconnect: the answer is kept per upstream
// connection; a new connection (a restart, a failover) asks again, so a
// server that stopped sanitizing is noticed.
func TestRestoreCheckedAgainAfterReconnect(t *testing.T) {
	t.Parallel()
	srv := redistest.StartT(t, redistest.Options{Args: []string{"--sanitize-dump-payload", "yes"}})
	ctx := testCtx(t)
	c := dialRaw(t, startProxy(t, srv, func(c *Config) { c.Tenant = "r" }))
	expect(t, c, "+OK\r\n", "SET", "src", "v")
	dump := mustRV(t, c.do(t, "DUMP", "src")).str
	expect(t, c, "+OK\r\n", "RESTORE", "dst", "0", dump)

	admin := srv.Client()
	if err := admin.ConfigSet(ctx, "sanitize-dump-payload", "no").Err(); err != nil {
		t.Fatal(err)
	}
	// The same connection: the answer it gave stands.
	expect(t, c, "+OK\r\n", "RESTORE", "dst", "0", dump, "REPLACE")
	// keyfence's connections dropped: the next command reconnects, and
	// RESTORE asks the server again.
	if err := admin.Do(ctx, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes").Err(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(rawTimeout, func() bool { return string(c.do(t, "GET", "src")) == bulk("v") }) {
		t.Fatal("keyfence did not reconnect")
	}
	expect(t, c, refusedNotSanitized, "RESTORE", "dst", "0", dump, "REPLACE")
}
