package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/browsertest"

	"github.com/chromedp/chromedp"
	"github.com/redis/go-redis/v9"

	"github.com/keyfence/keyfence/deploy"
	"github.com/keyfence/keyfence/internal/otlptest"
	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/proxy"
	"github.com/keyfence/keyfence/upstream"
)

// Keys and values of the load: none may appear in a span, a metric label
// or a log line.
const (
	opsKeyPrefix = "opskey-7c1f"
	opsValue     = "opsvalue-93ab"
)

// TestOperations runs keyfence as a real process under load, as an operator
// would: JSON logs, OTLP to a receiver, traces on, the read fallback on, a
// Redis with maxmemory. It checks what the operations side promises —
// metrics over OTLP and on /metrics, spans without keys, the status page in
// headless Chromium (values present and changing; red when Redis is gone),
// one log line per state change, and that every metric the alert rules and
// the dashboard query is one keyfence really exports.
func TestOperations(t *testing.T) {
	chromium := browsertest.Chromium(t)
	up := redistest.StartT(t, redistest.Options{Args: []string{"--maxmemory", "64mb"}})
	rcv := otlptest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	kf := startKeyfence(t, ctx, []string{"--tenant", "ops", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
		"--log-format", "json", "--upstream-probe-interval", "1s", "--fallback", "--breaker-failures", "3",
		"--redis-host", up.Host(), "--redis-port", strings.TrimPrefix(up.Addr(), up.Host()+":")},
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://"+rcv.GRPCAddr, "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
		"OTEL_METRIC_EXPORT_INTERVAL=500", "OTEL_TRACES_SAMPLER=parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG=0.5",
		"OTEL_BSP_SCHEDULE_DELAY=200", "OTEL_SERVICE_NAME=keyfence-ops-test")
	admin := "http://" + kf.adminAddr

	load := startLoad(t, ctx, kf.addr)
	// Wait for traffic to show before looking.
	if err := waitFor(ctx, func() bool { return load.ok.Load() > 200 }); err != nil {
		t.Fatalf("no load through keyfence: %v\n%s", err, kf.logs)
	}

	t.Run("readyz", func(t *testing.T) {
		status, body := httpGet(t, ctx, admin+"/readyz", false, "")
		if status != 200 || body != "ready\n" {
			t.Errorf("/readyz %d %q, want 200 ready", status, body)
		}
	})

	t.Run("otlp", func(t *testing.T) {
		want := []string{"keyfence.commands", "keyfence.command.duration", "keyfence.upstream.duration", "keyfence.client.errors",
			"keyfence.upstream.up", "keyfence.upstream.probes", "keyfence.upstream.memory.used", "keyfence.upstream.memory.limit",
			"keyfence.upstream.memory.utilization", "keyfence.fallback.cache.used", "keyfence.client.connections", "db.client.connection.count"}
		err := rcv.Wait(ctx, func() bool {
			names := rcv.MetricNames()
			for _, w := range want {
				if !slices.Contains(names, w) {
					return false
				}
			}
			for _, s := range rcv.Spans() {
				if s.Kind == "SPAN_KIND_CLIENT" {
					return true
				}
			}
			return false
		})
		if err != nil {
			t.Fatalf("%v: got metrics %v and %d spans", err, rcv.MetricNames(), len(rcv.Spans()))
		}
		for _, m := range rcv.Metrics() {
			if m.Resource["service.name"] != "keyfence-ops-test" || m.Transport != "grpc" {
				t.Fatalf("metric %s from resource %v by %s", m.Name, m.Resource, m.Transport)
			}
			if m.Name == "keyfence.upstream.memory.limit" && len(m.Points) > 0 && m.Points[0].Value != 64<<20 {
				t.Errorf("maxmemory %v over OTLP, want 64 MiB", m.Points[0].Value)
			}
		}
	})

	shots := screenshotDir(t)
	bctx, stopBrowser := browsertest.Start(t, ctx, chromium)
	defer stopBrowser()

	t.Run("status page under load", func(t *testing.T) {
		if err := chromedp.Do(bctx, chromedp.Navigate(admin+"/")); err != nil {
			t.Fatal(err)
		}
		first := waitPolls(t, bctx, 3)
		second := waitPolls(t, bctx, first.polls+2)
		for _, p := range []pageState{first, second} {
			if p.tenant != "ops" || p.upstream != "UP" || p.breaker != "closed" {
				t.Errorf("page shows tenant %q, upstream %q, breaker %q", p.tenant, p.upstream, p.breaker)
			}
			if n, err := strconv.ParseFloat(strings.ReplaceAll(p.cmds, ",", ""), 64); err != nil || n <= 0 {
				t.Errorf("commands/s %q under load", p.cmds)
			}
			if !strings.HasSuffix(p.memRatio, "%") || p.memLimit != "64 MiB" {
				t.Errorf("memory shown as %q of %q", p.memRatio, p.memLimit)
			}
			if !strings.Contains(p.latency, "ms") && !strings.Contains(p.latency, "µs") {
				t.Errorf("client p99 latency %q", p.latency)
			}
			for _, s := range []string{"latency-p99", "error-rate", "availability", "redis-memory"} {
				if p.signals[s] != "ok" {
					t.Errorf("signal %s is %q under a healthy load (%v)", s, p.signals[s], p.signals)
				}
			}
		}
		if first.updated == second.updated || first.uptime == second.uptime {
			t.Errorf("the page did not refresh: updated %q then %q, uptime %q then %q", first.updated, second.updated, first.uptime, second.uptime)
		}
		if first.cmds == second.cmds && first.accepted == second.accepted && first.clientP50 == second.clientP50 {
			t.Errorf("no value changed between two refreshes under load: %+v", second)
		}
		path := filepath.Join(shots, "status-page-healthy.png")
		saveScreenshot(t, bctx, path)
		t.Logf("status page screenshot (healthy, under load): %s", path)
	})

	// Redis goes away: the breaker opens, cached reads are served, and the
	// page turns red.
	if err := up.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Run("status page with upstream down", func(t *testing.T) {
		var p pageState
		err := waitFor(ctx, func() bool {
			p = readPage(t, bctx)
			return p.upstream == "DOWN" && p.signals["availability"] == "firing"
		})
		if err != nil {
			t.Fatalf("%v: the page never showed upstream down: %+v", err, p)
		}
		if p.upstreamErr == "" {
			t.Error("no last error shown for a down upstream")
		}
		// The breaker opens and the cached reads are served; the page
		// says so, and the log gets its one fallback_serving line.
		err = waitFor(ctx, func() bool {
			p = readPage(t, bctx)
			return p.breaker == "open" && strings.HasPrefix(p.fallback, "SERVING") && strings.Contains(kf.logs.String(), `"event":"fallback_serving"`)
		})
		if err != nil {
			t.Fatalf("%v: breaker %q, fallback %q", err, p.breaker, p.fallback)
		}
		path := filepath.Join(shots, "status-page-upstream-down.png")
		saveScreenshot(t, bctx, path)
		t.Logf("status page screenshot (upstream down): %s", path)
	})

	t.Run("readyz with upstream down and the fallback on", func(t *testing.T) {
		status, body := httpGet(t, ctx, admin+"/readyz", false, "")
		if status != 200 || !strings.HasPrefix(body, "ready: upstream down, serving cached reads") {
			t.Errorf("/readyz %d %q", status, body)
		}
	})

	t.Run("metrics the rules and the dashboard use exist", func(t *testing.T) {
		// After the outage, so that the series that appear with their
		// first event (upstream errors by cause) are there too.
		if err := waitFor(ctx, func() bool { return strings.Contains(scrapeMetrics(t, ctx, admin), "keyfence_upstream_errors_total{") }); err != nil {
			t.Fatal(err)
		}
		exported := exportedNames(scrapeMetrics(t, ctx, admin))
		queries, err := deploy.DashboardQueries()
		if err != nil {
			t.Fatal(err)
		}
		for _, expr := range ruleExprs(t) {
			queries = append(queries, deploy.Query{Where: "rule", Expr: expr})
		}
		used := map[string]bool{}
		for _, q := range queries {
			names, err := deploy.MetricNames(q.Expr)
			if err != nil {
				t.Errorf("%s: %q: %v", q.Where, q.Expr, err)
			}
			for _, n := range names {
				used[n] = true
				if !exported[n] {
					t.Errorf("%s queries %s, which keyfence does not export", q.Where, n)
				}
			}
		}
		t.Logf("%d queries use %d metrics, all exported", len(queries), len(used))
	})

	load.stop()
	_ = kf.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-kf.exited; err != nil {
		t.Errorf("keyfence exited with %v", err)
	}
	kf.stopped = true

	t.Run("logs", func(t *testing.T) {
		events := map[string]int{}
		lines := 0
		for _, line := range strings.Split(strings.TrimSpace(kf.logs.String()), "\n") {
			lines++
			var l map[string]any
			if err := json.Unmarshal([]byte(line), &l); err != nil {
				t.Errorf("not a JSON log line: %q", line)
				continue
			}
			if ev, ok := l["event"].(string); ok {
				events[ev]++
			}
			if strings.Contains(line, opsKeyPrefix) || strings.Contains(line, opsValue) {
				t.Errorf("a key or value in the log: %s", line)
			}
		}
		for _, ev := range []string{"upstream_up", "upstream_down", "breaker", "fallback_serving", "draining"} {
			if events[ev] == 0 {
				t.Errorf("no %s line (events %v)", ev, events)
			}
		}
		if events["upstream_down"] != 1 {
			t.Errorf("%d upstream_down lines for one outage", events["upstream_down"])
		}
		// Never a line per command: thousands of commands, a few dozen lines.
		if n := load.ok.Load() + load.failed.Load(); int64(lines) > n/20 || lines > 200 {
			t.Errorf("%d log lines for %d commands:\n%s", lines, n, kf.logs)
		}
	})

	t.Run("spans", func(t *testing.T) {
		spans := rcv.Spans()
		var batches int
		for _, s := range spans {
			if s.Kind == "SPAN_KIND_SERVER" {
				batches++
				if s.Attrs["keyfence.tenant"] != "ops" || s.Attrs["keyfence.commands"] == "" {
					t.Errorf("batch span %s: %v", s.Name, s.Attrs)
				}
			}
			for k, v := range s.Attrs {
				if strings.Contains(k+v, opsKeyPrefix) || strings.Contains(k+v, opsValue) {
					t.Errorf("span %s carries a key or value: %s=%s", s.Name, k, v)
				}
			}
		}
		if batches == 0 {
			t.Error("no batch spans")
		}
	})
}

