package tenants

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// cheapHash is a well-formed argon2id hash of pw with the smallest
// parameters, so that tests that only parse hashes do not pay 19 MiB each.
func cheapHash(pw string) string {
	salt := []byte("0123456789abcdef")
	return parsedHash{memory: 8, time: 1, threads: 1, salt: salt, key: argon2.IDKey([]byte(pw), salt, 1, 8, 1, 32)}.String()
}

// bcryptHash is a bcrypt hash of pw at the lowest cost.
func bcryptHash(t testing.TB, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// env and files stand in for the environment and the file system.
func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func files(m map[string]string) func(string) ([]byte, error) {
	return func(p string) ([]byte, error) {
		v, ok := m[p]
		if !ok {
			return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
		}
		return []byte(v), nil
	}
}

func TestParseGoodFile(t *testing.T) {
	acmeHash, betaHash, gammaHash := cheapHash("acme-pw"), bcryptHash(t, "beta-pw"), cheapHash("gamma-pw")
	data := fmt.Sprintf(`
defaults:
  max_connections: 1000
  max_ops_per_second: 5000
  burst: 100
tenants:
  - id: acme
    password_hash: "%s"
    upstream:
      user: keyfence-acme
      password_env: ACME_REDIS_PASSWORD
    limits:
      max_connections: 200
      max_ops_per_second: 1000
  - id: beta
    password_hash: '%s'
    upstream:
      user: keyfence-beta
      password_file: /run/secrets/beta
    limits:
      burst: 7
  - id: Gamma_3-x
    password_hash: %s
    limits:
      max_connections: 0
      max_ops_per_second: 0
  - id: "0042"
    password_hash: %s
    limits:
      max_ops_per_second: 2.5
`, acmeHash, betaHash, gammaHash, gammaHash)
	f, err := Parse([]byte(data), env(map[string]string{"ACME_REDIS_PASSWORD": "acme-upstream"}),
		files(map[string]string{"/run/secrets/beta": "beta-upstream\r\n"}))
	if err != nil {
		t.Fatal(err)
	}
	want := []Tenant{
		{ID: "acme", PasswordHash: acmeHash, UpstreamUser: "keyfence-acme", UpstreamPassword: "acme-upstream",
			// Its own rate: its burst is a tenth of it, not the defaults' 100.
			Limits: Limits{MaxConnections: 200, MaxOpsPerSecond: 1000, Burst: 100}},
		{ID: "beta", PasswordHash: betaHash, UpstreamUser: "keyfence-beta", UpstreamPassword: "beta-upstream",
			Limits: Limits{MaxConnections: 1000, MaxOpsPerSecond: 5000, Burst: 7}},
		{ID: "Gamma_3-x", PasswordHash: gammaHash, Limits: Limits{}}, // explicit 0: unlimited, whatever the defaults
		{ID: "0042", PasswordHash: gammaHash, Limits: Limits{MaxConnections: 1000, MaxOpsPerSecond: 2.5, Burst: 1}},
	}
	if len(f.Tenants) != len(want) {
		t.Fatalf("%d tenants, want %d", len(f.Tenants), len(want))
	}
	for i, w := range want {
		if g := f.Tenants[i]; g != w {
			t.Errorf("tenants[%d] = %s\n  want %s", i, dump(g), dump(w))
		}
		if p, ok := f.Lookup(w.ID); !ok || p != &f.Tenants[i] {
			t.Errorf("Lookup(%q) = %v, %v", w.ID, p, ok)
		}
	}
	if _, ok := f.Lookup("ACME"); ok {
		t.Error("Lookup is case-insensitive: ids are not")
	}

	// The defaults' burst goes with the defaults' rate.
	f, err = Parse([]byte("defaults: {max_ops_per_second: 5000, burst: 100}\ntenants: [{id: a, password_hash: '"+acmeHash+"'}]"), env(nil), files(nil))
	if err != nil {
		t.Fatal(err)
	}
	if l := f.Tenants[0].Limits; l != (Limits{MaxOpsPerSecond: 5000, Burst: 100}) {
		t.Errorf("inherited limits %+v", l)
	}
	// Without defaults and limits: unlimited. Empty documents around the
	// file's one are ignored.
	f, err = Parse([]byte("---\n---\ntenants:\n- id: a\n  password_hash: '"+acmeHash+"'\n---\n...\n"), env(nil), files(nil))
	if err != nil {
		t.Fatal(err)
	}
	if l := f.Tenants[0].Limits; l != (Limits{}) {
		t.Errorf("no limits: %+v", l)
	}
}

// dump shows every field of a tenant, secrets included (String hides them).
func dump(t Tenant) string {
	return fmt.Sprintf("{%s %q %s %q %+v}", t.ID, t.PasswordHash, t.UpstreamUser, t.UpstreamPassword, t.Limits)
}

func TestDefaultBurst(t *testing.T) {
	for ops, want := range map[float64]int{0.5: 1, 5: 1, 10: 1, 11: 2, 1000: 100, 5000: 500, 1e9: 1e8} {
		if got := defaultBurst(ops); got != want {
			t.Errorf("defaultBurst(%g) = %d, want %d", ops, got, want)
		}
	}
}

// A relative password_file is read next to the tenants file.
func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "acme.pw"), []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "tenants.yaml")
	data := "tenants:\n- id: acme\n  password_hash: '" + cheapHash("x") + "'\n  upstream: {user: u-acme, password_file: acme.pw}\n"
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir()) // not the tenants file's directory
	f, err := Load(path, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Tenants[0].UpstreamPassword; got != "from-file" {
		t.Errorf("upstream password %q", got)
	}
	_, err = Load(filepath.Join(dir, "missing.yaml"), env(nil))
	if err == nil || !strings.HasPrefix(err.Error(), "tenants file: open ") {
		t.Errorf("missing file: %v", err)
	}
}

