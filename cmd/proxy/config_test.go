package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyfence/keyfence/proxy"
	"github.com/keyfence/keyfence/proxy/tenants"
	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
)

// selfSigned writes a self-signed ECDSA certificate for 127.0.0.1 and
// localhost, good as a CA bundle and as a certificate, and its key.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "keyfence config test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestParseConfig(t *testing.T) {
	cert, key := selfSigned(t)
	missing := filepath.Join(t.TempDir(), "missing.pem")

	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string               // substring of the error; "" means success
		check   func(*config) string // returns what is wrong, "" when fine
	}{
		{
			name: "defaults",
			env:  map[string]string{"TENANT_ID": "acme"},
			check: func(c *config) string {
				p := c.proxy
				switch {
				case p.Tenant != "acme", p.Listen != "127.0.0.1:6380", c.admin != "127.0.0.1:9121":
					return "tenant/listen/admin"
				case p.KeyFormat != rewrite.DefaultKeyFormat:
					return "key format " + p.KeyFormat
				case p.Upstream.Addr != "localhost:6379", p.Upstream.DB != 0, p.Upstream.Password != "", p.Upstream.Username != "":
					return "upstream " + p.Upstream.Addr
				case p.Upstream.TLS != nil, p.Upstream.Sentinel != nil, p.TLS != nil:
					return "TLS or Sentinel on by default"
				case p.Upstream.DialTimeout != 2*time.Second, c.shutdownTimeout != 10*time.Second:
					return "timeouts"
				case p.MaxClients != 10000, p.SharedConns != 1, p.MaxPinned != 1000, p.MaxRequestBytes != resp.DefaultLimits.MaxRequestBytes:
					return "limits"
				case p.ClientOutputSoftLimit != 32<<20, p.ClientOutputHardLimit != 256<<20, p.MaxRequestBufferTotal != 1<<30:
					return "memory bounds"
				case c.logLevel != slog.LevelInfo:
					return "log level"
				case p.ScriptTimeout != proxy.DefaultScriptTimeout, p.MaxScripts != proxy.DefaultMaxScripts, p.ScriptMaxMemory != proxy.DefaultScriptMaxMemory:
					return "script limits"
				case p.Fallback == nil || !p.FallbackCache:
					return "the breaker and the read fallback are on by default"
				case p.GoroutinePerClient, p.NoIOURing:
					return "the event loop and its io_uring are on by default"
				}
				return ""
			},
		},
		{
			name: "breaker off takes the default fallback with it",
			args: []string{"--tenant", "acme", "--breaker=false"},
			check: func(c *config) string {
				if c.proxy.Fallback != nil || c.proxy.FallbackCache {
					return "fallback still on"
				}
				return ""
			},
		},
		{name: "fallback asked for without the breaker", args: []string{"--tenant", "acme", "--breaker=false", "--fallback"}, wantErr: "--fallback needs --breaker"},
		{name: "fallback asked for by env without the breaker", args: []string{"--tenant", "acme", "--breaker=false"}, env: map[string]string{"PROXY_FALLBACK": "true"}, wantErr: "--fallback needs --breaker"},
		{
			name: "io_uring off by env",
			args: []string{"--tenant", "acme"},
			env:  map[string]string{"PROXY_IO_URING": "false"},
			check: func(c *config) string {
				if !c.proxy.NoIOURing || c.proxy.GoroutinePerClient {
					return "want the event loop without io_uring"
				}
				return ""
			},
		},
		{
			name: "fallback off",
			args: []string{"--tenant", "acme", "--fallback=false"},
			check: func(c *config) string {
				if c.proxy.Fallback == nil || c.proxy.FallbackCache {
					return "want the breaker without the cache"
				}
				return ""
			},
		},
		{
			name: "script limits",
			args: []string{"--tenant", "acme", "--script-timeout", "250ms", "--max-scripts", "7"},
			env:  map[string]string{"PROXY_SCRIPT_MAX_MEMORY": "1048576"},
			check: func(c *config) string {
				p := c.proxy
				if p.ScriptTimeout != 250*time.Millisecond || p.MaxScripts != 7 || p.ScriptMaxMemory != 1<<20 {
					return fmt.Sprint(p.ScriptTimeout, p.MaxScripts, p.ScriptMaxMemory)
				}
				return ""
			},
		},
		{name: "script timeout too small", args: []string{"--tenant", "acme", "--script-timeout", "0s"}, wantErr: "--script-timeout 0s: must be at least 1ms"},
		{name: "max scripts zero", args: []string{"--tenant", "acme", "--max-scripts", "0"}, wantErr: "--max-scripts 0: must be positive"},
		{
			name: "function limits",
			args: []string{"--tenant", "acme", "--max-function-libraries", "5"},
			env:  map[string]string{"PROXY_MAX_FUNCTION_BYTES": "65536"},
			check: func(c *config) string {
				if p := c.proxy; p.MaxFunctionLibraries != 5 || p.MaxFunctionBytes != 65536 {
					return fmt.Sprint(p.MaxFunctionLibraries, p.MaxFunctionBytes)
				}
				return ""
			},
		},
		{name: "max function bytes zero", args: []string{"--tenant", "acme", "--max-function-bytes", "0"}, wantErr: "--max-function-bytes 0: must be positive"},
		{
			name: "flag over environment",
			args: []string{"--tenant", "flagged", "--redis-port", "7001", "--listen", "0.0.0.0:7379", "--dial-timeout", "5s", "--log-level", "debug"},
			env:  map[string]string{"TENANT_ID": "env", "REDIS_PORT": "7000", "REDIS_HOST": "db.internal", "PROXY_LISTEN": "127.0.0.1:1", "PROXY_DIAL_TIMEOUT": "1s"},
			check: func(c *config) string {
				if c.proxy.Tenant != "flagged" || c.proxy.Upstream.Addr != "db.internal:7001" || c.proxy.Listen != "0.0.0.0:7379" ||
					c.proxy.Upstream.DialTimeout != 5*time.Second || c.logLevel != slog.LevelDebug {
					return "got " + c.proxy.Tenant + " " + c.proxy.Upstream.Addr + " " + c.proxy.Listen
				}
				return ""
			},
		},
		{
			name: "environment alone",
			env: map[string]string{"TENANT_ID": "env", "REDIS_HOST": "10.0.0.5", "REDIS_PORT": "7000", "REDIS_DB": "3",
				"REDIS_USERNAME": "u", "REDIS_PASSWORD": "p", "PROXY_MAX_CLIENTS": "5", "PROXY_ADMIN": ""},
			check: func(c *config) string {
				u := c.proxy.Upstream
				if u.Addr != "10.0.0.5:7000" || u.DB != 3 || u.Username != "u" || u.Password != "p" || c.proxy.MaxClients != 5 {
					return "got " + u.Addr
				}
				return ""
			},
		},
		{
			name: "assume restore sanitized, flag",
			args: []string{"--tenant", "acme", "--assume-restore-sanitized"},
			check: func(c *config) string {
				if !c.proxy.Upstream.AssumeRestoreSanitized {
					return "--assume-restore-sanitized not set"
				}
				return ""
			},
		},
		{
			name: "memory bounds from flags",
			args: []string{"--client-output-soft-limit", "1000", "--client-output-hard-limit", "5000", "--max-request-buffer-total", "70000000"},
			env:  map[string]string{"TENANT_ID": "acme"},
			check: func(c *config) string {
				p := c.proxy
				if p.ClientOutputSoftLimit != 1000 || p.ClientOutputHardLimit != 5000 || p.MaxRequestBufferTotal != 70000000 {
					return fmt.Sprint("got ", p.ClientOutputSoftLimit, p.ClientOutputHardLimit, p.MaxRequestBufferTotal)
				}
				return ""
			},
		},
		{
			name: "assume restore sanitized, environment; off by default",
			env:  map[string]string{"TENANT_ID": "acme", "PROXY_ASSUME_RESTORE_SANITIZED": "true"},
			check: func(c *config) string {
				if !c.proxy.Upstream.AssumeRestoreSanitized {
					return "PROXY_ASSUME_RESTORE_SANITIZED=true not set"
				}
				if d, err := parseConfig(nil, func(k string) string { return map[string]string{"TENANT_ID": "acme"}[k] }, &bytes.Buffer{}); err != nil || d.proxy.Upstream.AssumeRestoreSanitized {
					return "on by default"
				}
				return ""
			},
		},
		{
			name: "memory bounds from environment",
			env: map[string]string{"TENANT_ID": "acme", "PROXY_CLIENT_OUTPUT_SOFT_LIMIT": "2000", "PROXY_CLIENT_OUTPUT_HARD_LIMIT": "9000",
				"PROXY_MAX_REQUEST_BUFFER_TOTAL": "80000000"},
			check: func(c *config) string {
				p := c.proxy
				if p.ClientOutputSoftLimit != 2000 || p.ClientOutputHardLimit != 9000 || p.MaxRequestBufferTotal != 80000000 {
					return fmt.Sprint("got ", p.ClientOutputSoftLimit, p.ClientOutputHardLimit, p.MaxRequestBufferTotal)
				}
				return ""
			},
		},
		{
			name:    "soft output limit above hard",
			args:    []string{"--client-output-soft-limit", "6000", "--client-output-hard-limit", "5000"},
			env:     map[string]string{"TENANT_ID": "acme"},
			wantErr: "--client-output-soft-limit 6000: must not exceed --client-output-hard-limit",
		},
		{
			name:    "zero hard output limit",
			env:     map[string]string{"TENANT_ID": "acme", "PROXY_CLIENT_OUTPUT_HARD_LIMIT": "0"},
			wantErr: "--client-output-hard-limit 0: must be positive",
		},
		{
			name:    "request buffer budget below one request",
			args:    []string{"--max-request-buffer-total", "1000"},
			env:     map[string]string{"TENANT_ID": "acme"},
			wantErr: "--max-request-buffer-total 1000: must be at least --max-request-bytes",
		},
		{
			name: "redis URL with password and db",
			env:  map[string]string{"TENANT_ID": "acme", "REDIS_URL": "redis://:pw@h:1/2", "REDIS_HOST": "ignored"},
			check: func(c *config) string {
				u := c.proxy.Upstream
				if u.Addr != "h:1" || u.Password != "pw" || u.Username != "" || u.DB != 2 || u.TLS != nil {
					return "got " + u.Addr + " " + u.Password
				}
				return ""
			},
		},
		{
			name: "redis URL with user, default port",
			args: []string{"--tenant", "acme", "--redis-url", "redis://user:pw@cache.example"},
			check: func(c *config) string {
				u := c.proxy.Upstream
				if u.Addr != "cache.example:6379" || u.Username != "user" || u.Password != "pw" || u.DB != 0 {
					return "got " + u.Addr
				}
				return ""
			},
		},
		{
			name: "rediss URL",
			env:  map[string]string{"TENANT_ID": "acme", "REDIS_URL": "rediss://default:tok@eu1.upstash.io:6379"},
			check: func(c *config) string {
				u := c.proxy.Upstream
				if u.TLS == nil || u.TLS.ServerName != "eu1.upstash.io" || u.TLS.MinVersion != tls.VersionTLS12 || u.TLS.InsecureSkipVerify {
					return "TLS not set up for the URL's host"
				}
				if u.Addr != "eu1.upstash.io:6379" || u.Username != "default" || u.Password != "tok" {
					return "got " + u.Addr
				}
				return ""
			},
		},
		{name: "URL bad scheme", env: map[string]string{"TENANT_ID": "acme", "REDIS_URL": "http://h:1"}, wantErr: "scheme must be redis:// or rediss://"},
		{name: "URL bad port", env: map[string]string{"TENANT_ID": "acme", "REDIS_URL": "redis://h:99999"}, wantErr: `port "99999" is not a TCP port`},
		{name: "URL port not a number", env: map[string]string{"TENANT_ID": "acme", "REDIS_URL": "redis://h:abc"}, wantErr: "REDIS_URL"},
		{name: "URL bad db", env: map[string]string{"TENANT_ID": "acme", "REDIS_URL": "redis://h:1/x"}, wantErr: `database "x" is not a number`},
		{name: "URL without host", env: map[string]string{"TENANT_ID": "acme", "REDIS_URL": "redis:///2"}, wantErr: "no host"},
		{name: "URL password redacted in errors", env: map[string]string{"TENANT_ID": "acme", "REDIS_URL": "redis://:s3cret@h:0"}, wantErr: "xxxxx"},
		{name: "no tenant", wantErr: "no tenant: set --tenant or TENANT_ID"},
		{name: "bad tenant id", args: []string{"--tenant", "a*b"}, wantErr: `tenant id "a*b": must match [A-Za-z0-9_-]{1,64}`},
		{name: "tenant id too long", args: []string{"--tenant", strings.Repeat("a", 65)}, wantErr: "must match"},
		{name: "unknown flag", args: []string{"--tenant", "acme", "--nope"}, wantErr: "flag provided but not defined: -nope (see --help)"},
		{name: "stray argument", args: []string{"--tenant", "acme", "extra"}, wantErr: `unexpected argument "extra"`},
		{name: "bad number in env", env: map[string]string{"TENANT_ID": "acme", "REDIS_PORT": "abc"}, wantErr: `REDIS_PORT="abc": not a whole number`},
		{name: "bad bool in env", env: map[string]string{"TENANT_ID": "acme", "REDIS_TLS": "maybe"}, wantErr: `REDIS_TLS="maybe": not true or false`},
		{name: "bad port", args: []string{"--tenant", "acme", "--redis-port", "0"}, wantErr: "--redis-port 0: not a TCP port"},
		{name: "negative db", args: []string{"--tenant", "acme", "--redis-db", "-1"}, wantErr: "must not be negative"},
		{name: "bad listen", args: []string{"--tenant", "acme", "--listen", "nohost"}, wantErr: "--listen"},
		{name: "bad log level", args: []string{"--tenant", "acme", "--log-level", "loud"}, wantErr: "--log-level"},

		// Upstream TLS.
		{
			name: "REDIS_TLS with CA, client cert, server name",
			env: map[string]string{"TENANT_ID": "acme", "REDIS_TLS": "true", "REDIS_HOST": "10.1.2.3",
				"REDIS_TLS_CA_FILE": cert, "REDIS_TLS_CERT_FILE": cert, "REDIS_TLS_KEY_FILE": key, "REDIS_TLS_SERVER_NAME": "redis.internal"},
			check: func(c *config) string {
				u := c.proxy.Upstream
				if u.TLS == nil || u.TLS.RootCAs == nil || len(u.TLS.Certificates) != 1 || u.TLS.ServerName != "redis.internal" || u.TLS.InsecureSkipVerify {
					return "TLS config incomplete"
				}
				return ""
			},
		},
		{
			name: "--redis-tls checks the host's name by default",
			args: []string{"--tenant", "acme", "--redis-tls", "--redis-host", "redis.example"},
			check: func(c *config) string {
				if u := c.proxy.Upstream; u.TLS == nil || u.TLS.ServerName != "redis.example" || u.TLS.RootCAs != nil {
					return "want system roots and server name redis.example"
				}
				return ""
			},
		},
		{
			name: "REDIS_TLS with a redis:// URL checks the URL's host",
			env:  map[string]string{"TENANT_ID": "acme", "REDIS_TLS": "true", "REDIS_URL": "redis://cache.example:6380"},
			check: func(c *config) string {
				if u := c.proxy.Upstream; u.TLS == nil || u.TLS.ServerName != "cache.example" {
					return "want server name cache.example"
				}
				return ""
			},
		},
		{
			name: "rediss with CA and insecure flag",
			args: []string{"--tenant", "acme", "--redis-url", "rediss://h:1", "--redis-tls-ca-file", cert, "--redis-tls-insecure-skip-verify"},
			check: func(c *config) string {
				if u := c.proxy.Upstream; u.TLS == nil || u.TLS.RootCAs == nil || !u.TLS.InsecureSkipVerify || u.TLS.ServerName != "h" {
					return "TLS config"
				}
				return ""
			},
		},
		{name: "TLS settings without TLS", env: map[string]string{"TENANT_ID": "acme", "REDIS_TLS_CA_FILE": cert}, wantErr: "upstream TLS is off: set --redis-tls (REDIS_TLS=true) or use a rediss:// REDIS_URL"},
		{name: "insecure without TLS", args: []string{"--tenant", "acme", "--redis-tls-insecure-skip-verify"}, wantErr: "upstream TLS is off"},
		{name: "TLS cert without key", args: []string{"--tenant", "acme", "--redis-tls", "--redis-tls-cert-file", cert}, wantErr: "--redis-tls-cert-file and --redis-tls-key-file go together"},
		{name: "TLS CA file missing", args: []string{"--tenant", "acme", "--redis-tls", "--redis-tls-ca-file", missing}, wantErr: "upstream TLS: CA file: open " + missing + ": no such file or directory"},
		{name: "TLS CA file not PEM", args: []string{"--tenant", "acme", "--redis-tls", "--redis-tls-ca-file", key}, wantErr: "upstream TLS: CA file " + key + ": no PEM certificate in it"},
		{name: "TLS key file missing", args: []string{"--tenant", "acme", "--redis-tls", "--redis-tls-cert-file", cert, "--redis-tls-key-file", missing}, wantErr: "upstream TLS: key file: open " + missing},
		{name: "TLS key not matching", args: []string{"--tenant", "acme", "--redis-tls", "--redis-tls-cert-file", cert, "--redis-tls-key-file", cert}, wantErr: "upstream TLS: certificate " + cert + " with key " + cert},

		// Listener TLS.
		{
			name: "listener TLS",
			env:  map[string]string{"TENANT_ID": "acme", "PROXY_TLS_CERT": cert, "PROXY_TLS_KEY": key},
			check: func(c *config) string {
				if c.proxy.TLS == nil || len(c.proxy.TLS.Certificates) != 1 || c.proxy.TLS.ClientAuth != tls.NoClientCert {
					return "listener TLS"
				}
				return ""
			},
		},
		{
			name: "listener mTLS",
			args: []string{"--tenant", "acme", "--tls-cert", cert, "--tls-key", key, "--tls-client-ca", cert},
			check: func(c *config) string {
				if c.proxy.TLS == nil || c.proxy.TLS.ClientCAs == nil || c.proxy.TLS.ClientAuth != tls.RequireAndVerifyClientCert {
					return "want RequireAndVerifyClientCert"
				}
				return ""
			},
		},
		{name: "listener cert without key", args: []string{"--tenant", "acme", "--tls-cert", cert}, wantErr: "--tls-cert and --tls-key go together"},
		{name: "listener client CA alone", args: []string{"--tenant", "acme", "--tls-client-ca", cert}, wantErr: "--tls-client-ca needs --tls-cert and --tls-key"},
		{name: "listener key missing", args: []string{"--tenant", "acme", "--tls-cert", cert, "--tls-key", missing}, wantErr: "listener TLS: key file: open " + missing},
		{name: "listener client CA missing", args: []string{"--tenant", "acme", "--tls-cert", cert, "--tls-key", key, "--tls-client-ca", missing}, wantErr: "listener TLS: CA file: open " + missing},

		// Sentinel.
		{
			name: "sentinels from environment",
			env: map[string]string{"TENANT_ID": "acme", "REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26379,10.0.0.3:26379",
				"REDIS_SENTINEL_PASSWORD": "spw", "REDIS_PASSWORD": "rpw", "REDIS_DB": "4"},
			check: func(c *config) string {
				u := c.proxy.Upstream
				if u.Sentinel == nil {
					return "no Sentinel"
				}
				sc := u.Sentinel.Config()
				if strings.Join(sc.Addrs, " ") != "10.0.0.1:26379 10.0.0.2:26379 10.0.0.3:26379" || sc.Master != "mymaster" || sc.Password != "spw" || sc.TLS != nil {
					return "sentinel config " + u.Sentinel.String()
				}
				if u.Password != "rpw" || u.DB != 4 || !strings.Contains(u.Addr, "mymaster") {
					return "upstream " + u.Addr
				}
				return ""
			},
		},
		{
			name: "sentinels by flag, master name, TLS to master and sentinels",
			args: []string{"--tenant", "acme", "--redis-sentinels", "s1:1,s2:2", "--redis-sentinel-master", "orders", "--redis-tls", "--redis-tls-ca-file", cert},
			env:  map[string]string{"REDIS_SENTINEL_MASTER": "ignored"},
			check: func(c *config) string {
				u := c.proxy.Upstream
				if u.Sentinel == nil {
					return "no Sentinel"
				}
				sc := u.Sentinel.Config()
				if sc.Master != "orders" || len(sc.Addrs) != 2 || sc.TLS != u.TLS || u.TLS == nil || u.TLS.RootCAs == nil {
					return "sentinel config " + u.Sentinel.String()
				}
				if u.TLS.ServerName != "" {
					return "server name " + u.TLS.ServerName + ": with Sentinel each master's own host must be checked"
				}
				return ""
			},
		},
		{name: "sentinel address without port", args: []string{"--tenant", "acme", "--redis-sentinels", "s1"}, wantErr: `--redis-sentinels "s1": want host:port`},
		{name: "sentinel port zero", args: []string{"--tenant", "acme", "--redis-sentinels", "s1:0"}, wantErr: `--redis-sentinels "s1:0"`},
		{name: "sentinel empty entry", args: []string{"--tenant", "acme", "--redis-sentinels", "s1:1,,s2:2"}, wantErr: `--redis-sentinels ""`},
		{name: "sentinel with URL", env: map[string]string{"TENANT_ID": "acme", "REDIS_SENTINELS": "s1:1", "REDIS_URL": "redis://h:1"}, wantErr: "--redis-url and --redis-sentinels both name the upstream"},
		{name: "sentinel password alone", env: map[string]string{"TENANT_ID": "acme", "REDIS_SENTINEL_PASSWORD": "x"}, wantErr: "--redis-sentinel-password given without --redis-sentinels"},
		{name: "sentinel master empty", args: []string{"--tenant", "acme", "--redis-sentinels", "s1:1", "--redis-sentinel-master", ""}, wantErr: "--redis-sentinel-master: empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string { return tc.env[k] }
			var out bytes.Buffer
			cfg, err := parseConfig(tc.args, getenv, &out)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("parseConfig: no error, want %q", tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %q, want it to contain %q", err, tc.wantErr)
				}
				if strings.ContainsAny(err.Error(), "\r\n") {
					t.Fatalf("error %q spans lines: main prints it as one", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseConfig: %v", err)
			}
			if what := tc.check(cfg); what != "" {
				t.Fatalf("%s", what)
			}
			if _, err := proxy.New(cfg.proxy); err != nil {
				t.Fatalf("proxy.New rejects the config: %v", err)
			}
		})
	}
}

