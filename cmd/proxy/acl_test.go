package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/redistest"
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
	for _, want := range []string{"Usage: keyfence acl --tenant ID", "-tenant", "TENANT_ID", "-key-format", "-user", "-redis-password-file", "REDIS_PASSWORD_FILE"} {
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
