package proxy

import (
	"strings"
	"testing"

	"github.com/keyfence/keyfence/internal/redistest"
)

// TestMultiEmulatedOtherTenant: the commands keyfence emulates inside a
// transaction (DBSIZE, KEYS, RANDOMKEY, INFO keyspace, FLUSHDB, FLUSHALL,
// also after a SELECT queued before them) see and touch the tenant's own
// keys only, while another tenant's keys share every database with them.
// The upstream user is unrestricted: keyfence itself is the fence.
func TestMultiEmulatedOtherTenant(t *testing.T) {
	t.Parallel()
	up := redistest.StartT(t, redistest.Options{})
	a := dialRaw(t, startProxy(t, up, func(c *Config) { c.Tenant = "ma" }))
	b := dialRaw(t, startProxy(t, up, func(c *Config) { c.Tenant = "mb" }))
	for _, db := range []string{"0", "2"} {
		expect(t, b, "+OK\r\n", "SELECT", db)
		for _, k := range []string{"b1", "b2", "b3"} {
			expect(t, b, "+OK\r\n", "SET", k, "beta")
		}
	}
	expect(t, b, "+OK\r\n", "SELECT", "0")
	expect(t, a, "+OK\r\n", "SET", "a1", "alpha")

	for _, args := range [][]string{{"MULTI"}, {"DBSIZE"}, {"KEYS", "*"}, {"RANDOMKEY"}, {"INFO", "keyspace"},
		{"SELECT", "2"}, {"DBSIZE"}, {"KEYS", "*"}, {"SET", "a2", "alpha"}, {"FLUSHDB"}, {"SELECT", "0"}, {"FLUSHALL"}, {"DBSIZE"}} {
		r := string(a.do(t, args...))
		if want := "+QUEUED\r\n"; args[0] != "MULTI" && r != want {
			t.Fatalf("%q: %q, want %q", args, r, want)
		}
	}
	v := mustRV(t, a.do(t, "EXEC"))
	if len(v.elems) != 12 {
		t.Fatalf("EXEC: %d replies, want 12: %+v", len(v.elems), v)
	}
	got := func(i int) string {
		e := v.elems[i]
		return string(e.typ) + e.str + strings.Join(e.strs(), ",")
	}
	for i, want := range []string{":1", "*a1", "$a1", "", "+OK", ":0", "*", "+OK", "+OK", "+OK", "+OK", ":0"} {
		if i == 3 {
			if ks := v.elems[3].str; !strings.Contains(ks, "db0:keys=1,") || strings.Count(ks, "keys=") != 1 {
				t.Errorf("INFO keyspace inside MULTI: %q, want only the tenant's db0:keys=1", ks)
			}
			continue
		}
		if got(i) != want {
			t.Errorf("EXEC reply %d: %q, want %q", i, got(i), want)
		}
	}
	// Tenant b's keys are all still there, in both databases.
	for _, db := range []string{"0", "2"} {
		expect(t, b, "+OK\r\n", "SELECT", db)
		expect(t, b, ":3\r\n", "DBSIZE")
	}
	expect(t, a, ":0\r\n", "DBSIZE")
}
