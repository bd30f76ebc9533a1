package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/proxy/tenants"
)

// keyfence --tenants-file as a process: clients pick their tenant with
// AUTH, the metrics carry each tenant's series and the refused AUTHs, a
// SIGHUP with a bad file keeps the old one, and one that removes a tenant
// disconnects that tenant's clients and nobody else's.
func TestGatewayProcess(t *testing.T) {
	up := redistest.StartT(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	hash := func(pw string) string {
		h, err := tenants.HashPassword([]byte(pw))
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "tenants.yaml")
	good := "tenants:\n" +
		"  - id: acme\n    password_hash: \"" + hash("acme-pw") + "\"\n" +
		"  - id: beta\n    password_hash: \"" + hash("beta-pw") + "\"\n"
	write := func(content string) {
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(good)
	kf := startKeyfence(t, ctx, []string{"--tenants-file", file, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
		"--log-format", "json", "--redis-host", up.Host(), "--redis-port", strings.TrimPrefix(up.Addr(), up.Host()+":")})
	client := func(user, pw string) *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: kf.addr, Username: user, Password: pw, Protocol: 2, DisableIdentity: true, MaxRetries: -1, PoolSize: 1})
		t.Cleanup(func() { c.Close() })
		return c
	}
	acme, beta := client("acme", "acme-pw"), client("beta", "beta-pw")
	if err := acme.Set(ctx, "k", "a", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := beta.Set(ctx, "k", "b", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if keys := up.Client().Keys(ctx, "*").Val(); len(keys) != 2 || !strings.HasPrefix(strings.Join(keys, ","), "tenant:") {
		t.Errorf("upstream keys: %q, want tenant:acme:k and tenant:beta:k", keys)
	}
	if err := client("acme", "wrong").Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Errorf("a wrong password: %v", err)
	}
	metrics := scrapeMetrics(t, ctx, "http://"+kf.adminAddr)
	if m := regexp.MustCompile(`keyfence_auth_failures_total\{[^}]*reason="wrong_password"\} (\d+)`).FindStringSubmatch(metrics); m == nil || m[1] == "0" {
		t.Errorf("/metrics: refused AUTHs %q, want at least 1", m)
	}
	for _, want := range []string{`command="set",otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version="",outcome="ok",tenant="acme"} 1`, `tenant="beta"`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// A bad file is rejected and the old one stays.
	write("tenants:\n  - id: acme\n    password_hash: plaintext\n")
	if err := kf.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, func() bool { return strings.Contains(kf.logs.String(), "tenants file rejected") }); err != nil {
		t.Fatalf("no log line for a bad tenants file: %v\n%s", err, kf.logs)
	}
	if v, err := client("acme", "acme-pw").Get(ctx, "k").Result(); err != nil || v != "a" {
		t.Errorf("a new acme client after a rejected reload: %q, %v", v, err)
	}
	// beta removed: its client goes, acme's stays.
	write("tenants:\n  - id: acme\n    password_hash: \"" + hash("acme-pw") + "\"\n")
	if err := kf.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, func() bool { return strings.Contains(kf.logs.String(), "tenants file reloaded") }); err != nil {
		t.Fatalf("no reload: %v\n%s", err, kf.logs)
	}
	if err := beta.Get(ctx, "k").Err(); err == nil {
		t.Error("a removed tenant's client still works")
	}
	if v, err := acme.Get(ctx, "k").Result(); err != nil || v != "a" {
		t.Errorf("acme's client after beta's removal: %q, %v", v, err)
	}
	if err := client("beta", "beta-pw").Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Errorf("AUTH as a removed tenant: %v", err)
	}
}
