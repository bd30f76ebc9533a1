package nodetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
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

	"github.com/keyfence/keyfence/internal/gatewaytest"
	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/proxy"
	"github.com/keyfence/keyfence/upstream"
)

// nodeTimeout bounds the whole `node --test` run; the tests themselves aim
// at well under a minute.
const nodeTimeout = 3 * time.Minute

// nodeTenant is one entry of KF_TENANTS, the tenants bullmq.test.mjs runs.
type nodeTenant struct {
	ID       string `json:"id"`
	Addr     string `json:"addr"` // host:port of the tenant's keyfence
	Protocol int    `json:"protocol"`
	// Username and Password pick the tenant at a gateway; empty in
	// sidecar mode.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
}

// TestNode runs the Node.js tests of this directory in sidecar mode: two
// tenants, each with a keyfence of its own, in front of one real Redis.
func TestNode(t *testing.T) {
	node := requireNodeSetup(t)
	srv := redistest.StartT(t, redistest.Options{})
	tenants := []nodeTenant{
		{ID: "a", Addr: startTenant(t, srv, "a"), Protocol: 3},
		{ID: "b", Addr: startTenant(t, srv, "b"), Protocol: 2},
	}
	runNode(t, node, srv, tenants)
	logUpstream(t, srv, tenants)
}

// TestNodeGateway runs the Node.js tests of this directory in gateway mode:
// three tenants' applications share one keyfence and pick their tenant with
// ioredis's username and password, in BullMQ's connection options. Tenants
// a and b run upstream as the gateway's own, unrestricted user, so that
// keyfence alone keeps them apart; tenant c names an upstream ACL user of
// its own (defence in depth).
func TestNodeGateway(t *testing.T) {
	node := requireNodeSetup(t)
	srv := redistest.StartT(t, redistest.Options{})
	cUser, cPass := "keyfence-c", randomHex(t)
	if err := srv.AddTenantUser(t.Context(), cUser, cPass, "c"); err != nil {
		t.Fatal(err)
	}
	list := []gatewaytest.Tenant{
		{ID: "a", Password: randomHex(t)},
		{ID: "b", Password: randomHex(t)},
		{ID: "c", Password: randomHex(t), UpstreamUser: cUser, UpstreamPassword: cPass},
	}
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})).With("keyfence", "gateway")
	g, addr := gatewaytest.Start(t, srv.Addr(), gatewaytest.File(t, list), log)
	protocols := []int{3, 2, 3}
	var tenants []nodeTenant
	for i, tn := range list {
		tenants = append(tenants, nodeTenant{ID: tn.ID, Addr: addr, Protocol: protocols[i], Username: tn.ID, Password: tn.Password})
	}
	runNode(t, node, srv, tenants)
	logUpstream(t, srv, tenants)
	st := g.Stats()
	t.Logf("gateway: %d tenants started, %d AUTHs refused", st.Tenants, st.AuthFailed)
	if st.Tenants != len(list) || st.AuthFailed != 0 {
		t.Errorf("gateway stats %+v: want %d tenants started and no AUTH refused", st, len(list))
	}
}

// runNode runs `node --test` here against tenants, with the real Redis at
// srv for the isolation checks, and fails the test when node does.
func runNode(t *testing.T, node string, srv *redistest.Server, tenants []nodeTenant) {
	t.Helper()
	list, err := json.Marshal(tenants)
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(),
		"REDIS_ADMIN="+srv.Addr(),
		"KF_TENANTS="+string(list),
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
	err = cmd.Run()
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

// logUpstream checks, once node has exited, that every key of the real
// Redis is under one of the tenants' prefixes, and logs each tenant's keys
// and completed jobs as Redis itself holds them.
func logUpstream(t *testing.T, srv *redistest.Server, tenants []nodeTenant) {
	t.Helper()
	ctx := t.Context()
	admin := srv.Client()
	keys := map[string]int{}
	var outside []string
	var cursor uint64
	for range 100_000 { // bounded: a few hundred keys, 1,000 a page
		page, next, err := admin.Scan(ctx, cursor, "*", 1000).Result()
		if err != nil {
			t.Fatalf("upstream SCAN: %v", err)
		}
	key:
		for _, k := range page {
			for _, tn := range tenants {
				if strings.HasPrefix(k, "tenant:"+tn.ID+":") {
					keys[tn.ID]++
					continue key
				}
			}
			outside = append(outside, k)
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	if len(outside) > 0 {
		sort.Strings(outside)
		t.Errorf("%d upstream keys outside every tenant's namespace: %q", len(outside), outside)
	}
	for _, tn := range tenants {
		var jobs []string
		for _, q := range []string{"orders", "shipping"} {
			n, err := admin.ZCard(ctx, "tenant:"+tn.ID+":bull:"+q+":completed").Result()
			if err != nil {
				t.Fatalf("upstream ZCARD: %v", err)
			}
			if n == 0 {
				t.Errorf("tenant %s: no completed %s jobs upstream", tn.ID, q)
			}
			jobs = append(jobs, fmt.Sprintf("%s=%d", q, n))
		}
		t.Logf("upstream: tenant %s (RESP%d) has %d keys, completed jobs %s", tn.ID, tn.Protocol, keys[tn.ID], strings.Join(jobs, " "))
	}
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
