package telemetry

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestMetricsExported(t *testing.T) {
	m, err := NewMetrics("acme", []string{"get", "set"}, Gauges{Sessions: func() int64 { return 3 }, PinnedConns: func() int64 { return 1 },
		Breaker: func() int64 { return 2 }, FallbackHits: func() int64 { return 7 }, FallbackMisses: func() int64 { return 1 }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m.Command("get", true)
	m.Command("get", false)
	m.Command("nosuch", true)
	m.Batch(ctx, 0.0002)
	m.Upstream(ctx, 0.0001)
	m.UpstreamError(ctx, "connection_refused")
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`keyfence_commands_total{command="get",otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version="",outcome="ok",tenant="acme"} 1`,
		`keyfence_commands_total{command="get",otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version="",outcome="error",tenant="acme"} 1`,
		`command="other"`,
		`keyfence_command_duration_seconds_bucket`,
		`keyfence_upstream_errors_total{cause="connection_refused"`,
		`keyfence_client_connections{otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version="",tenant="acme"} 3`,
		`keyfence_upstream_pinned{`,
		`keyfence_breaker_state{otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version="",tenant="acme"} 2`,
		`keyfence_fallback_reads_total{otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version="",outcome="hit",tenant="acme"} 7`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s\n%s", want, body)
		}
	}
}

// The metrics path runs once per command: it must not allocate.
func BenchmarkMetricsCommand(b *testing.B) {
	m, err := NewMetrics("acme", []string{"get"}, Gauges{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		m.Command("get", true)
	}
}
