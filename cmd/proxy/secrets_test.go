package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeSecret writes content to a fresh file and returns its path.
func writeSecret(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSecretSettings(t *testing.T) {
	const token = "0123456789abcdef-admin"
	pwFile := writeSecret(t, "from-file\n")
	crlfFile := writeSecret(t, "from-crlf\r\n")
	twoLines := writeSecret(t, "line-one\nline-two\n")
	empty := writeSecret(t, "\n")
	tokenFile := writeSecret(t, token+"\n")
	missing := filepath.Join(t.TempDir(), "missing")

	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantErr  string
		check    func(*config) string
		warnings int // start-up warnings expected
	}{
		{name: "password from env", env: map[string]string{"REDIS_PASSWORD": "envpw", "PROXY_CLIENT_PASSWORD": "cpw"},
			check: func(c *config) string {
				if c.proxy.Upstream.Password != "envpw" || c.proxy.ClientPassword != "cpw" {
					return "got " + c.proxy.Upstream.Password + " " + c.proxy.ClientPassword
				}
				return ""
			}},
		{name: "password from flag warns", args: []string{"--redis-password", "flagpw", "--client-password=cflag"}, warnings: 2,
			check: func(c *config) string {
				if c.proxy.Upstream.Password != "flagpw" || c.proxy.ClientPassword != "cflag" {
					return "got " + c.proxy.Upstream.Password
				}
				return ""
			}},
		{name: "flag over env", args: []string{"--redis-password", "flagpw"}, env: map[string]string{"REDIS_PASSWORD": "envpw"}, warnings: 1,
			check: func(c *config) string {
				if c.proxy.Upstream.Password != "flagpw" {
					return "got " + c.proxy.Upstream.Password
				}
				return ""
			}},
		{name: "password file by env", env: map[string]string{"REDIS_PASSWORD_FILE": pwFile, "PROXY_CLIENT_PASSWORD_FILE": crlfFile},
			check: func(c *config) string {
				if c.proxy.Upstream.Password != "from-file" || c.proxy.ClientPassword != "from-crlf" {
					return "got " + c.proxy.Upstream.Password + " " + c.proxy.ClientPassword
				}
				return ""
			}},
		{name: "password file by flag", args: []string{"--redis-password-file", pwFile},
			check: func(c *config) string {
				if c.proxy.Upstream.Password != "from-file" {
					return "got " + c.proxy.Upstream.Password
				}
				return ""
			}},
		{name: "file flag over env value", args: []string{"--redis-password-file", pwFile}, env: map[string]string{"REDIS_PASSWORD": "envpw"},
			check: func(c *config) string {
				if c.proxy.Upstream.Password != "from-file" {
					return "got " + c.proxy.Upstream.Password
				}
				return ""
			}},
		{name: "sentinel password file", args: []string{"--redis-sentinels", "10.0.0.1:26379"}, env: map[string]string{"REDIS_SENTINEL_PASSWORD_FILE": pwFile},
			check: func(c *config) string {
				if c.proxy.Upstream.Sentinel.Config().Password != "from-file" {
					return "sentinel password not read from the file"
				}
				return ""
			}},
		{name: "URL with password as flag warns", args: []string{"--redis-url", "redis://u:urlpw@h:1"}, warnings: 1,
			check: func(c *config) string {
				if c.proxy.Upstream.Password != "urlpw" {
					return "got " + c.proxy.Upstream.Password
				}
				return ""
			}},
		{name: "URL without password as flag is fine", args: []string{"--redis-url", "redis://h:1"}, env: map[string]string{"REDIS_PASSWORD_FILE": pwFile},
			check: func(c *config) string {
				if c.proxy.Upstream.Password != "from-file" || c.proxy.Upstream.Addr != "h:1" {
					return "got " + c.proxy.Upstream.Password + " " + c.proxy.Upstream.Addr
				}
				return ""
			}},
		{name: "URL from env", env: map[string]string{"REDIS_URL": "redis://:envurl@h:2"},
			check: func(c *config) string {
				if c.proxy.Upstream.Password != "envurl" {
					return "got " + c.proxy.Upstream.Password
				}
				return ""
			}},
		{name: "value and file in env", env: map[string]string{"REDIS_PASSWORD": "a", "REDIS_PASSWORD_FILE": pwFile}, wantErr: "REDIS_PASSWORD and REDIS_PASSWORD_FILE: set one"},
		{name: "value and file flags", args: []string{"--client-password", "a", "--client-password-file", pwFile}, wantErr: "--client-password and --client-password-file: set one"},
		{name: "missing file", env: map[string]string{"REDIS_PASSWORD_FILE": missing}, wantErr: "REDIS_PASSWORD_FILE: open " + missing},
		{name: "empty file", args: []string{"--redis-password-file", empty}, wantErr: "the file is empty"},
		{name: "two lines", env: map[string]string{"REDIS_PASSWORD_FILE": twoLines}, wantErr: "more than one line"},

		// The admin endpoint.
		{name: "pprof off by default", check: func(c *config) string {
			if c.adminOpts.Pprof || c.adminOpts.Token != "" {
				return "pprof on or a token by default"
			}
			return ""
		}},
		{name: "pprof by flag", args: []string{"--admin-pprof"}, check: func(c *config) string {
			if !c.adminOpts.Pprof {
				return "pprof off"
			}
			return ""
		}},
		{name: "pprof by env", env: map[string]string{"PROXY_ADMIN_PPROF": "true"}, check: func(c *config) string {
			if !c.adminOpts.Pprof {
				return "pprof off"
			}
			return ""
		}},
		{name: "pprof without admin", args: []string{"--admin", "", "--admin-pprof"}, wantErr: "--admin-pprof needs the admin endpoint"},
		{name: "token from env", env: map[string]string{"PROXY_ADMIN_TOKEN": token}, check: func(c *config) string {
			if c.adminOpts.Token != token {
				return "token " + c.adminOpts.Token
			}
			return ""
		}},
		{name: "token from file", args: []string{"--admin-token-file", tokenFile}, check: func(c *config) string {
			if c.adminOpts.Token != token {
				return "token " + c.adminOpts.Token
			}
			return ""
		}},
		{name: "token file by env", env: map[string]string{"PROXY_ADMIN_TOKEN_FILE": tokenFile}, check: func(c *config) string {
			if c.adminOpts.Token != token {
				return "token " + c.adminOpts.Token
			}
			return ""
		}},
		{name: "token twice", args: []string{"--admin-token-file", tokenFile}, env: map[string]string{"PROXY_ADMIN_TOKEN": token}, wantErr: "set one"},
		{name: "token too short", env: map[string]string{"PROXY_ADMIN_TOKEN": "short"}, wantErr: "at least 16 characters"},
		{name: "admin on all interfaces needs a token", args: []string{"--admin", "0.0.0.0:9121"}, wantErr: "reachable from the network: set PROXY_ADMIN_TOKEN"},
		{name: "admin on an empty host needs a token", env: map[string]string{"PROXY_ADMIN": ":9121"}, wantErr: "reachable from the network"},
		{name: "admin on a pod IP needs a token", args: []string{"--admin", "10.1.2.3:9121"}, wantErr: "reachable from the network"},
		{name: "admin on all interfaces with a token", args: []string{"--admin", "0.0.0.0:9121"}, env: map[string]string{"PROXY_ADMIN_TOKEN": token},
			check: func(c *config) string {
				if c.admin != "0.0.0.0:9121" || c.adminOpts.Token != token {
					return "admin " + c.admin
				}
				return ""
			}},
		{name: "admin on ::1 and localhost without a token", args: []string{"--admin", "[::1]:9121"}, check: func(c *config) string { return "" }},
		{name: "admin on localhost without a token", args: []string{"--admin", "localhost:9121"}, check: func(c *config) string { return "" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"TENANT_ID": "acme"}
			for k, v := range tc.env {
				env[k] = v
			}
			cfg, err := parseConfig(tc.args, func(k string) string { return env[k] }, &bytes.Buffer{})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want it to contain %q", err, tc.wantErr)
				}
				for _, secret := range []string{"from-file", "envpw", "line-one", token} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error %q shows the secret %q", err, secret)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("parseConfig: %v", err)
			}
			if what := tc.check(cfg); what != "" {
				t.Fatal(what)
			}
			if len(cfg.warnings) != tc.warnings {
				t.Errorf("warnings %q, want %d", cfg.warnings, tc.warnings)
			}
			for _, w := range cfg.warnings {
				if !strings.Contains(w, "visible to every local user") || strings.Contains(w, "flagpw") || strings.Contains(w, "urlpw") {
					t.Errorf("warning %q", w)
				}
			}
		})
	}
}

