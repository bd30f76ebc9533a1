package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

const scopeLabels = `otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version=""`

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func fixed(v int64) func() int64 { return func() int64 { return v } }

func scrapeHandler(t *testing.T, h http.Handler) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics %d: %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// tenantOf asks p for tenant id or fails.
func tenantOf(t *testing.T, p *Provider, id string, g Gauges) *Metrics {
	t.Helper()
	m, err := p.Tenant(id, g)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// commands records n commands of name with reply through m, as one batch
// of the given latency.
func commands(m *Metrics, name string, n int, reply string, latency time.Duration) {
	ctx := context.Background()
	b := m.NewBatch()
	for range n {
		b.Command(name, []byte(reply))
	}
	b.Done(ctx, time.Now().Add(-latency))
}

// One provider, several tenants: every tenant's series carry its own
// tenant label and values, the process's carry none, and a tenant that is
// closed is gone from /metrics — counters, gauges and histograms alike.
func TestProviderTenantSeries(t *testing.T) {
	ctx := context.Background()
	series := func(name, labels string, v string) string {
		if labels == "" {
			return name + "{" + scopeLabels + "} " + v
		}
		return name + "{" + labels + "} " + v
	}
	withScope := func(before, after string) string { // labels sort: before the scope's, then after
		s := before
		if s != "" {
			s += ","
		}
		s += scopeLabels
		if after != "" {
			s += "," + after
		}
		return s
	}
	tests := []struct {
		name   string
		opts   []Option
		run    func(t *testing.T, p *Provider)
		want   []string
		absent []string // substrings no line may contain
	}{
		{
			name: "two tenants and the process",
			opts: []Option{WithProcessGauges(Gauges{Sessions: fixed(2), PinnedConns: fixed(4), PinnedIdle: fixed(1), PinnedMax: fixed(100), Breaker: fixed(0)})},
			run: func(t *testing.T, p *Provider) {
				alpha := tenantOf(t, p, "alpha", Gauges{Sessions: fixed(3), ScriptsLoaded: fixed(5)})
				beta := tenantOf(t, p, "beta", Gauges{Sessions: fixed(7)})
				commands(alpha, "get", 3, "+OK\r\n", 3*time.Millisecond)
				commands(alpha, "set", 1, "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n", 0)
				alpha.UpstreamError(ctx, "timeout")
				alpha.Upstream(ctx, 0.0004)
				commands(beta, "get", 2, "$1\r\nv\r\n", 0)
				beta.Batch(ctx, 0.003)
				p.ClientAccepted()
				p.ClientAccepted()
				p.ClientRejected(RejectMaxClients)
				p.probeOnce(ctx, func(context.Context) (UpstreamMemory, error) {
					return UpstreamMemory{Used: 30, Max: 100, Known: true}, nil
				})
			},
			want: []string{
				series("keyfence_commands_total", withScope(`command="get"`, `outcome="ok",tenant="alpha"`), "3"),
				series("keyfence_commands_total", withScope(`command="set"`, `outcome="error",tenant="alpha"`), "1"),
				series("keyfence_commands_total", withScope(`command="get"`, `outcome="ok",tenant="beta"`), "2"),
				series("keyfence_client_errors_total", withScope(`class="WRONGTYPE"`, `tenant="alpha"`), "1"),
				series("keyfence_client_errors_total", withScope(`class="WRONGTYPE"`, `tenant="beta"`), "0"),
				series("keyfence_upstream_errors_total", withScope(`cause="timeout"`, `tenant="alpha"`), "1"),
				series("keyfence_command_duration_seconds_count", withScope("", `tenant="alpha"`), "2"),
				series("keyfence_command_duration_seconds_count", withScope("", `tenant="beta"`), "2"),
				// beta: one batch of ~0 s and one of exactly 3 ms.
				series("keyfence_command_duration_seconds_bucket", withScope("", `tenant="beta",le="0.0025"`), "1"),
				series("keyfence_command_duration_seconds_bucket", withScope("", `tenant="beta",le="0.005"`), "2"),
				series("keyfence_upstream_duration_seconds_bucket", withScope("", `tenant="alpha",le="0.0005"`), "1"),
				series("keyfence_upstream_duration_seconds_sum", withScope("", `tenant="alpha"`), "0.0004"),
				series("keyfence_client_connections", withScope("", `tenant="alpha"`), "3"),
				series("keyfence_client_connections", withScope("", `tenant="beta"`), "7"),
				series("keyfence_client_connections", "", "2"), // the process: not authenticated yet
				series("keyfence_scripts_loaded", withScope("", `tenant="alpha"`), "5"),
				series("db_client_connection_count", withScope(`db_client_connection_pool_name="pinned",db_client_connection_state="used"`, ""), "3"),
				series("db_client_connection_max", "", "100"),
				series("keyfence_breaker_state", "", "0"),
				series("keyfence_client_connections_accepted_total", "", "2"),
				series("keyfence_client_connections_rejected_total", withScope("", `reason="max_clients"`), "1"),
				series("keyfence_upstream_up", "", "1"),
				series("keyfence_upstream_memory_utilization_ratio", "", "0.3"),
				series("keyfence_tenants", "", "2"),
				series("keyfence_tenants_overflowed", "", "0"),
			},
			absent: []string{`keyfence_scripts_loaded{` + scopeLabels + `,tenant="beta"}`, `keyfence_upstream_up{` + scopeLabels + `,tenant=`,
				`keyfence_tenants{` + scopeLabels + `,tenant=`, `tenant="_overflow"`},
		},
		{
			name: "close takes a tenant's series away",
			run: func(t *testing.T, p *Provider) {
				alpha := tenantOf(t, p, "alpha", Gauges{Sessions: fixed(3)})
				beta := tenantOf(t, p, "beta", Gauges{Sessions: fixed(7), FallbackCache: func() CacheStats { return CacheStats{Bytes: 1} }})
				for _, m := range []*Metrics{alpha, beta} {
					commands(m, "get", 1, "-ERR x\r\n", time.Millisecond)
					m.Upstream(ctx, 0.001)
					m.UpstreamError(ctx, "oom")
					m.ClientAccepted()
				}
				_ = scrapeHandler(t, p.Handler()) // beta is exported once
				beta.Close()
				beta.Close()                           // a second Close is a no-op
				commands(beta, "get", 1, "+OK\r\n", 0) // recording into a closed one goes nowhere
			},
			want: []string{
				series("keyfence_commands_total", withScope(`command="get"`, `outcome="error",tenant="alpha"`), "1"),
				series("keyfence_upstream_errors_total", withScope(`cause="oom"`, `tenant="alpha"`), "1"),
				series("keyfence_command_duration_seconds_count", withScope("", `tenant="alpha"`), "1"),
				series("keyfence_tenants", "", "1"),
			},
			absent: []string{`tenant="beta"`},
		},
		{
			name: "a closed tenant asked for again starts from zero",
			run: func(t *testing.T, p *Provider) {
				beta := tenantOf(t, p, "beta", Gauges{})
				commands(beta, "get", 5, "+OK\r\n", 0)
				beta.Close()
				beta = tenantOf(t, p, "beta", Gauges{})
				commands(beta, "get", 1, "+OK\r\n", 0)
			},
			want: []string{
				series("keyfence_commands_total", withScope(`command="get"`, `outcome="ok",tenant="beta"`), "1"),
				series("keyfence_command_duration_seconds_count", withScope("", `tenant="beta"`), "1"),
			},
		},
		{
			name: "a tenant held twice is exported until both close",
			run: func(t *testing.T, p *Provider) {
				a1 := tenantOf(t, p, "alpha", Gauges{})
				a2 := tenantOf(t, p, "alpha", Gauges{Sessions: fixed(9)}) // the first one's gauges stay
				if a1 != a2 {
					t.Error("the same tenant twice is two *Metrics")
				}
				commands(a2, "get", 2, "+OK\r\n", 0)
				a1.Close()
			},
			want:   []string{series("keyfence_commands_total", withScope(`command="get"`, `outcome="ok",tenant="alpha"`), "2"), series("keyfence_tenants", "", "1")},
			absent: []string{`keyfence_client_connections{`},
		},
		{
			name: "past the cap tenants share _overflow",
			opts: []Option{WithMaxTenants(2)},
			run: func(t *testing.T, p *Provider) {
				alpha := tenantOf(t, p, "alpha", Gauges{})
				beta := tenantOf(t, p, "beta", Gauges{})
				gamma := tenantOf(t, p, "gamma", Gauges{Sessions: fixed(4)})
				delta := tenantOf(t, p, "delta", Gauges{})
				if gamma != delta || gamma.Tenant() != OverflowTenant || alpha.Tenant() != "alpha" {
					t.Errorf("past the cap: gamma %q, delta %q, same %v", gamma.Tenant(), delta.Tenant(), gamma == delta)
				}
				commands(alpha, "get", 1, "+OK\r\n", 0)
				commands(beta, "get", 2, "+OK\r\n", 0)
				commands(gamma, "get", 3, "+OK\r\n", 0)
				commands(delta, "get", 4, "+OK\r\n", 0)
				alpha.Close() // room now, but gamma and delta stay where they are
			},
			want: []string{
				series("keyfence_commands_total", withScope(`command="get"`, `outcome="ok",tenant="beta"`), "2"),
				series("keyfence_commands_total", withScope(`command="get"`, `outcome="ok",tenant="_overflow"`), "7"),
				series("keyfence_command_duration_seconds_count", withScope("", `tenant="_overflow"`), "2"),
				series("keyfence_tenants", "", "1"),
				series("keyfence_tenants_overflowed", "", "2"),
			},
			absent: []string{`tenant="gamma"`, `tenant="delta"`, `tenant="alpha"`, `keyfence_client_connections{`},
		},
		{
			name: "the overflow goes with its last holder",
			opts: []Option{WithMaxTenants(1)},
			run: func(t *testing.T, p *Provider) {
				_ = tenantOf(t, p, "alpha", Gauges{})
				beta := tenantOf(t, p, "beta", Gauges{})
				gamma := tenantOf(t, p, "gamma", Gauges{})
				commands(beta, "get", 1, "+OK\r\n", 0)
				beta.Close()
				if s := scrapeHandler(t, p.Handler()); !strings.Contains(s, `tenant="_overflow"`) || !strings.Contains(s, series("keyfence_tenants_overflowed", "", "1")) {
					t.Errorf("the overflow went while gamma holds it:\n%s", s)
				}
				gamma.Close()
			},
			want:   []string{series("keyfence_tenants_overflowed", "", "0"), series("keyfence_tenants", "", "1")},
			absent: []string{`tenant="_overflow"`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewProvider([]string{"get", "set"}, append([]Option{WithLogger(quiet())}, tc.opts...)...)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Shutdown(ctx)
			tc.run(t, p)
			body := scrapeHandler(t, p.Handler())
			lines := strings.Split(body, "\n")
			for _, w := range tc.want {
				found := false
				for _, l := range lines {
					found = found || l == w
				}
				if !found {
					t.Errorf("/metrics lacks the line %s", w)
				}
			}
			for _, a := range tc.absent {
				for _, l := range lines {
					if strings.Contains(l, a) && !strings.HasPrefix(l, "#") {
						t.Errorf("/metrics has %s: %s", a, l)
					}
				}
			}
			if t.Failed() {
				t.Log(body)
			}
		})
	}
}

func TestProviderRefuses(t *testing.T) {
	p, err := NewProvider(nil, WithLogger(quiet()))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{OverflowTenant, ""} {
		if _, err := p.Tenant(id, Gauges{}); err == nil {
			t.Errorf("tenant %q accepted", id)
		}
	}
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Tenant("late", Gauges{}); err == nil {
		t.Error("a tenant accepted after Shutdown")
	}
	if _, err := NewProvider(nil, WithMaxTenants(0)); err == nil {
		t.Error("WithMaxTenants(0) accepted")
	}
}

// The SDK returns the same instrument for the same name, kind, unit and
// description, which is what lets each tenant observe the provider's
// instruments with a callback of its own: an instrument made again and
// observed lands in the same metric, not in a second one that /metrics
// would refuse.
func TestInstrumentsShared(t *testing.T) {
	p, err := NewProvider([]string{"get"}, WithLogger(quiet()))
	if err != nil {
		t.Fatal(err)
	}
	m := tenantOf(t, p, "alpha", Gauges{})
	commands(m, "get", 1, "+OK\r\n", 0)
	again, err := p.meter.Int64ObservableCounter("keyfence.commands", metric.WithUnit("{command}"),
		metric.WithDescription("Commands handled, by command, tenant and outcome (error: the reply was an error)"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(again, 5, metric.WithAttributes(attribute.String("command", "get"), attribute.String("outcome", "ok"), attribute.String("tenant", "other")))
		return nil
	}, again)
	if err != nil {
		t.Fatal(err)
	}
	body := scrapeHandler(t, p.Handler())
	if strings.Count(body, "# TYPE keyfence_commands_total counter") != 1 ||
		!strings.Contains(body, `tenant="alpha"} 1`) || !strings.Contains(body, `tenant="other"} 5`) {
		t.Errorf("the instrument made twice is not one metric:\n%s", body)
	}
}

// A tenant's log lines carry tenant=<id>, the process's none; a tenant
// past the cap is named in the warning that puts it under _overflow.
func TestProviderLogsByTenant(t *testing.T) {
	var buf bytes.Buffer
	log, _ := NewLogger(&buf, LogJSON, slog.LevelInfo)
	var drops int64
	p, err := NewProvider(nil, WithLogger(log), WithMaxTenants(1), WithProcessGauges(Gauges{RequestBufferRejections: func() int64 { return drops }}))
	if err != nil {
		t.Fatal(err)
	}
	acme := tenantOf(t, p, "acme", Gauges{OutputDisconnects: func() int64 { return drops }})
	_ = tenantOf(t, p, "zeta", Gauges{})
	t0 := time.Unix(1_000_000, 0)
	for i := range 3 {
		p.watch.tick(t0.Add(time.Duration(i) * time.Second))
		acme.limitRefs.tick(t0.Add(time.Duration(i) * time.Second))
		drops++
	}
	p.probeOnce(context.Background(), func(context.Context) (UpstreamMemory, error) { return UpstreamMemory{}, nil })
	got := map[string]map[string]any{}
	for _, l := range logLines(t, &buf) {
		key := l["event"].(string)
		if v, ok := l["limit"]; ok {
			key += "/" + v.(string)
		}
		got[key] = l
	}
	for _, want := range []struct {
		key, tenant string // tenant "": no tenant field
	}{
		{"limit_hit/output_buffer", "acme"},
		{"limit_hit/request_buffer", ""},
		{"limit_hit/max_tenants", "zeta"},
		{"upstream_up", ""},
	} {
		l, ok := got[want.key]
		if !ok {
			t.Errorf("no %s line in\n%s", want.key, buf.String())
			continue
		}
		if tenant, has := l["tenant"]; want.tenant == "" && has || want.tenant != "" && tenant != want.tenant {
			t.Errorf("%s: tenant %v, want %q", want.key, l["tenant"], want.tenant)
		}
	}
}

// A gateway's status page: the figures of every tenant together, and the
// tenants one by one, busiest first, at most statusMaxTenants of them.
func TestGatewayStatus(t *testing.T) {
	ctx := context.Background()
	p, err := NewProvider([]string{"get"}, WithLogger(quiet()), WithMaxTenants(100))
	if err != nil {
		t.Fatal(err)
	}
	const n = statusMaxTenants + 5
	var ms []*Metrics
	for i := range n {
		ms = append(ms, tenantOf(t, p, fmt.Sprintf("t%02d", i), Gauges{Sessions: fixed(int64(i % 3))}))
	}
	base, err := p.snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range ms {
		commands(m, "get", 10*i, "+OK\r\n", time.Millisecond) // t54 is the busiest
		commands(m, "get", i%2, "-ERR x\r\n", 0)
	}
	cur, err := p.snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	base.at = cur.at.Add(-10 * time.Second)
	s := p.buildStatus(cur, &base)
	if s.Tenant != "" || s.Tenants == nil {
		t.Fatalf("tenant %q, tenants %v", s.Tenant, s.Tenants)
	}
	ts := s.Tenants
	if ts.Count != n || ts.Max != 100 || len(ts.Top) != statusMaxTenants || ts.More != n-statusMaxTenants {
		t.Errorf("count %d max %d listed %d more %d", ts.Count, ts.Max, len(ts.Top), ts.More)
	}
	want := []tenantRate{{Tenant: "t54", Clients: 0, Commands: 54}, {Tenant: "t53", Clients: 2, Commands: 53.1, Errors: 0.1}}
	for i, w := range want {
		if got := ts.Top[i]; got != w {
			t.Errorf("busiest %d: %+v, want %+v", i, got, w)
		}
	}
	for i := 1; i < len(ts.Top); i++ {
		if ts.Top[i].Commands > ts.Top[i-1].Commands {
			t.Errorf("not sorted: %+v after %+v", ts.Top[i], ts.Top[i-1])
		}
	}
	// The whole: 10*(0+…+54) + 27 error replies in 10 s.
	if want := (10.0*54*55/2 + 27) / 10; s.Commands != want || s.Errors != 2.7 {
		t.Errorf("commands/s %v errors/s %v, want %v and 2.7", s.Commands, s.Errors, want)
	}
	if s.Connections.Clients != 54 { // 18 tenants each of 0, 1 and 2... plus one of 0
		t.Errorf("clients %v, want 54", s.Connections.Clients)
	}

	// /status.json through the admin handler, as the page reads it; a
	// sidecar's has no tenants list.
	sidecar, err := NewMetrics("acme", nil, Gauges{}, WithLogger(quiet()))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		status func(context.Context) (*Status, error)
		want   []string
		absent string
	}{
		{"gateway", p.Status, []string{`"tenant":""`, `"tenants":{"count":55,"max":100,"overflowed":0,"top":[{"tenant":`}, ""},
		{"sidecar", sidecar.Status, []string{`"tenant":"acme"`}, `"tenants"`},
	} {
		rec := httptest.NewRecorder()
		adminHandler(nil, nil, AdminOptions{Status: tc.status}).ServeHTTP(rec, httptest.NewRequest("GET", "/status.json", nil))
		var v map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(rec.Body.String(), w) {
				t.Errorf("%s: /status.json lacks %s: %s", tc.name, w, rec.Body)
			}
		}
		if tc.absent != "" && strings.Contains(rec.Body.String(), tc.absent) {
			t.Errorf("%s: /status.json has %s", tc.name, tc.absent)
		}
	}
}

