package tenants

import (
	"strings"
	"testing"

	"github.com/keyfence/keyfence/rewrite"
)

// To fuzz:
//
//	go test -run '^$' -fuzz '^FuzzParse$' -fuzztime 60s ./proxy/tenants/

// FuzzParse checks that whatever a tenants file says, Parse does not panic,
// refuses in one line, and any File it returns keeps the promises the
// gateway relies on: valid and unique ids found by Lookup, hashes that
// parse within the denial-of-service guard, limits that are not negative
// with a burst wherever there is a rate, and an upstream user that is valid
// and has a password.
func FuzzParse(f *testing.F) {
	h := cheapHash("pw")
	for _, s := range []string{
		"",
		"tenants:\n- id: acme\n  password_hash: '" + h + "'\n",
		"defaults: {max_connections: 10, max_ops_per_second: 100, burst: 5}\ntenants:\n- id: a\n  password_hash: '" + h + "'\n  limits: {max_ops_per_second: 7}\n- id: b\n  password_hash: '" + h + "'\n  upstream: {user: kf-b, password_env: B}\n",
		"tenants:\n- id: a\n  password_hash: '$2b$04$" + strings.Repeat("a", 53) + "'\n  upstream: {user: u, password_file: /pw}\n",
		"x: &a {id: a}\ntenants: [*a, *a]\n",
		"tenants: [{id: a, password_hash: plain}]\n",
		"tenants:\n- id: a\n  limits: {burst: 3}\n",
	} {
		f.Add([]byte(s))
	}
	lookupEnv := func(k string) (string, bool) { return "env-" + k, k != "" && k != "UNSET" }
	readFile := func(p string) ([]byte, error) { return []byte("file-pw\n"), nil }
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse(data, lookupEnv, readFile)
		if err != nil {
			if file != nil {
				t.Fatal("a File with an error")
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "tenants file: ") || strings.ContainsAny(msg, "\r\n") {
				t.Fatalf("error %q: want one line starting with \"tenants file: \"", msg)
			}
			return
		}
		if len(file.Tenants) == 0 {
			t.Fatal("a File without tenants")
		}
		users := map[string]bool{}
		for i := range file.Tenants {
			tn := &file.Tenants[i]
			if !rewrite.ValidTenantID(tn.ID) {
				t.Fatalf("invalid id %q", tn.ID)
			}
			if p, ok := file.Lookup(tn.ID); !ok || p != tn {
				t.Fatalf("Lookup(%q) does not find tenants[%d]: ids are not unique", tn.ID, i)
			}
			if _, err := parseHash(tn.PasswordHash); err != nil {
				t.Fatalf("tenant %q: hash does not parse: %v", tn.ID, err)
			}
			l := tn.Limits
			if l.MaxConnections < 0 || l.MaxOpsPerSecond < 0 || l.Burst < 0 || (l.MaxOpsPerSecond > 0) != (l.Burst > 0) {
				t.Fatalf("tenant %q: limits %+v", tn.ID, l)
			}
			if tn.UpstreamUser != "" {
				if ValidUserName(tn.UpstreamUser) != nil || tn.UpstreamPassword == "" || users[tn.UpstreamUser] {
					t.Fatalf("tenant %q: upstream user %q (password set: %v, shared: %v)", tn.ID, tn.UpstreamUser, tn.UpstreamPassword != "", users[tn.UpstreamUser])
				}
				users[tn.UpstreamUser] = true
			} else if tn.UpstreamPassword != "" {
				t.Fatalf("tenant %q: an upstream password without a user", tn.ID)
			}
		}
		if len(file.byID) != len(file.Tenants) {
			t.Fatalf("%d ids for %d tenants", len(file.byID), len(file.Tenants))
		}
	})
}

// FuzzVerifyPassword checks that no hash string panics VerifyPassword and
// that a hash parseHash refuses never verifies. Hashes that parse but ask
// for real work are only parsed, to keep each input fast.
func FuzzVerifyPassword(f *testing.F) {
	f.Add(cheapHash("pw"), []byte("pw"))
	f.Add(cheapHash("pw"), []byte("wrong"))
	f.Add("$2b$04$"+strings.Repeat("a", 53), []byte("pw"))
	f.Add("$argon2id$v=19$m=8,t=1,p=1$MDEyMzQ1Njc$MDEyMzQ1Njc4OWFiY2RlZg", []byte(""))
	f.Add("plain", []byte("plain"))
	f.Fuzz(func(t *testing.T, hash string, password []byte) {
		h, err := parseHash(hash)
		if err != nil {
			if VerifyPassword(hash, password) {
				t.Fatalf("VerifyPassword(%q) = true for a hash parseHash refuses: %v", hash, err)
			}
			return
		}
		if h.bcryptCost > 6 || h.bcryptCost == 0 && (h.memory > 256 || h.time > 2 || h.threads > 4) {
			return
		}
		VerifyPassword(hash, password)
	})
}
