package proxy_test

import (
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/proxy"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/telemetry"
)

// A client that closes while its BLPOP waits (a BullMQ worker shutting
// down) is the client's doing: keyfence closes the connection it pinned,
// and neither logs an upstream failure nor counts one; it counts the client
// in keyfence_client_closed_while_waiting_total. A real upstream failure
// afterwards is still logged and counted.
func TestClientClosingWhileBlockedIsNoUpstreamFailure(t *testing.T) {
	srv := redistest.StartT(t, redistest.Options{})
	var kf *proxy.Server
	m, err := telemetry.NewMetrics("gone", rewrite.CommandNames(), telemetry.Gauges{
		PinnedConns: func() int64 { return int64(kf.Stats().PinnedConns) },
	})
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	var addr string
	addr, kf = startKeyfence(t, srv, "gone", func(c *proxy.Config) {
		c.Metrics = m
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	const clients = 3
	for i := range clients {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		q := fmt.Sprintf("q%d", i)
		fmt.Fprintf(nc, "*3\r\n$5\r\nBLPOP\r\n$%d\r\n%s\r\n$1\r\n0\r\n", len(q), q)
		waitUntil(t, "the BLPOP blocked upstream", func() bool {
			n, _ := srv.Client().ClientList(t.Context()).Result()
			return strings.Contains(n, "cmd=blpop")
		})
		nc.Close()
		waitUntil(t, "the pinned connection released", func() bool {
			n, _ := srv.Client().ClientList(t.Context()).Result()
			return !strings.Contains(n, "cmd=blpop")
		})
	}
	scrape := func() string {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		return rec.Body.String()
	}
	waitUntil(t, "the closes counted", func() bool {
		return strings.Contains(scrape(), fmt.Sprintf(`keyfence_client_closed_while_waiting_total{otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version="",tenant="gone"} %d`, clients))
	})
	if body := scrape(); strings.Contains(body, "keyfence_upstream_errors_total{") {
		t.Errorf("clients closing counted as upstream errors:\n%s", grepLines(body, "keyfence_upstream_errors_total"))
	}
	if strings.Contains(logs.String(), "upstream failure") {
		t.Errorf("clients closing logged as an upstream failure:\n%s", logs.String())
	}

	// Redis going away is still an upstream failure.
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	c := dialRaw(t, addr)
	if got := c.do("GET", "k"); !strings.HasPrefix(got, "-ERR keyfence: upstream unavailable") {
		t.Fatalf("GET with Redis gone: %q", got)
	}
	if body := scrape(); !strings.Contains(body, "keyfence_upstream_errors_total{") {
		t.Errorf("a dead upstream was not counted")
	}
	if !strings.Contains(logs.String(), "upstream failure") {
		t.Errorf("a dead upstream was not logged")
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 20s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func grepLines(text, substr string) string {
	var out []string
	for l := range strings.Lines(text) {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "")
}
