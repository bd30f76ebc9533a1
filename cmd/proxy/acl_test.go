package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/proxy/tenants"
)

func TestACLSubcommand(t *testing.T) {
	sum := sha256.Sum256([]byte("from-file"))
	pwHash := "#" + hex.EncodeToString(sum[:])
	pwFile := writeSecret(t, "from-file\n")

	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
		want    []string // substrings of stdout
		absent  []string // words that must not be rules on the line
		stderr  string
	}{
		{name: "defaults", args: []string{"--tenant", "acme"},
			want: []string{"ACL SETUSER keyfence-acme reset off resetkeys ~tenant:acme:* ~{keyfence}:functions:tenant:acme: resetchannels &tenant:acme:* &__keyspace@*__:tenant:acme:* &__keyevent@*__:* -@all +",
				" +get ", " +set ", " +client|tracking ", " +object|encoding ", " +xinfo|stream ", " +scan ", " +info ", " +fcall ", " +function|load ", " +psubscribe ", " +publish "},
			absent: []string{"+@all", "+eval", "+evalsha", "+keys", "+script|load", "+client", "+object", "+function", "+config", "+config|get", "+flushall", "+flushdb", "+swapdb", "+move", "+debug",
				"+eval", "+script|flush", "+script|kill", "+function|delete", "+function|flush", "+client|kill", "+client|list", "+acl", "+monitor",
				"+dbsize", "+randomkey", "+pubsub|numpat", "+memory|stats", "+slowlog|get", "+shutdown", "+migrate", "on", "nopass"},
			stderr: "created off"},
		{name: "tenant from env, user and key format", args: []string{"--user", "kf-a", "--key-format", "app/{tenant}/"}, env: map[string]string{"TENANT_ID": "a"},
			want: []string{"ACL SETUSER kf-a reset off resetkeys ~app/a/* ~{keyfence}:functions:app/a/ resetchannels &app/a/* &__keyspace@*__:app/a/* "}},
		{name: "user from REDIS_USERNAME", args: []string{"--tenant", "acme"}, env: map[string]string{"REDIS_USERNAME": "up-acme"},
			want: []string{"ACL SETUSER up-acme reset "}},
		{name: "password file: its hash, on", args: []string{"--tenant", "acme", "--redis-password-file", pwFile},
			want: []string{"ACL SETUSER keyfence-acme reset on " + pwHash + " resetkeys "}, absent: []string{"from-file", "off"}},
		{name: "password by env: its hash", args: []string{"--tenant", "acme"}, env: map[string]string{"REDIS_PASSWORD": "from-file"},
			want: []string{" on " + pwHash + " "}, absent: []string{"from-file"}},
		{name: "password file by env", args: []string{"--tenant", "acme"}, env: map[string]string{"REDIS_PASSWORD_FILE": pwFile},
			want: []string{" on " + pwHash + " "}},
		{name: "no tenant", wantErr: "no tenant"},
		{name: "bad tenant", args: []string{"--tenant", "a*"}, wantErr: "must match"},
		{name: "bad key format", args: []string{"--tenant", "a", "--key-format", "x*{tenant}:"}, wantErr: "not allowed"},
		{name: "bad user", args: []string{"--tenant", "a", "--user", "two words"}, wantErr: "blanks"},
		{name: "stray argument", args: []string{"--tenant", "a", "more"}, wantErr: "unexpected argument"},
		{name: "no password flag", args: []string{"--tenant", "a", "--redis-password", "x"}, wantErr: "not defined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := runACL(tc.args, func(k string) string { return tc.env[k] }, &out, &errOut)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			line := out.String()
			if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") {
				t.Fatalf("stdout is not one line: %q", line)
			}
			for _, w := range tc.want {
				if !strings.Contains(line, w) {
					t.Errorf("line lacks %q:\n%s", w, line)
				}
			}
			words := map[string]bool{}
			for _, w := range strings.Fields(line) {
				words[w] = true
			}
			for _, a := range tc.absent {
				if words[a] || (a == "from-file" && strings.Contains(line, a)) {
					t.Errorf("line holds %q:\n%s", a, line)
				}
			}
			if !strings.Contains(errOut.String(), tc.stderr) {
				t.Errorf("stderr %q lacks %q", errOut.String(), tc.stderr)
			}
		})
	}
}

func TestACLHelp(t *testing.T) {
	var out bytes.Buffer
	err := runACL([]string{"--help"}, func(string) string { return "" }, &out, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"Usage: keyfence acl --tenant ID", "keyfence acl --tenants-file PATH", "-tenants-file", "PROXY_TENANTS_FILE", "-tenant", "TENANT_ID", "-key-format", "-user", "-redis-password-file", "REDIS_PASSWORD_FILE"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("acl --help lacks %q", want)
		}
	}
}

// The printed line, sent as it is to a real Redis 7.0, is accepted and
// gives the user exactly the password given.
func TestACLLineAppliesToRedis(t *testing.T) {
	up := redistest.StartT(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	env := map[string]string{"REDIS_PASSWORD": "apply-pw"}
	if err := runACL([]string{"--tenant", "acme"}, func(k string) string { return env[k] }, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	var args []any
	for _, w := range strings.Fields(out.String()) {
		args = append(args, w)
	}
	if err := up.Client().Do(ctx, args...).Err(); err != nil {
		t.Fatalf("Redis refuses the printed line: %v", err)
	}
	c := up.UserClient("keyfence-acme", "apply-pw")
	defer c.Close()
	if err := c.Set(ctx, "tenant:acme:k", "v", 0).Err(); err != nil {
		t.Errorf("SET as the user: %v", err)
	}
	if err := c.Get(ctx, "tenant:beta:k").Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Errorf("GET of another tenant's key as the user: %v, want NOPERM", err)
	}
	// Applying it again (an operator re-running it) replaces, not adds.
	if err := up.Client().Do(ctx, args...).Err(); err != nil {
		t.Fatalf("second apply: %v", err)
	}
	rules, err := up.Client().Do(ctx, "ACL", "LIST").StringSlice()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if strings.HasPrefix(r, "user keyfence-acme ") && (strings.Count(r, " #") != 1 || strings.Contains(r, "apply-pw")) {
			t.Errorf("ACL LIST: %s", r)
		}
	}
}