// TestReadiness: what /readyz says, for Kubernetes and for people, in each
// state keyfence can be in.
func TestReadiness(t *testing.T) {
	live := redistest.StartT(t, redistest.Options{})
	deadPort, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		upstream  string
		fallback  bool
		draining  bool
		ready     bool
		reason    string
		detailHas string
	}{
		{name: "upstream answers", upstream: live.Addr(), ready: true},
		{name: "draining", upstream: live.Addr(), draining: true, reason: "draining"},
		{name: "upstream down, no fallback", upstream: fmt.Sprintf("127.0.0.1:%d", deadPort), reason: "upstream down and the read fallback is off", detailHas: "refused"},
		{name: "upstream down, fallback serving", upstream: fmt.Sprintf("127.0.0.1:%d", deadPort), fallback: true, ready: true, reason: "upstream down, serving cached reads", detailHas: "refused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := proxy.New(proxy.Config{Listen: "127.0.0.1:0", Tenant: "ready", Upstream: upstream.Config{Addr: tc.upstream}})
			if err != nil {
				t.Fatal(err)
			}
			var draining atomic.Bool
			draining.Store(tc.draining)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			rd := readiness(srv, &draining, tc.fallback)(ctx)
			if rd.Ready != tc.ready || !strings.HasPrefix(rd.Reason, tc.reason) {
				t.Fatalf("ready %v reason %q, want %v %q", rd.Ready, rd.Reason, tc.ready, tc.reason)
			}
			if tc.detailHas != "" && (rd.Detail == nil || !strings.Contains(rd.Detail.Error(), tc.detailHas)) {
				t.Errorf("detail %v, want one naming %q", rd.Detail, tc.detailHas)
			}
		})
	}
}