// --help prints every flag's default, and the environment sets defaults:
// a secret in the environment must not become one.
func TestHelpShowsNoSecret(t *testing.T) {
	env := map[string]string{"TENANT_ID": "acme", "REDIS_PASSWORD": "help-pw-1", "REDIS_SENTINEL_PASSWORD": "help-pw-2",
		"PROXY_CLIENT_PASSWORD": "help-pw-3", "REDIS_URL": "redis://u:help-pw-4@h:1", "PROXY_ADMIN_TOKEN": "help-token-0123456789"}
	var out bytes.Buffer
	_, err := parseConfig([]string{"--help"}, func(k string) string { return env[k] }, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, s := range []string{"help-pw", "help-token"} {
		if strings.Contains(out.String(), s) {
			t.Errorf("--help shows %q:\n%s", s, out.String())
		}
	}
	for _, want := range []string{"-redis-password-file", "REDIS_PASSWORD_FILE", "-client-password-file", "PROXY_CLIENT_PASSWORD_FILE",
		"-redis-sentinel-password-file", "REDIS_SENTINEL_PASSWORD_FILE", "-admin-token-file", "PROXY_ADMIN_TOKEN_FILE", "PROXY_ADMIN_TOKEN",
		"-admin-pprof", "PROXY_ADMIN_PPROF"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help does not mention %s", want)
		}
	}
}