func TestACLTenantsFile(t *testing.T) {
	hash := func(pw string) string {
		sum := sha256.Sum256([]byte(pw))
		return "#" + hex.EncodeToString(sum[:])
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "beta.pw"), []byte("beta-upstream-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pwHash, err := tenants.HashPassword([]byte("client-pw"))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "tenants.yaml")
	if err := os.WriteFile(file, []byte(`tenants:
  - id: acme
    password_hash: "`+pwHash+`"
    upstream: {user: kf-acme, password_env: ACME_REDIS_PASSWORD}
  - id: gamma
    password_hash: "`+pwHash+`"
  - id: beta
    password_hash: "`+pwHash+`"
    upstream: {user: kf-beta, password_file: beta.pw}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	badFile := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badFile, []byte("tenants:\n  - id: acme\n    password_hash: plain-client-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{"ACME_REDIS_PASSWORD": "acme-upstream-pw"}

	tests := []struct {
		name      string
		args      []string
		env       map[string]string
		wantErr   string
		wantLines []string // prefixes of the stdout lines, in order
	}{
		{name: "by flag", args: []string{"--tenants-file", file},
			wantLines: []string{"ACL SETUSER kf-acme reset on " + hash("acme-upstream-pw") + " resetkeys ~tenant:acme:* ~{keyfence}:functions:tenant:acme: resetchannels &tenant:acme:* ",
				"ACL SETUSER kf-beta reset on " + hash("beta-upstream-pw") + " resetkeys ~tenant:beta:* "}},
		{name: "by env, key format", args: []string{"--key-format", "app/{tenant}/"}, env: map[string]string{"PROXY_TENANTS_FILE": file},
			wantLines: []string{"ACL SETUSER kf-acme reset on " + hash("acme-upstream-pw") + " resetkeys ~app/acme/* ", "ACL SETUSER kf-beta reset on "}},
		{name: "the gateway's own upstream user is not a tenant's", args: []string{"--tenants-file", file}, env: map[string]string{"REDIS_USERNAME": "gw", "REDIS_PASSWORD": "gw-pw"},
			wantLines: []string{"ACL SETUSER kf-acme ", "ACL SETUSER kf-beta "}},
		{name: "with --tenant", args: []string{"--tenants-file", file, "--tenant", "acme"}, wantErr: "acl: --tenant (TENANT_ID) and --tenants-file (PROXY_TENANTS_FILE): set one"},
		{name: "with TENANT_ID", args: []string{"--tenants-file", file}, env: map[string]string{"TENANT_ID": "acme"}, wantErr: "acl: --tenant (TENANT_ID) and --tenants-file"},
		{name: "with --user", args: []string{"--tenants-file", file, "--user", "u"}, wantErr: "acl: --user and --tenants-file"},
		{name: "with --redis-password-file", args: []string{"--tenants-file", file, "--redis-password-file", file}, wantErr: "acl: --redis-password-file and --tenants-file"},
		{name: "bad key format", args: []string{"--tenants-file", file, "--key-format", "x*{tenant}:"}, wantErr: "not allowed"},
		{name: "upstream password unset", args: []string{"--tenants-file", file}, env: map[string]string{"ACME_REDIS_PASSWORD": ""},
			wantErr: `acl: tenants file: tenant "acme": upstream.password_env: ACME_REDIS_PASSWORD is not set`},
		{name: "bad file", args: []string{"--tenants-file", badFile}, wantErr: `acl: tenants file: tenant "acme": password_hash: not an argon2id or bcrypt hash`},
		{name: "missing file", args: []string{"--tenants-file", filepath.Join(dir, "missing")}, wantErr: "acl: tenants file: open "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range secrets {
				env[k] = v
			}
			for k, v := range tc.env {
				env[k] = v
			}
			var out, errOut bytes.Buffer
			err := runACL(tc.args, func(k string) string { return env[k] }, &out, &errOut)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "plain-client-pw") || strings.ContainsAny(err.Error(), "\r\n") {
					t.Fatalf("error %q: quotes the password or spans lines", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			if len(lines) != len(tc.wantLines) {
				t.Fatalf("%d lines, want %d:\n%s", len(lines), len(tc.wantLines), out.String())
			}
			for i, w := range tc.wantLines {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("line %d:\n  %s\nwant it to start with\n  %s", i, lines[i], w)
				}
				if strings.Count(lines[i], " #") != 1 || !strings.Contains(lines[i], " -@all +") {
					t.Errorf("line %d is not a whole ACL SETUSER line with one password hash: %s", i, lines[i])
				}
			}
			all := out.String() + errOut.String()
			for _, secret := range []string{"acme-upstream-pw", "beta-upstream-pw", "gw-pw", "client-pw", pwHash} {
				if strings.Contains(all, secret) {
					t.Errorf("output holds %q:\n%s", secret, all)
				}
			}
			if !strings.Contains(errOut.String(), "no line for tenant gamma: no upstream user") {
				t.Errorf("stderr %q: want a note on gamma", errOut.String())
			}
			if strings.Contains(out.String(), "gamma") {
				t.Errorf("stdout names gamma, which has no upstream user:\n%s", out.String())
			}
		})
	}
}