// TestLogFormatFlag: --log-format picks slog's handler; anything else is
// refused at start-up.
func TestLogFormatFlag(t *testing.T) {
	tests := []struct {
		args    []string
		env     map[string]string
		want    string
		wantErr bool
	}{
		{args: []string{"--tenant", "a"}, want: "text"},
		{args: []string{"--tenant", "a", "--log-format", "json"}, want: "json"},
		{args: []string{"--tenant", "a"}, env: map[string]string{"PROXY_LOG_FORMAT": "json"}, want: "json"},
		{args: []string{"--tenant", "a", "--log-format", "logfmt"}, wantErr: true},
		{args: []string{"--tenant", "a", "--upstream-probe-interval", "100ms"}, wantErr: true},
		{args: []string{"--tenant", "a", "--upstream-probe-interval", "2s"}, want: "text"},
	}
	for _, tc := range tests {
		cfg, err := parseConfig(tc.args, func(k string) string { return tc.env[k] }, io.Discard)
		if tc.wantErr {
			if err == nil {
				t.Errorf("%v: accepted", tc.args)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if cfg.logFormat != tc.want {
			t.Errorf("%v %v: format %q, want %q", tc.args, tc.env, cfg.logFormat, tc.want)
		}
	}
}

// keyfenceProc is keyfence run as a child process of the test binary.
type keyfenceProc struct {
	cmd             *exec.Cmd
	logs            *lockedBuffer
	exited          chan error
	addr, adminAddr string
	stopped         bool
}

func startKeyfence(t *testing.T, ctx context.Context, args []string, env ...string) *keyfenceProc {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), runMainEnv+"=1"), env...)
	k := &keyfenceProc{cmd: cmd, logs: &lockedBuffer{}, exited: make(chan error, 1)}
	cmd.Stderr, cmd.Stdout = k.logs, k.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { k.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if !k.stopped {
			_ = cmd.Process.Kill()
			<-k.exited
		}
	})
	// The JSON log's "listening" lines say where.
	err := waitFor(ctx, func() bool {
		select {
		case err := <-k.exited:
			k.stopped = true
			t.Fatalf("keyfence exited (%v):\n%s", err, k.logs)
		default:
		}
		sc := bufio.NewScanner(strings.NewReader(k.logs.String()))
		for sc.Scan() {
			var l struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				continue
			}
			switch l.Msg {
			case "keyfence listening":
				k.addr = l.Addr
			case "admin listening":
				k.adminAddr = l.Addr
			}
		}
		return k.addr != "" && k.adminAddr != ""
	})
	if err != nil {
		t.Fatalf("keyfence did not start: %v\n%s", err, k.logs)
	}
	return k
}

