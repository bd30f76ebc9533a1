package nodetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/proxy"
	"github.com/keyfence/keyfence/upstream"
)

// nodeTimeout bounds the whole `node --test` run; the tests themselves aim
// at well under a minute.
const nodeTimeout = 3 * time.Minute

// TestNode runs the Node.js tests of this directory against two tenants'
// keyfence servers in front of one real Redis.
func TestNode(t *testing.T) {
	node := requireNodeSetup(t)

	srv := redistest.StartT(t, redistest.Options{})
	env := append(os.Environ(),
		"REDIS_ADMIN="+srv.Addr(),
		"KF_A="+startTenant(t, srv, "a"),
		"KF_B="+startTenant(t, srv, "b"),
		"NO_COLOR=1",
	)

	ctx, cancel := context.WithTimeout(t.Context(), nodeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-reporter=spec")
	cmd.Dir = "."
	cmd.Env = env
	out := &lineLogger{t: t}
	cmd.Stdout = out
	cmd.Stderr = out
	inOwnProcessGroup(cmd)
	cmd.Cancel = func() error { return killGroup(cmd) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	out.flush()
	switch {
	case ctx.Err() != nil:
		t.Fatalf("node --test did not finish within %v (its output is above)", nodeTimeout)
	case err != nil:
		t.Fatalf("node --test failed after %v: %v (its output is above)", time.Since(start).Round(time.Millisecond), err)
	case !out.ranTests():
		t.Fatal("node --test passed but ran no tests: are the *.test.mjs files of test/node/ there?")
	}
	t.Logf("node --test passed in %v", time.Since(start).Round(time.Millisecond))
}

// requireNodeSetup returns the path of node, or fails the test (never skips)
// when node or a package of package.json is not installed.
func requireNodeSetup(t *testing.T) string {
	t.Helper()
	const howto = "run `make test` (scripts/install-test-deps.sh installs node, npm and test/node's packages), or `npm ci` in test/node/"
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node not found in PATH: %s", howto)
	}
	raw, err := os.ReadFile("package.json")
	if err != nil {
		t.Fatalf("read test/node/package.json: %v", err)
	}
	var pkg struct {
		Dependencies map[string]string `json:"dependencies"`
	}
	if err := json.Unmarshal(raw, &pkg); err != nil {
		t.Fatalf("parse test/node/package.json: %v", err)
	}
	var missing []string
	for dep := range pkg.Dependencies {
		if _, err := os.Stat(filepath.Join("node_modules", dep, "package.json")); err != nil {
			missing = append(missing, dep)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		t.Fatalf("test/node/node_modules lacks %s: %s", strings.Join(missing, ", "), howto)
	}
	return node
}

// startTenant creates tenant id's upstream ACL user and an in-process
// keyfence for the tenant that logs in as that user; it returns the
// keyfence's host:port. The server is shut down in t.Cleanup.
func startTenant(t *testing.T, srv *redistest.Server, id string) string {
	t.Helper()
	user, pass := "keyfence-"+id, randomHex(t)
	if err := srv.AddTenantUser(t.Context(), user, pass, id); err != nil {
		t.Fatal(err)
	}
	kf, err := proxy.New(proxy.Config{
		Listen: "127.0.0.1:0",
		Tenant: id,
		Upstream: upstream.Config{
			Addr:     srv.Addr(),
			Username: user,
			Password: pass,
		},
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})).With("keyfence", id),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := kf.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- kf.Serve(ctx) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		if err := kf.Shutdown(sctx); err != nil {
			t.Errorf("keyfence %s: shutdown: %v", id, err)
		}
		cancel()
		if err := <-served; err != nil {
			t.Errorf("keyfence %s: serve: %v", id, err)
		}
	})
	return kf.Addr().String()
}

func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// lineLogger passes node's output to t.Log line by line as it comes, and
// remembers whether the reporter's summary counted any test.
type lineLogger struct {
	t    *testing.T
	mu   sync.Mutex
	buf  []byte
	seen bool
}

// testsLine is the spec reporter's summary line, e.g. "ℹ tests 8".
var testsLine = regexp.MustCompile(`^\S*\s*tests [1-9][0-9]*$`)

func (l *lineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.logLine(string(bytes.TrimRight(l.buf[:i], "\r")))
		l.buf = l.buf[i+1:]
	}
	return len(p), nil
}

func (l *lineLogger) logLine(line string) {
	if testsLine.MatchString(strings.TrimSpace(line)) {
		l.seen = true
	}
	l.t.Log(line)
}

func (l *lineLogger) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.logLine(string(l.buf))
		l.buf = nil
	}
}

func (l *lineLogger) ranTests() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen
}