func TestParseRefusals(t *testing.T) {
	good := cheapHash("pw")
	tenant := func(extra string) string {
		return "tenants:\n- id: acme\n  password_hash: '" + good + "'\n" + extra
	}
	const plaintext = "hunter2-plaintext"
	tests := []struct {
		name, yaml string
		want       string // the whole error starts with it
	}{
		{"empty file", "", "tenants file: tenants: none"},
		{"no tenants key", "defaults: {max_connections: 1}\n", "tenants file: tenants: none"},
		{"empty tenants", "tenants: []\n", "tenants file: tenants: none"},
		{"tenants not a list", "tenants: {id: acme}\n", "tenants file: tenants: want a list"},
		{"top level not a mapping", "- a\n", "tenants file: top level: want a mapping"},
		{"syntax error", "tenants: [\n", "tenants file: yaml: "},
		{"two documents", tenant("") + "---\n" + tenant(""), "tenants file: more than one YAML document"},
		{"syntax error in a second document", tenant("") + "---\n[\n", "tenants file: yaml: "},
		{"unknown top-level field", "tenant:\n- id: a\n", `tenants file: tenant: unknown field (line 1)`},
		{"unknown tenant field", tenant("  pasword_hash: x\n"), `tenants file: tenant "acme": pasword_hash: unknown field (line 4)`},
		{"unknown upstream field", tenant("  upstream: {user: u, password_env: E, pasword_file: f}\n"), `tenants file: tenant "acme": upstream.pasword_file: unknown field`},
		{"unknown limits field", tenant("  limits: {max_conections: 3}\n"), `tenants file: tenant "acme": limits.max_conections: unknown field`},
		{"unknown defaults field", "defaults: {bust: 3}\n" + tenant(""), `tenants file: defaults.bust: unknown field`},
		{"odd field name", tenant("  \"a\\nb\": 1\n"), `tenants file: tenant "acme": "a\nb": unknown field`},
		{"field twice", tenant("  id: beta\n"), `tenants file: tenants[0]: id: given twice (line 4)`},
		{"tenant not a mapping", "tenants: [acme]\n", "tenants file: tenants[0]: want a mapping"},
		{"missing id", "tenants:\n- password_hash: '" + good + "'\n", "tenants file: tenants[0]: id: missing"},
		{"reserved id", "tenants:\n- id: _overflow\n  password_hash: '" + good + "'\n", `tenants file: tenants[0]: id "_overflow": reserved (the metrics count the tenants past their cap under it)`},
		{"invalid id", "tenants:\n- id: a\n  password_hash: '" + good + "'\n- id: 'a*b'\n", `tenants file: tenants[1]: id "a*b": must match [A-Za-z0-9_-]{1,64}`},
		{"id too long", "tenants:\n- id: " + strings.Repeat("a", 65) + "\n", "tenants file: tenants[0]: id \"aaaa"},
		{"id not a string", "tenants:\n- id: [a]\n", "tenants file: tenants[0]: id: want a string"},
		{"duplicate id", tenant("") + "- id: acme\n  password_hash: '" + good + "'\n", `tenants file: tenant "acme": id: also the id of tenants[0]`},
		{"missing password_hash", "tenants:\n- id: acme\n", `tenants file: tenant "acme": password_hash: missing`},
		{"null password_hash", "tenants:\n- id: acme\n  password_hash:\n", `tenants file: tenant "acme": password_hash: missing`},
		{"plaintext password", "tenants:\n- id: acme\n  password_hash: " + plaintext + "\n",
			`tenants file: tenant "acme": password_hash: not an argon2id or bcrypt hash (a plaintext password is refused; make one with keyfence hash-password)`},
		{"numeric plaintext password", "tenants:\n- id: acme\n  password_hash: 12345678\n", `tenants file: tenant "acme": password_hash: want a string`},
		{"argon2i, not argon2id", "tenants:\n- id: acme\n  password_hash: '" + strings.Replace(good, "argon2id", "argon2i", 1) + "'\n", `tenants file: tenant "acme": password_hash: not an argon2id or bcrypt hash`},
		{"argon2id version 16", "tenants:\n- id: acme\n  password_hash: '" + strings.Replace(good, "v=19", "v=16", 1) + "'\n", `tenants file: tenant "acme": password_hash: argon2id: version`},
		{"argon2id bad salt", "tenants:\n- id: acme\n  password_hash: '" + strings.Replace(good, "$MDEy", "$M!Ey", 1) + "'\n", `tenants file: tenant "acme": password_hash: argon2id: salt`},
		{"argon2id absurd memory", "tenants:\n- id: acme\n  password_hash: '" + strings.Replace(good, "m=8,", "m=1048577,", 1) + "'\n", `tenants file: tenant "acme": password_hash: argon2id: m=1048577: more than`},
		{"argon2id absurd time", "tenants:\n- id: acme\n  password_hash: '" + strings.Replace(good, "t=1,", "t=11,", 1) + "'\n", `tenants file: tenant "acme": password_hash: argon2id: t=11: more than`},
		{"argon2id absurd lanes", "tenants:\n- id: acme\n  password_hash: '" + strings.Replace(good, "m=8,t=1,p=1", "m=1024,t=1,p=17", 1) + "'\n", `tenants file: tenant "acme": password_hash: argon2id: p=17: more than`},
		{"bcrypt absurd cost", "tenants:\n- id: acme\n  password_hash: '$2b$20$" + strings.Repeat("a", 53) + "'\n", `tenants file: tenant "acme": password_hash: bcrypt: cost 20: more than 16`},
		{"bcrypt too short", "tenants:\n- id: acme\n  password_hash: '$2b$10$abc'\n", `tenants file: tenant "acme": password_hash: bcrypt: want`},
		{"upstream without user", tenant("  upstream: {password_env: E}\n"), `tenants file: tenant "acme": upstream.user: missing`},
		{"upstream empty", tenant("  upstream: {}\n"), `tenants file: tenant "acme": upstream.user: missing`},
		{"upstream not a mapping", tenant("  upstream: u\n"), `tenants file: tenant "acme": upstream: want a mapping`},
		{"upstream default user", tenant("  upstream: {user: default, password_env: E}\n"), `tenants file: tenant "acme": upstream.user: "default" is Redis's default user`},
		{"upstream user invalid", tenant("  upstream: {user: 'two words', password_env: E}\n"), `tenants file: tenant "acme": upstream.user: user name "two words": blanks`},
		{"upstream user quote", tenant("  upstream: {user: 'a\"b', password_env: E}\n"), `tenants file: tenant "acme": upstream.user: user name`},
		{"upstream no password", tenant("  upstream: {user: u}\n"), `tenants file: tenant "acme": upstream.password_env or upstream.password_file: set one`},
		{"upstream both passwords", tenant("  upstream: {user: u, password_env: E, password_file: /f}\n"), `tenants file: tenant "acme": upstream.password_env and upstream.password_file: set one`},
		{"upstream env unset", tenant("  upstream: {user: u, password_env: UNSET}\n"), `tenants file: tenant "acme": upstream.password_env: UNSET is not set`},
		{"upstream env empty", tenant("  upstream: {user: u, password_env: EMPTY}\n"), `tenants file: tenant "acme": upstream.password_env: EMPTY is empty`},
		{"upstream file missing", tenant("  upstream: {user: u, password_file: /missing}\n"), `tenants file: tenant "acme": upstream.password_file: open /missing: file does not exist`},
		{"upstream file empty", tenant("  upstream: {user: u, password_file: /empty}\n"), `tenants file: tenant "acme": upstream.password_file /empty: the file is empty`},
		{"upstream file newline only", tenant("  upstream: {user: u, password_file: /newline}\n"), `tenants file: tenant "acme": upstream.password_file /newline: the file is empty`},
		{"upstream file two lines", tenant("  upstream: {user: u, password_file: /two}\n"), `tenants file: tenant "acme": upstream.password_file /two: more than one line`},
		{"upstream user shared", tenant("  upstream: {user: u, password_env: E}\n") + "- id: beta\n  password_hash: '" + good + "'\n  upstream: {user: u, password_env: E}\n",
			`tenants file: tenant "beta": upstream.user: "u" is also tenant "acme"'s`},
		{"negative max_connections", tenant("  limits: {max_connections: -1}\n"), `tenants file: tenant "acme": limits.max_connections: -1: must not be negative`},
		{"negative ops", tenant("  limits: {max_ops_per_second: -0.5}\n"), `tenants file: tenant "acme": limits.max_ops_per_second: -0.5: want 0`},
		{"negative burst", tenant("  limits: {max_ops_per_second: 5, burst: -1}\n"), `tenants file: tenant "acme": limits.burst: -1: must not be negative`},
		{"NaN ops", tenant("  limits: {max_ops_per_second: .nan}\n"), `tenants file: tenant "acme": limits.max_ops_per_second: want a number`},
		{"infinite ops", tenant("  limits: {max_ops_per_second: .inf}\n"), `tenants file: tenant "acme": limits.max_ops_per_second: want a number`},
		{"huge ops", tenant("  limits: {max_ops_per_second: 1e300}\n"), `tenants file: tenant "acme": limits.max_ops_per_second: 1e+300: want 0 (unlimited) to 1e+09`},
		{"fractional connections", tenant("  limits: {max_connections: 1.5}\n"), `tenants file: tenant "acme": limits.max_connections: want a whole number`},
		{"quoted number", tenant("  limits: {max_connections: '10'}\n"), `tenants file: tenant "acme": limits.max_connections: want a whole number`},
		{"limits not a mapping", tenant("  limits: 5\n"), `tenants file: tenant "acme": limits: want a mapping`},
		{"burst without a rate", tenant("  limits: {burst: 5}\n"), `tenants file: tenant "acme": limits.burst: set while max_ops_per_second is 0`},
		{"negative default", "defaults: {max_connections: -3}\n" + tenant(""), `tenants file: defaults.max_connections: -3: must not be negative`},
		{"default burst without a rate", "defaults: {burst: 3}\n" + tenant(""), `tenants file: defaults.burst: set while defaults.max_ops_per_second is 0`},
	}
	fsys := files(map[string]string{"/empty": "", "/newline": "\n", "/two": "a\nb\n"})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse([]byte(tc.yaml), env(map[string]string{"E": "pw", "EMPTY": ""}), fsys)
			if err == nil {
				t.Fatalf("no error, want %q (tenants %v)", tc.want, f.Tenants)
			}
			msg := err.Error()
			t.Log(msg)
			if !strings.HasPrefix(msg, tc.want) {
				t.Fatalf("error\n  %s\nwant it to start with\n  %s", msg, tc.want)
			}
			if strings.ContainsAny(msg, "\r\n") {
				t.Fatalf("error spans lines: %q", msg)
			}
			if strings.Contains(msg, plaintext) || strings.Contains(msg, "12345678") {
				t.Fatalf("error quotes the password: %q", msg)
			}
		})
	}
}