// waitFor polls cond until it holds or ctx ends: a deadline for the test,
// not a threshold anything is judged by.
func waitFor(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// load is a few clients sending a mix of commands until stopped.
type load struct {
	ok, failed atomic.Int64
	stop       func()
}

func startLoad(t *testing.T, ctx context.Context, addr string) *load {
	t.Helper()
	l := &load{}
	lctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	l.stop = func() { cancel(); wg.Wait() }
	t.Cleanup(l.stop)
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 2 * time.Second})
			defer c.Close()
			key := fmt.Sprintf("%s:%d", opsKeyPrefix, w)
			// A key written once and then only read: the read cache
			// holds it, and serves it once Redis is gone.
			stable := key + ":stable"
			_, _ = c.Set(lctx, stable, opsValue, 0).Result()
			for i := 0; lctx.Err() == nil; i++ {
				_, _ = c.Set(lctx, key, opsValue, 0).Result()
				cmds, _ := c.Pipelined(lctx, func(p redis.Pipeliner) error {
					p.Get(lctx, key)
					p.Incr(lctx, key+":n")
					if i%500 == 0 {
						p.HGet(lctx, key, "f") // WRONGTYPE, now and then: a client's own mistake
					}
					p.Get(lctx, stable)
					p.Exists(lctx, key)
					return nil
				})
				for _, cmd := range cmds {
					if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
						l.failed.Add(1)
					} else {
						l.ok.Add(1)
					}
				}
				select { // pace the load: two cores are shared
				case <-lctx.Done():
				case <-time.After(2 * time.Millisecond):
				}
			}
		}()
	}
	return l
}

