package main

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/keyfence/keyfence/proxy/tenants"
)

// The tenants file loadgen writes is one keyfence accepts, with argon2id
// hashes of the tenants' passwords and the flooding tenant's quota.
func TestTenantsYAML(t *testing.T) {
	a, err := newGatewayTenant("steady")
	if err != nil {
		t.Fatal(err)
	}
	b, err := newGatewayTenant("flood")
	if err != nil {
		t.Fatal(err)
	}
	b.MaxOps = 2000
	if a.Password == b.Password || len(a.Password) != 32 {
		t.Fatalf("passwords %q and %q: want two random 16-byte hex strings", a.Password, b.Password)
	}
	yml, err := tenantsYAML([]gatewayTenant{a, b})
	if err != nil {
		t.Fatal(err)
	}
	f, err := tenants.Parse(yml, func(string) (string, bool) { return "", false }, func(string) ([]byte, error) { return nil, errors.New("none") })
	if err != nil {
		t.Fatalf("%v\n%s", err, yml)
	}
	for _, want := range []gatewayTenant{a, b} {
		got, ok := f.Lookup(want.ID)
		switch {
		case !ok:
			t.Fatalf("tenant %s missing:\n%s", want.ID, yml)
		case !strings.HasPrefix(got.PasswordHash, "$argon2id$"):
			t.Errorf("tenant %s: hash %q, want argon2id", want.ID, got.PasswordHash)
		case !tenants.VerifyPassword(got.PasswordHash, []byte(want.Password)):
			t.Errorf("tenant %s: its password does not verify", want.ID)
		case got.Limits.MaxOpsPerSecond != want.MaxOps:
			t.Errorf("tenant %s: max_ops_per_second %v, want %v", want.ID, got.Limits.MaxOpsPerSecond, want.MaxOps)
		}
	}
	if strings.Contains(string(yml), a.Password) {
		t.Error("the file holds a password in clear")
	}
}

func TestGatewayFlags(t *testing.T) {
	c, err := parseFlags([]string{"-mode", "gateway-conns"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.tenants != 100 || c.idleConns != 10000 || c.rounds != 3 {
		t.Errorf("gateway-conns defaults: %d tenants, %d conns, %d rounds; want 100, 10000, 3", c.tenants, c.idleConns, c.rounds)
	}
	for _, bad := range [][]string{
		{"-mode", "gateway-conns", "-targets", "127.0.0.1:6380"},
		{"-mode", "gateway-conns", "-tenants", "200", "-conns", "100"},
		{"-mode", "gateway-quota", "-pipeline", "0"},
		{"-mode", "gateway"},
	} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("parseFlags(%q): want an error", bad)
		}
	}
}