// A Tenant printed or logged by mistake shows no upstream password.
func TestTenantHidesSecrets(t *testing.T) {
	f, err := Parse([]byte("tenants:\n- id: acme\n  password_hash: '"+cheapHash("x")+"'\n  upstream: {user: u, password_env: E}\n"),
		env(map[string]string{"E": "s3cret-upstream"}), files(nil))
	if err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	slog.New(slog.NewJSONHandler(&log, nil)).Info("x", "tenant", f.Tenants[0], "ptr", &f.Tenants[0])
	for _, s := range []string{fmt.Sprint(f), fmt.Sprintf("%+v", *f), fmt.Sprintf("%#v", f.Tenants), fmt.Sprintf("%v", &f.Tenants[0]), log.String()} {
		if strings.Contains(s, "s3cret") {
			t.Errorf("printed: %s", s)
		}
	}
	if !strings.Contains(log.String(), `"id":"acme"`) {
		t.Errorf("log: %s", log.String())
	}
}

func TestValidUserName(t *testing.T) {
	for name, ok := range map[string]bool{"keyfence-acme": true, "a.b@c": true, "": false, "a b": false, "a\tb": false, "a\"b": false, "a'b": false, "a\x7fb": false} {
		if err := ValidUserName(name); (err == nil) != ok {
			t.Errorf("ValidUserName(%q) = %v", name, err)
		}
	}
}