func scrapeMetrics(t *testing.T, ctx context.Context, admin string) string {
	t.Helper()
	_, body := httpGet(t, ctx, admin+"/metrics", false, "")
	return body
}

// exportedNames are the metric names of a Prometheus text exposition.
func exportedNames(body string) map[string]bool {
	names := map[string]bool{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names
}

// ruleExprs are the expressions of the alert rules file.
var exprLine = regexp.MustCompile(`(?m)^\s+expr: (\|\n)?`)

func ruleExprs(t *testing.T) []string {
	t.Helper()
	rules := string(deploy.AlertRules)
	var out []string
	locs := exprLine.FindAllStringIndex(rules, -1)
	for _, loc := range locs {
		rest := rules[loc[1]:]
		if strings.HasSuffix(rules[loc[0]:loc[1]], "|\n") {
			// A block: the lines indented deeper than "expr:".
			indent := strings.Index(rules[loc[0]:], "expr:")
			var b strings.Builder
			for _, line := range strings.Split(rest, "\n") {
				if strings.TrimSpace(line) != "" && len(line)-len(strings.TrimLeft(line, " ")) <= indent {
					break
				}
				b.WriteString(line + "\n")
			}
			out = append(out, b.String())
			continue
		}
		out = append(out, strings.SplitN(rest, "\n", 2)[0])
	}
	if len(out) < 10 {
		t.Fatalf("found %d rule expressions", len(out))
	}
	return out
}

// pageState is what a person reads off the status page.
type pageState struct {
	polls                             int
	tenant, upstream, upstreamErr     string
	breaker, fallback, cmds, accepted string
	latency                           string
	clientP50, memRatio, memLimit     string
	updated, uptime                   string
	signals                           map[string]string
}

func readPage(t *testing.T, bctx context.Context) pageState {
	t.Helper()
	raw, err := chromedp.Run(bctx, chromedp.Evaluate[string](`JSON.stringify({
		polls: Number(document.body.dataset.polls || 0),
		text: Object.fromEntries(["tenant","fb-state","upstream-state","upstream-error","breaker","cmds","accepted","lat-client-p99","lat-client-p50","mem-ratio","mem-limit","updated","uptime"].map(id => [id, document.getElementById(id).innerText])),
		signals: Object.fromEntries([...document.querySelectorAll(".signal")].map(e => [e.id.replace("signal-", ""), e.dataset.state])),
	})`))
	if err != nil {
		t.Fatalf("reading the page: %v", err)
	}
	var v struct {
		Polls   int
		Text    map[string]string
		Signals map[string]string
	}
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		t.Fatal(err)
	}
	return pageState{polls: v.Polls, tenant: v.Text["tenant"], upstream: v.Text["upstream-state"], upstreamErr: v.Text["upstream-error"],
		breaker: v.Text["breaker"], fallback: v.Text["fb-state"], cmds: v.Text["cmds"], accepted: v.Text["accepted"], latency: v.Text["lat-client-p99"],
		clientP50: v.Text["lat-client-p50"], memRatio: v.Text["mem-ratio"], memLimit: v.Text["mem-limit"],
		updated: v.Text["updated"], uptime: v.Text["uptime"], signals: v.Signals}
}

// waitPolls waits until the page has refreshed itself n times and has a
// window to compute rates over.
func waitPolls(t *testing.T, bctx context.Context, n int) pageState {
	t.Helper()
	var p pageState
	err := waitFor(bctx, func() bool {
		p = readPage(t, bctx)
		return p.polls >= n && p.cmds != "…" && p.cmds != "—"
	})
	if err != nil {
		t.Fatalf("%v: the page did not refresh %d times: %+v", err, n, p)
	}
	return p
}

func saveScreenshot(t *testing.T, bctx context.Context, path string) {
	t.Helper()
	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// screenshotDir is where the status page's screenshots go:
// $KEYFENCE_TEST_OUTPUT, or test-output/ at the top of the repository
// (ignored by git), kept after the test for a person to look at.
func screenshotDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("KEYFENCE_TEST_OUTPUT")
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(wd, "..", "..", "test-output")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