func TestRedactArgs(t *testing.T) {
	tests := []struct {
		args, want []string
	}{
		{[]string{"--tenant", "acme", "--redis-password", "pw1"}, []string{"--tenant", "acme", "--redis-password", "xxxxx"}},
		{[]string{"-redis-password", "pw1", "--listen", "x"}, []string{"-redis-password", "xxxxx", "--listen", "x"}},
		{[]string{"--redis-password=pw1"}, []string{"--redis-password=xxxxx"}},
		{[]string{"-client-password=pw1", "--redis-sentinel-password", "pw2"}, []string{"-client-password=xxxxx", "--redis-sentinel-password", "xxxxx"}},
		{[]string{"--redis-url", "redis://u:pw1@h:1/2"}, []string{"--redis-url", "redis://u:xxxxx@h:1/2"}},
		{[]string{"--redis-url=redis://pw1@h:1"}, []string{"--redis-url=redis://xxxxx@h:1"}},
		{[]string{"--redis-url", "redis://h:1"}, []string{"--redis-url", "redis://h:1"}},
		{[]string{"--redis-url", "::not a url pw1"}, []string{"--redis-url", "xxxxx"}},
		{[]string{"--redis-password"}, []string{"--redis-password"}}, // refused by the parser; nothing to hide
		{[]string{"--redis-password-file", "/run/secrets/pw"}, []string{"--redis-password-file", "/run/secrets/pw"}},
		{[]string{"--tenant", "acme", "--", "--redis-password", "pw1"}, []string{"--tenant", "acme", "--", "--redis-password", "xxxxx"}},
	}
	for _, tc := range tests {
		got := redactArgs(tc.args)
		if strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("redactArgs(%q) = %q, want %q", tc.args, got, tc.want)
		}
		if strings.Contains(strings.Join(got, " "), "pw1") || strings.Contains(strings.Join(got, " "), "pw2") {
			t.Errorf("redactArgs(%q) shows a password: %q", tc.args, got)
		}
	}
}