func TestHashPasswordRoundTrip(t *testing.T) {
	h, err := HashPassword([]byte("correct horse"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("hash %q: want OWASP's argon2id parameters", h)
	}
	p, err := parseHash(h)
	if err != nil || len(p.salt) != 16 || len(p.key) != 32 {
		t.Fatalf("parse %q: %v, salt %d bytes, key %d bytes", h, err, len(p.salt), len(p.key))
	}
	if !VerifyPassword(h, []byte("correct horse")) {
		t.Error("the right password does not verify")
	}
	for _, wrong := range []string{"correct horsE", "correct hors", "", "correct horse\n"} {
		if VerifyPassword(h, []byte(wrong)) {
			t.Errorf("%q verifies", wrong)
		}
	}
	h2, _ := HashPassword([]byte("correct horse"))
	if h2 == h {
		t.Error("two hashes of one password are equal: no random salt")
	}
	if _, err := HashPassword(nil); err == nil {
		t.Error("HashPassword of an empty password: no error")
	}
}

func TestBcryptVerify(t *testing.T) {
	h := bcryptHash(t, "bcrypt-pw")
	if !VerifyPassword(h, []byte("bcrypt-pw")) {
		t.Fatal("the right password does not verify")
	}
	if VerifyPassword(h, []byte("bcrypt-pW")) {
		t.Error("a wrong password verifies")
	}
	for _, v := range []string{"$2a$", "$2y$"} { // the same hash as other tools write it
		if !VerifyPassword(v+h[4:], []byte("bcrypt-pw")) {
			t.Errorf("%s form does not verify", v)
		}
	}
	// bcrypt reads 72 bytes: a longer password must not match every
	// password sharing them.
	long := strings.Repeat("x", 72)
	hl := bcryptHash(t, long)
	if !VerifyPassword(hl, []byte(long)) || VerifyPassword(hl, []byte(long+"anything")) {
		t.Error("72-byte password: want the password itself to verify and a longer one not")
	}
}

func TestVerifyMalformed(t *testing.T) {
	good, bc := cheapHash("pw"), bcryptHash(t, "pw")
	if !VerifyPassword(good, []byte("pw")) || !VerifyPassword(bc, []byte("pw")) {
		t.Fatal("the well-formed hashes do not verify")
	}
	bad := []string{
		"", "$", "$$$$$", "pw", "$argon2id$", "$argon2id$v=19$m=8,t=1,p=1$", "$argon2id$v=19$m=8,t=1,p=1$$",
		strings.Replace(good, "$argon2id$", "$argon2d$", 1),
		strings.Replace(good, "v=19", "v=", 1),
		strings.Replace(good, "m=8,t=1,p=1", "t=1,m=8,p=1", 1),
		strings.Replace(good, "m=8,t=1,p=1", "m=8,t=1", 1),
		strings.Replace(good, "m=8,t=1,p=1", "m=8,t=1,p=1,k=2", 1),
		strings.Replace(good, "m=8,", "m=0,", 1),
		strings.Replace(good, "m=8,", "m=7,", 1),
		strings.Replace(good, "m=8,", "m=-8,", 1),
		strings.Replace(good, "m=8,", "m=+8,", 1),
		strings.Replace(good, "m=8,", "m=99999999999,", 1),
		strings.Replace(good, "t=1,", "t=0,", 1),
		strings.Replace(good, "p=1$", "p=0$", 1),
		strings.Replace(good, "p=1$", "p=256$", 1),
		strings.Replace(good, "$MDEy", "$MD\nEy", 1), // Go's base64 would skip the line break
		strings.Replace(good, "$MDEy", "$MDEy=", 1),
		good[:len(good)-1] + "=",
		good[:len(good)-2], // too short for 32 bytes and trailing bits set
		good + "$",
		strings.Replace(good, "$MDEyMzQ1Njc4OWFiY2RlZg$", "$MDEy$", 1), // 3-byte salt
		bc[:59], bc + "a", "$2x" + bc[3:], "$2$" + bc[4:], "$2b$+4" + bc[6:], "$2b$03" + bc[6:], "$2b$32" + bc[6:], bc[:10] + "!" + bc[11:],
		"$2b$04$" + strings.Repeat("\x00", 53),
	}
	for _, h := range bad {
		if _, err := parseHash(h); err == nil {
			t.Errorf("parseHash(%q): no error", h)
		}
		if VerifyPassword(h, []byte("pw")) {
			t.Errorf("VerifyPassword(%q) = true", h)
		}
	}
}

// countingChecker is a Checker whose verifications are counted and may be
// held until release is closed.
func countingChecker(concurrency int, verify func(string, []byte) bool) (*Checker, *atomic.Int64) {
	c := NewChecker(concurrency)
	var n atomic.Int64
	c.verify = func(h string, pw []byte) bool { n.Add(1); return verify(h, pw) }
	return c, &n
}

func TestCheckerRemembersSuccess(t *testing.T) {
	ctx := context.Background()
	h := cheapHash("right")
	c, calls := countingChecker(2, VerifyPassword)
	for i := range 3 {
		ok, err := c.Check(ctx, h, []byte("right"))
		if !ok || err != nil {
			t.Fatalf("check %d: %v, %v", i, ok, err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("3 checks of the right pair hashed %d times, want 1", n)
	}
	for i := range 2 {
		if ok, err := c.Check(ctx, h, []byte("wrong")); ok || err != nil {
			t.Fatalf("wrong password, check %d: %v, %v", i, ok, err)
		}
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("after 2 wrong checks: %d hashes, want 3 (a wrong password is never remembered)", n)
	}
	// The pair is the hash and the password: the same password against
	// another hash (the tenant's password changed) is verified again.
	h2 := strings.Replace(h, "m=8", "m=16", 1)
	if ok, _ := c.Check(ctx, h2, []byte("right")); ok {
		t.Error("a hash with a changed parameter verifies")
	}
	if n := calls.Load(); n != 4 {
		t.Errorf("another hash: %d hashes, want 4", n)
	}
	// (hash, password) pairs with the same concatenation are different.
	if keyOf("ab", []byte("c")) == keyOf("a", []byte("bc")) {
		t.Error("keyOf is ambiguous")
	}
}

func TestCheckerMemoryIsBounded(t *testing.T) {
	ctx := context.Background()
	c, calls := countingChecker(1, func(string, []byte) bool { return true })
	for i := range checkerMemory + 1 {
		if ok, _ := c.Check(ctx, "h", fmt.Appendf(nil, "pw%d", i)); !ok {
			t.Fatal("not ok")
		}
	}
	if len(c.known) != checkerMemory || len(c.order) != checkerMemory {
		t.Fatalf("remembers %d pairs (%d in order), want %d", len(c.known), len(c.order), checkerMemory)
	}
	before := calls.Load()
	c.Check(ctx, "h", []byte("pw1")) // still remembered
	if calls.Load() != before {
		t.Error("pw1 was forgotten")
	}
	c.Check(ctx, "h", []byte("pw0")) // the oldest: forgotten
	if calls.Load() != before+1 {
		t.Error("pw0 is still remembered past the bound")
	}
}

func TestCheckerBoundsConcurrency(t *testing.T) {
	const limit, checks = 3, 12
	var running, peak atomic.Int64
	release := make(chan struct{})
	c, _ := countingChecker(limit, func(string, []byte) bool {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		running.Add(-1)
		return false
	})
	var wg sync.WaitGroup
	for i := range checks {
		wg.Go(func() { c.Check(context.Background(), "h", fmt.Appendf(nil, "pw%d", i)) })
	}
	waitFor(t, func() bool { return running.Load() == limit })
	time.Sleep(20 * time.Millisecond) // would more start?
	if p := peak.Load(); p != limit {
		t.Errorf("%d verifications at once, want %d", p, limit)
	}
	close(release)
	wg.Wait()
	if p := peak.Load(); p != limit {
		t.Errorf("%d verifications at once, want %d", p, limit)
	}
	if def := NewChecker(0); cap(def.slots) < 1 {
		t.Errorf("NewChecker(0): %d slots", cap(def.slots))
	}
}

// Checks of one pair that arrive while it is being verified wait for that
// verification: a pool opening many connections at once hashes once.
func TestCheckerVerifiesAPairOnceAtATime(t *testing.T) {
	release := make(chan struct{})
	c, calls := countingChecker(8, func(string, []byte) bool { <-release; return true })
	var wg sync.WaitGroup
	var oks atomic.Int64
	for range 10 {
		wg.Go(func() {
			if ok, err := c.Check(context.Background(), "h", []byte("pw")); ok && err == nil {
				oks.Add(1)
			}
		})
	}
	waitFor(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.inflight) == 1 && calls.Load() == 1
	})
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 1 || oks.Load() != 10 {
		t.Errorf("%d hashes for 10 concurrent checks (%d ok), want 1", n, oks.Load())
	}
}

func TestCheckerContextEndsWhileWaiting(t *testing.T) {
	release := make(chan struct{})
	c, calls := countingChecker(1, func(_ string, pw []byte) bool {
		if string(pw) == "slow" {
			<-release
		}
		return true
	})
	done := make(chan struct{})
	go func() { c.Check(context.Background(), "h", []byte("slow")); close(done) }()
	waitFor(t, func() bool { return calls.Load() == 1 })

	// The one slot is taken: this check waits, then its client goes.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	ok, err := c.Check(ctx, "h", []byte("other"))
	if ok || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Check while waiting: %v, %v; want false, deadline exceeded", ok, err)
	}
	// An ended context is not verified at all.
	gone, cancelGone := context.WithCancel(context.Background())
	cancelGone()
	if ok, err := c.Check(gone, "h", []byte("slow")); ok || !errors.Is(err, context.Canceled) {
		t.Fatalf("Check with an ended context: %v, %v", ok, err)
	}

	// A check of a pair whose first check gave up waiting does not take
	// its answer: it verifies the pair itself.
	ctx2, cancel2 := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := c.Check(ctx2, "h", []byte("third")); first <- err }()
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.inflight[keyOf("h", []byte("third"))] != nil })
	second := make(chan bool, 1)
	go func() { ok, _ := c.Check(context.Background(), "h", []byte("third")); second <- ok }()
	time.Sleep(10 * time.Millisecond) // the second is waiting for the first
	cancel2()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("first: %v", err)
	}
	close(release)
	if !<-second {
		t.Error("second check of the pair: false after the first gave up")
	}
	<-done
	if n := calls.Load(); n != 2 {
		t.Errorf("%d hashes, want 2 (slow, third)", n)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 5s")
		}
	}
}