func TestHelpListsEverySetting(t *testing.T) {
	var out bytes.Buffer
	_, err := parseConfig([]string{"--help"}, func(string) string { return "" }, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: err = %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{
		"-redis-tls-ca-file", "REDIS_TLS_CA_FILE", "-redis-tls-cert-file", "REDIS_TLS_CERT_FILE",
		"-redis-tls-key-file", "REDIS_TLS_KEY_FILE", "-redis-tls-server-name", "REDIS_TLS_SERVER_NAME",
		"-redis-tls-insecure-skip-verify", "REDIS_TLS_INSECURE_SKIP_VERIFY",
		"-tls-cert", "PROXY_TLS_CERT", "-tls-key", "PROXY_TLS_KEY", "-tls-client-ca", "PROXY_TLS_CLIENT_CA",
		"-redis-sentinels", "REDIS_SENTINELS", "-redis-sentinel-master", "REDIS_SENTINEL_MASTER", `(default "mymaster")`,
		"-redis-sentinel-password", "REDIS_SENTINEL_PASSWORD",
		"-tenants-file", "PROXY_TENANTS_FILE", "keyfence hash-password", "keyfence acl",
		"-listen", `(default "127.0.0.1:6380")`, "-admin", `(default "127.0.0.1:9121")`,
		"-client-output-soft-limit", "PROXY_CLIENT_OUTPUT_SOFT_LIMIT", "(default 33554432)",
		"-client-output-hard-limit", "PROXY_CLIENT_OUTPUT_HARD_LIMIT", "(default 268435456)",
		"-max-request-buffer-total", "PROXY_MAX_REQUEST_BUFFER_TOTAL", "(default 1073741824)",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help does not mention %q", want)
		}
	}
}

func TestParseConfigTenantsFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	hash, err := tenants.HashPassword([]byte("client-pw"))
	if err != nil {
		t.Fatal(err)
	}
	good := write("tenants.yaml", `defaults: {max_connections: 10}
tenants:
  - id: acme
    password_hash: "`+hash+`"
    upstream: {user: kf-acme, password_env: ACME_REDIS_PASSWORD}
  - id: beta
    password_hash: "`+hash+`"
`)
	plaintext := write("plain.yaml", "tenants:\n  - id: acme\n    password_hash: client-pw\n")
	unknownField := write("typo.yaml", "tenants:\n  - id: acme\n    password_hash: \""+hash+"\"\n    limits: {max_conections: 5}\n")
	env := map[string]string{"ACME_REDIS_PASSWORD": "acme-upstream-pw"}

	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string // the whole error, or its start when it ends in "…"
	}{
		{name: "by flag", args: []string{"--tenants-file", good}},
		{name: "by env", env: map[string]string{"PROXY_TENANTS_FILE": good}},
		{name: "with --tenant", args: []string{"--tenants-file", good, "--tenant", "acme"},
			wantErr: "--tenant (TENANT_ID) and --tenants-file (PROXY_TENANTS_FILE): set one; --tenant serves one tenant, --tenants-file many"},
		{name: "with TENANT_ID", args: []string{"--tenants-file", good}, env: map[string]string{"TENANT_ID": "acme"},
			wantErr: "--tenant (TENANT_ID) and --tenants-file (PROXY_TENANTS_FILE): set one…"},
		{name: "with --client-password", args: []string{"--tenants-file", good}, env: map[string]string{"PROXY_CLIENT_PASSWORD": "x"},
			wantErr: "--client-password and --tenants-file (PROXY_TENANTS_FILE): in gateway mode each tenant's password_hash is its password"},
		{name: "plaintext password", args: []string{"--tenants-file", plaintext},
			wantErr: `tenants file: tenant "acme": password_hash: not an argon2id or bcrypt hash (a plaintext password is refused; make one with keyfence hash-password)`},
		{name: "misspelt field", args: []string{"--tenants-file", unknownField},
			wantErr: `tenants file: tenant "acme": limits.max_conections: unknown field (line 4); known here: max_connections, max_ops_per_second, burst`},
		{name: "upstream password unset", args: []string{"--tenants-file", good}, env: map[string]string{"ACME_REDIS_PASSWORD": ""},
			wantErr: `tenants file: tenant "acme": upstream.password_env: ACME_REDIS_PASSWORD is not set`},
		{name: "missing file", args: []string{"--tenants-file", filepath.Join(dir, "missing.yaml")},
			wantErr: "tenants file: open " + filepath.Join(dir, "missing.yaml") + ": no such file or directory"},
		{name: "bad key format", args: []string{"--tenants-file", good, "--key-format", "t{tenant}x"}, wantErr: `key format "t{tenant}x": {tenant} must be followed by a separator…`},
		{name: "neither", wantErr: "no tenant: set --tenant or TENANT_ID (one tenant), or --tenants-file or PROXY_TENANTS_FILE (gateway)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := map[string]string{}
			for k, v := range env {
				e[k] = v
			}
			for k, v := range tc.env {
				e[k] = v
			}
			cfg, err := parseConfig(tc.args, func(k string) string { return e[k] }, &bytes.Buffer{})
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("no error, want %q", tc.wantErr)
				}
				want, prefix := strings.CutSuffix(tc.wantErr, "…")
				if msg := err.Error(); (prefix && !strings.HasPrefix(msg, want)) || (!prefix && msg != want) {
					t.Fatalf("error\n  %s\nwant\n  %s", msg, tc.wantErr)
				}
				if strings.ContainsAny(err.Error(), "\r\n") || strings.Contains(err.Error(), "client-pw") {
					t.Fatalf("error %q spans lines or quotes the password", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.tenantsFile != good || cfg.tenants == nil || cfg.proxy.Tenant != "" {
				t.Fatalf("tenantsFile %q, tenants %v, proxy.Tenant %q", cfg.tenantsFile, cfg.tenants, cfg.proxy.Tenant)
			}
			acme, ok := cfg.tenants.Lookup("acme")
			if !ok || acme.UpstreamUser != "kf-acme" || acme.UpstreamPassword != "acme-upstream-pw" || acme.Limits.MaxConnections != 10 {
				t.Fatalf("acme: %v, %v", acme, ok)
			}
			if _, ok := cfg.tenants.Lookup("beta"); !ok || len(cfg.tenants.Tenants) != 2 {
				t.Fatal("beta missing")
			}
		})
	}

	// Sidecar mode is as it was: no tenants file.
	cfg, err := parseConfig([]string{"--tenant", "acme"}, func(string) string { return "" }, &bytes.Buffer{})
	if err != nil || cfg.tenants != nil || cfg.tenantsFile != "" {
		t.Fatalf("sidecar: %v, tenants %v", err, cfg.tenants)
	}
}