// Tenants come and go while sessions record and scrapes collect: no race,
// no deadlock (Close unregisters while a collection may be running), and
// the survivors' figures are whole.
func TestTenantsComeAndGoUnderScrape(t *testing.T) {
	p, err := NewProvider([]string{"get"}, WithLogger(quiet()), WithMaxTenants(4))
	if err != nil {
		t.Fatal(err)
	}
	stay := tenantOf(t, p, "stay", Gauges{Sessions: fixed(1)})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				m, err := p.Tenant(fmt.Sprintf("w%d-%d", w, i%3), Gauges{Sessions: fixed(2)})
				if err != nil {
					t.Error(err)
					return
				}
				commands(m, "get", 3, "+OK\r\n", 0)
				m.Close()
			}
		})
	}
	wg.Go(func() {
		for ctx.Err() == nil {
			_ = scrapeHandler(t, p.Handler())
			if _, err := p.Status(context.Background()); err != nil {
				t.Error(err)
			}
		}
	})
	const perWorker = 1000
	for range perWorker {
		commands(stay, "get", 1, "+OK\r\n", 0)
	}
	wg.Wait()
	body := scrapeHandler(t, p.Handler())
	if !strings.Contains(body, `keyfence_commands_total{command="get",`+scopeLabels+`,outcome="ok",tenant="stay"} 1000`) {
		t.Errorf("stay's count is not whole:\n%s", body)
	}
	if !strings.Contains(body, "keyfence_tenants{"+scopeLabels+"} 1\n") || !strings.Contains(body, "keyfence_tenants_overflowed{"+scopeLabels+"} 0\n") {
		t.Errorf("tenants left behind:\n%s", body)
	}
}
