package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keyfence/keyfence/internal/redistest"
)

// runMainEnv makes the test binary run keyfence's main instead of the tests,
// so that a test can start keyfence as a real process with real arguments
// (what /proc/<pid>/cmdline and pprof's cmdline see).
const runMainEnv = "KEYFENCE_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// lockedBuffer collects a child's stderr while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Every secret keyfence is given — upstream password, client password,
// admin token — by flag, environment or file, is absent from its log
// (debug level), /metrics, /debug/pprof/cmdline, a goroutine dump, /readyz,
// the status page and its /status.json,
// and everything a client can read through it (INFO, CLIENT LIST, errors).
func TestNoSecretLeaks(t *testing.T) {
	const (
		upw   = "Upstream-Secret-7f3a"
		cpw   = "Client-Secret-91bd"
		token = "Admin-Token-Secret-c4e82d10"
	)
	up := redistest.StartT(t, redistest.Options{Password: upw})
	upFile := writeSecret(t, upw+"\n")
	base := []string{"--tenant", "leak", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--admin-pprof", "--log-level", "debug",
		"--redis-host", up.Host(), "--redis-port", strings.TrimPrefix(up.Addr(), up.Host()+":")}
	tests := []struct {
		name string
		args []string
		env  []string
		warn string // a start-up warning expected in the log
	}{
		{name: "passwords as flags", args: []string{"--redis-password", upw, "--client-password=" + cpw},
			env: []string{"PROXY_ADMIN_TOKEN=" + token}, warn: "--redis-password is visible"},
		{name: "passwords from env", env: []string{"REDIS_PASSWORD=" + upw, "PROXY_CLIENT_PASSWORD=" + cpw, "PROXY_ADMIN_TOKEN=" + token}},
		{name: "password from file, URL flag", args: []string{"--redis-url", "redis://:" + upw + "@" + up.Addr(), "--client-password", cpw},
			env: []string{"PROXY_ADMIN_TOKEN_FILE=" + writeSecret(t, token)}, warn: "--redis-url is visible"},
		{name: "password file flag", args: []string{"--redis-password-file", upFile}, env: []string{"PROXY_CLIENT_PASSWORD=" + cpw, "PROXY_ADMIN_TOKEN=" + token}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], append(append([]string{}, base...), tc.args...)...)
			cmd.Env = append(append(os.Environ(), runMainEnv+"=1"), tc.env...)
			logs := &lockedBuffer{}
			cmd.Stderr = logs
			cmd.Stdout = logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			stopped := false
			defer func() {
				if !stopped {
					_ = cmd.Process.Kill()
					<-exited
				}
			}()
			addrs := waitAddrs(t, logs, exited)

			var seen []string // everything an outsider or a client read
			c := redis.NewClient(&redis.Options{Addr: addrs["keyfence listening"], Password: cpw, Protocol: 3, MaxRetries: -1})
			defer c.Close()
			if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatalf("SET through keyfence: %v\n%s", err, logs)
			}
			for _, args := range [][]any{{"INFO"}, {"INFO", "everything"}, {"INFO", "keyfence"}, {"CLIENT", "LIST"}, {"CLIENT", "INFO"},
				{"CONFIG", "GET", "requirepass"}, {"ACL", "LIST"}, {"AUTH", "nope"}, {"AUTH", "default", "nope"}, {"HELLO", "3", "AUTH", "default", "nope"},
				{"COMMAND", "DOCS", "auth"}, {"EVAL", "return redis.call('CONFIG', 'GET', 'requirepass')", "0"}, {"GET", "k"}} {
				v, err := c.Do(ctx, args...).Result()
				seen = append(seen, stringify(v), stringify(err))
			}
			// A client that gets the password wrong sees the same error as
			// anyone.
			bad := redis.NewClient(&redis.Options{Addr: addrs["keyfence listening"], Password: cpw + "x", MaxRetries: -1})
			seen = append(seen, stringify(bad.Ping(ctx).Err()))
			bad.Close()

			admin := "http://" + addrs["admin listening"]
			for _, path := range []string{"/metrics", "/debug/pprof/cmdline", "/debug/pprof/goroutine?debug=2", "/readyz", "/healthz", "/debug/pprof/", "/", "/status.json"} {
				for _, auth := range []bool{false, true} {
					status, body := httpGet(t, ctx, admin+path, auth, token)
					seen = append(seen, body)
					if auth && status != 200 {
						t.Errorf("GET %s with the token: %d %s", path, status, body)
					}
					if !auth && path != "/healthz" && path != "/readyz" && status != 401 {
						t.Errorf("GET %s without the token: %d, want 401", path, status)
					}
				}
			}
			if _, cmdline := httpGet(t, ctx, admin+"/debug/pprof/cmdline", true, token); !strings.Contains(cmdline, "--tenant\x00leak") {
				t.Errorf("cmdline %q is not the process's", cmdline)
			}

			_ = cmd.Process.Signal(syscall.SIGTERM)
			if err := <-exited; err != nil {
				t.Errorf("keyfence exited with %v", err)
			}
			stopped = true
			log := logs.String()
			seen = append(seen, log)
			if tc.warn != "" && !strings.Contains(log, tc.warn) {
				t.Errorf("no warning %q in the log:\n%s", tc.warn, log)
			}
			if tc.warn == "" && strings.Contains(log, "visible to every local user") {
				t.Errorf("a warning without a secret flag:\n%s", log)
			}
			for _, secret := range []string{upw, cpw, token} {
				for _, s := range seen {
					if strings.Contains(s, secret) {
						t.Errorf("%q is visible in: %q", secret, s)
					}
				}
			}
		})
	}
}

var listening = regexp.MustCompile(`msg="(keyfence listening|admin listening)"[^\n]*? addr=(\S+)`)

// waitAddrs waits for keyfence's two "listening" log lines and returns the
// addresses they name.
func waitAddrs(t *testing.T, logs *lockedBuffer, exited <-chan error) map[string]string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		addrs := map[string]string{}
		for _, m := range listening.FindAllStringSubmatch(logs.String(), -1) {
			addrs[m[1]] = m[2]
		}
		if len(addrs) == 2 {
			return addrs
		}
		select {
		case err := <-exited:
			t.Fatalf("keyfence exited (%v):\n%s", err, logs)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("keyfence did not start:\n%s", logs)
	return nil
}

func httpGet(t *testing.T, ctx context.Context, url string, auth bool, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// stringify renders a reply or an error whole, nested values included.
func stringify(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}
