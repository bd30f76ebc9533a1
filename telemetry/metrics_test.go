package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// fullGauges feeds every optional metric with a fixed value.
func fullGauges() Gauges {
	n := func(v int64) func() int64 { return func() int64 { return v } }
	return Gauges{Sessions: n(3), PinnedConns: n(5), PinnedIdle: n(2), PinnedMax: n(1000),
		Breaker: n(2), FallbackHits: n(7), FallbackMisses: n(1),
		FallbackCache:     func() CacheStats { return CacheStats{Bytes: 4096, Entries: 12, Evictions: 4} },
		OutputDisconnects: n(6), RequestBufferRejections: n(8), RequestBufferBytes: n(1 << 20), RequestBufferLimit: n(1 << 30),
		ScriptsLoaded: n(9), ScriptsMax: n(1000)}
}

// wantMetrics fails t for each of wants that body (a /metrics scrape)
// lacks.
func wantMetrics(t *testing.T, body string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	return string(body)
}

// Every metric keyfence exports, with its Prometheus name (unit suffixes
// included) and the labels it is grouped by.
func TestMetricsExported(t *testing.T) {
	m, err := NewMetrics("acme", []string{"get", "set"}, fullGauges(), WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b := m.NewBatch()
	b.Upstream(ctx, time.Now())
	b.UpstreamError(ctx, "connection_refused")
	b.Command("get", []byte("$1\r\nv\r\n"))
	b.Command("get", []byte("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"))
	b.Command("nosuch", []byte("+OK\r\n"))
	b.Command("set", []byte("-ERR keyfence: upstream unavailable, the command may not have run\r\n"))
	b.Done(ctx, time.Now())
	m.ClientAccepted()
	m.ClientRejected(RejectMaxClients)
	m.probeOnce(ctx, func(context.Context) (UpstreamMemory, error) {
		return UpstreamMemory{Used: 800, Max: 1000, Known: true}, nil
	})
	body := scrape(t, m)
	const scope = `otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version=""`
	wantMetrics(t, body,
		`keyfence_commands_total{command="get",`+scope+`,outcome="ok",tenant="acme"} 1`,
		`keyfence_commands_total{command="get",`+scope+`,outcome="error",tenant="acme"} 1`,
		`keyfence_commands_total{command="other",`+scope+`,outcome="ok",tenant="acme"} 1`,
		`keyfence_client_errors_total{class="WRONGTYPE",`+scope+`,tenant="acme"} 1`,
		`keyfence_client_errors_total{class="UNAVAILABLE",`+scope+`,tenant="acme"} 1`,
		`keyfence_client_errors_total{class="OOM",`+scope+`,tenant="acme"} 0`,
		`keyfence_command_duration_seconds_bucket{`+scope+`,tenant="acme",le="2"} 1`,
		`keyfence_upstream_duration_seconds_count{`+scope+`,tenant="acme"} 1`,
		`keyfence_upstream_errors_total{cause="connection_refused",`+scope+`,tenant="acme"} 1`,
		`keyfence_client_connections{`+scope+`,tenant="acme"} 3`,
		`keyfence_client_connections_accepted_total{`+scope+`,tenant="acme"} 1`,
		`keyfence_client_connections_rejected_total{`+scope+`,reason="max_clients",tenant="acme"} 1`,
		`keyfence_client_connections_rejected_total{`+scope+`,reason="draining",tenant="acme"} 0`,
		`db_client_connection_count{db_client_connection_pool_name="pinned",db_client_connection_state="used",`+scope+`,tenant="acme"} 3`,
		`db_client_connection_count{db_client_connection_pool_name="pinned",db_client_connection_state="idle",`+scope+`,tenant="acme"} 2`,
		`db_client_connection_max{`+scope+`,tenant="acme"} 1000`,
		`keyfence_breaker_state{`+scope+`,tenant="acme"} 2`,
		`keyfence_fallback_reads_total{`+scope+`,outcome="hit",tenant="acme"} 7`,
		`keyfence_fallback_cache_used_bytes{`+scope+`,tenant="acme"} 4096`,
		`keyfence_fallback_cache_entries{`+scope+`,tenant="acme"} 12`,
		`keyfence_fallback_cache_evictions_total{`+scope+`,tenant="acme"} 4`,
		`keyfence_client_output_disconnects_total{`+scope+`,tenant="acme"} 6`,
		`keyfence_request_buffer_rejections_total{`+scope+`,tenant="acme"} 8`,
		`keyfence_request_buffer_used_bytes{`+scope+`,tenant="acme"} 1.048576e+06`,
		`keyfence_request_buffer_limit_bytes{`+scope+`,tenant="acme"} 1.073741824e+09`,
		`keyfence_scripts_loaded{`+scope+`,tenant="acme"} 9`,
		`keyfence_scripts_limit{`+scope+`,tenant="acme"} 1000`,
		`keyfence_upstream_up{`+scope+`,tenant="acme"} 1`,
		`keyfence_upstream_probes_total{`+scope+`,result="success",tenant="acme"} 1`,
		`keyfence_upstream_memory_used_bytes{`+scope+`,tenant="acme"} 800`,
		`keyfence_upstream_memory_limit_bytes{`+scope+`,tenant="acme"} 1000`,
		`keyfence_upstream_memory_utilization_ratio{`+scope+`,tenant="acme"} 0.8`,
	)
	if t.Failed() {
		t.Log(body)
	}
}

// Before the first probe there is no verdict: keyfence_upstream_up is
// absent rather than a false 0, and there is no memory figure.
func TestUpstreamGaugesBeforeTheFirstProbe(t *testing.T) {
	m, err := NewMetrics("acme", nil, Gauges{})
	if err != nil {
		t.Fatal(err)
	}
	body := scrape(t, m)
	for _, absent := range []string{"keyfence_upstream_up{", "keyfence_upstream_memory_used_bytes{", "keyfence_upstream_memory_utilization_ratio{"} {
		if strings.Contains(body, absent) {
			t.Errorf("/metrics has %s before any probe", absent)
		}
	}
}

func TestErrorClass(t *testing.T) {
	tests := []struct {
		reply string
		class string
	}{
		{"-ERR unknown command 'FOO'\r\n", "ERR"},
		{"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n", "WRONGTYPE"},
		{"-NOPERM this user has no permissions\r\n", "NOPERM"},
		{"-OOM command not allowed when used memory > 'maxmemory'.\r\n", "OOM"},
		{"-ERR keyfence: upstream unavailable, the command may not have run: is Redis running? (refused)\r\n", "UNAVAILABLE"},
		{"-TRYAGAIN keyfence: upstream unavailable (circuit breaker open); retry later\r\n", "UNAVAILABLE"},
		{"-TRYAGAIN Multiple keys request during rehashing of slot\r\n", "TRYAGAIN"},
		{"-ERR keyfence: too many pinned upstream connections (--max-pinned); try again later\r\n", "LIMIT"},
		{"-ERR keyfence: request buffer budget exhausted: too many clients\r\n", "LIMIT"},
		{"-ERR keyfence: command 'config' is refused\r\n", "ERR"},
		{"-MOVED 3999 127.0.0.1:6381\r\n", "MOVED"},
		{"-SOMETHINGNEW whatever\r\n", "OTHER"},
		{"-\r\n", "OTHER"},
		{"-ERR\r\n", "ERR"},
		{"+OK\r\n", "OTHER"},
		{"-" + strings.Repeat("X", 100) + "\r\n", "OTHER"},
	}
	for _, tc := range tests {
		if got := classNames[errorClass([]byte(tc.reply))]; got != tc.class {
			t.Errorf("errorClass(%q) = %s, want %s", tc.reply, got, tc.class)
		}
	}
}

// A blocking command's batch waits as long as the client asked: it is
// counted but left out of the latency histogram the latency alert reads.
func TestBlockingBatchLeftOutOfLatency(t *testing.T) {
	m, err := NewMetrics("acme", []string{"get", "blpop"}, Gauges{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b := m.NewBatch()
	b.Command("get", []byte("$-1\r\n"))
	b.Done(ctx, time.Now())
	b.Blocking()
	b.Command("blpop", []byte("*-1\r\n"))
	b.Done(ctx, time.Now())
	b.Command("get", []byte("$-1\r\n")) // Done reset the mark
	b.Done(ctx, time.Now())
	body := scrape(t, m)
	wantMetrics(t, body, `keyfence_command_duration_seconds_count{otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version="",tenant="acme"} 2`,
		`command="blpop",otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version="",outcome="ok",tenant="acme"} 1`)
}

// A Batch remembers the last command name's counters: a run of one name,
// then a change of name, then an unknown one and back must each land on
// their own counter.
func TestBatchCommandCountsEachName(t *testing.T) {
	m, err := NewMetrics("acme", []string{"get", "set"}, Gauges{})
	if err != nil {
		t.Fatal(err)
	}
	b := m.NewBatch()
	for _, name := range []string{"get", "get", "set", "nosuch", "get", "nosuch", "set", "", "get"} {
		b.Command(name, []byte("+OK\r\n"))
	}
	b.Done(context.Background(), time.Now())
	body := scrape(t, m)
	const scope = `otel_scope_name="github.com/keyfence/keyfence",otel_scope_schema_url="",otel_scope_version=""`
	wantMetrics(t, body,
		`keyfence_commands_total{command="get",`+scope+`,outcome="ok",tenant="acme"} 4`,
		`keyfence_commands_total{command="set",`+scope+`,outcome="ok",tenant="acme"} 2`,
		`keyfence_commands_total{command="other",`+scope+`,outcome="ok",tenant="acme"} 3`,
	)
}

// A nil *Metrics and a nil *Batch record nothing and do not panic: a proxy
// without metrics calls the same hooks.
func TestNilRecorders(t *testing.T) {
	var m *Metrics
	b := m.NewBatch()
	ctx := context.Background()
	b.Blocking()
	b.Upstream(ctx, time.Now())
	b.UpstreamError(ctx, "timeout")
	b.Command("get", []byte("-ERR x\r\n"))
	b.Done(ctx, time.Now())
	m.ClientAccepted()
	m.ClientRejected(RejectDraining)
	if b != nil {
		t.Fatal("NewBatch of a nil *Metrics is not nil")
	}
}

func TestQuantilesFromBuckets(t *testing.T) {
	bounds := []float64{0.001, 0.01, 0.1, 1, 2}
	tests := []struct {
		name       string
		base, cur  []uint64
		p50, p99   float64
		noQuantile bool
	}{
		// 100 in (0.001, 0.01]: the median interpolates to the middle.
		{name: "one bucket", base: make([]uint64, 6), cur: []uint64{0, 100, 0, 0, 0, 0}, p50: 0.0055, p99: 0.00991},
		{name: "only the window counts", base: []uint64{1000, 0, 0, 0, 0, 0}, cur: []uint64{1000, 100, 0, 0, 0, 0}, p50: 0.0055, p99: 0.00991},
		{name: "slow tail", base: make([]uint64, 6), cur: []uint64{0, 98, 0, 0, 2, 0}, p50: 0.001 + 0.009*50/98, p99: 1.5},
		{name: "past the last bound", base: make([]uint64, 6), cur: []uint64{0, 0, 0, 0, 0, 10}, p50: 2, p99: 2},
		{name: "nothing in the window", base: []uint64{5, 0, 0, 0, 0, 0}, cur: []uint64{5, 0, 0, 0, 0, 0}, noQuantile: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := quantilesOf(hist{bounds: bounds, counts: tc.cur}, hist{bounds: bounds, counts: tc.base})
			if tc.noQuantile {
				if q.P50 != nil {
					t.Fatalf("p50 %v of an empty window", *q.P50)
				}
				return
			}
			if q.P50 == nil || q.P99 == nil {
				t.Fatal("no quantiles")
			}
			if d := *q.P50 - tc.p50; d > 1e-9 || d < -1e-9 {
				t.Errorf("p50 = %v, want %v", *q.P50, tc.p50)
			}
			if d := *q.P99 - tc.p99; d > 1e-9 || d < -1e-9 {
				t.Errorf("p99 = %v, want %v", *q.P99, tc.p99)
			}
		})
	}
}

// The status page's figures: rates over the window between two readings,
// and the four signals against the alert thresholds.
func TestStatusSignals(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		record func(m *Metrics, b *Batch)
		firing map[string]bool // by signal name; absent: not firing
		check  func(t *testing.T, s *Status)
	}{
		{name: "healthy", record: func(m *Metrics, b *Batch) {
			for range 1000 {
				b.Command("get", []byte("+OK\r\n"))
			}
			b.Done(ctx, time.Now())
			m.probeOnce(ctx, func(context.Context) (UpstreamMemory, error) {
				return UpstreamMemory{Used: 10, Max: 100, Known: true}, nil
			})
		}, check: func(t *testing.T, s *Status) {
			if s.Commands != 100 { // 1000 commands in 10 s
				t.Errorf("commands/s %v, want 100", s.Commands)
			}
			if s.Availability == nil || *s.Availability != 1 {
				t.Errorf("availability %v, want 1", s.Availability)
			}
			if len(s.TopCommands) != 1 || s.TopCommands[0].Command != "get" {
				t.Errorf("top commands %+v", s.TopCommands)
			}
		}},
		{name: "upstream down", record: func(m *Metrics, b *Batch) {
			for range 100 {
				b.Command("get", []byte("-ERR keyfence: upstream unavailable, the command may not have run\r\n"))
			}
			b.Done(ctx, time.Now())
			m.probeOnce(ctx, func(context.Context) (UpstreamMemory, error) { return UpstreamMemory{}, errors.New("refused") })
		}, firing: map[string]bool{"Error rate": true, "Availability": true}, check: func(t *testing.T, s *Status) {
			if s.Upstream.Up == nil || *s.Upstream.Up || s.Upstream.LastErr != "refused" {
				t.Errorf("upstream %+v", s.Upstream)
			}
			if s.ErrorClasses["UNAVAILABLE"] != 10 {
				t.Errorf("error classes %v", s.ErrorClasses)
			}
		}},
		{name: "client mistakes are errors but not unavailability", record: func(m *Metrics, b *Batch) {
			for i := range 100 {
				reply := "+OK\r\n"
				if i < 5 {
					reply = "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
				}
				b.Command("get", []byte(reply))
			}
			b.Done(ctx, time.Now())
		}, firing: map[string]bool{"Error rate": true}},
		{name: "slow and full", record: func(m *Metrics, b *Batch) {
			b.Command("get", []byte("+OK\r\n"))
			b.Done(ctx, time.Now().Add(-3*time.Second))
			m.probeOnce(ctx, func(context.Context) (UpstreamMemory, error) {
				return UpstreamMemory{Used: 90, Max: 100, Known: true}, nil
			})
		}, firing: map[string]bool{"Latency p99": true, "Redis memory": true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := NewMetrics("acme", []string{"get"}, fullGauges(), WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
			if err != nil {
				t.Fatal(err)
			}
			base, err := m.snapshot(ctx)
			if err != nil {
				t.Fatal(err)
			}
			tc.record(m, m.NewBatch())
			cur, err := m.snapshot(ctx)
			if err != nil {
				t.Fatal(err)
			}
			base.at = cur.at.Add(-10 * time.Second) // a window of exactly 10 s
			s := m.buildStatus(cur, &base)
			for _, a := range s.Alerts {
				if a.Firing != tc.firing[a.Name] {
					t.Errorf("%s firing %v (value %s), want %v", a.Name, a.Firing, a.Value, tc.firing[a.Name])
				}
			}
			if tc.check != nil {
				tc.check(t, s)
			}
			if _, err := json.Marshal(s); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// logLines decodes a JSON log into one map a line.
func logLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// A limit that refuses a burst of clients is two log lines, not one a
// refusal: when it starts being hit, and when it has been quiet for
// watchQuiet, with the count in between.
func TestLimitStateChangesLogged(t *testing.T) {
	var buf bytes.Buffer
	log, _ := NewLogger(&buf, LogJSON, slog.LevelInfo)
	var disconnects int64
	hits := int64(0)
	scripts := int64(0)
	g := Gauges{OutputDisconnects: func() int64 { return disconnects }, FallbackHits: func() int64 { return hits },
		ScriptsLoaded: func() int64 { return scripts }, ScriptsMax: func() int64 { return 2 }}
	m, err := NewMetrics("acme", nil, g, WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1_000_000, 0)
	step := func(d time.Duration) { t0 = t0.Add(d); m.limitRefs.tick(t0) }
	step(time.Second) // nothing happened: no line
	for range 50 {
		m.ClientRejected(RejectMaxClients)
		disconnects++
		hits += 3
		step(time.Second)
	}
	scripts = 2
	step(time.Second)
	step(time.Second) // still full: no second line
	scripts = 1
	step(watchQuiet)
	step(time.Second)
	lines := logLines(t, &buf)
	type key struct{ event, limit string }
	got := map[key]map[string]any{}
	for _, l := range lines {
		k := key{l["event"].(string), ""}
		if v, ok := l["limit"]; ok {
			k.limit = v.(string)
		}
		if _, dup := got[k]; dup {
			t.Errorf("logged twice: %v", l)
		}
		got[k] = l
	}
	for _, want := range []struct {
		k     key
		field string
		value any
	}{
		{key{"limit_hit", "max_clients"}, "setting", "--max-clients"},
		{key{"limit_cleared", "max_clients"}, "refused", float64(50)},
		{key{"limit_hit", "output_buffer"}, "setting", "--client-output-hard-limit"},
		{key{"limit_cleared", "output_buffer"}, "refused", float64(50)},
		{key{"limit_hit", "max_scripts"}, "setting", "--max-scripts"},
		{key{"limit_cleared", "max_scripts"}, "setting", "--max-scripts"},
		{key{"fallback_serving", ""}, "level", "WARN"},
		{key{"fallback_stopped", ""}, "served", float64(150)},
	} {
		l, ok := got[want.k]
		if !ok {
			t.Errorf("no %v line in\n%s", want.k, buf.String())
			continue
		}
		if l[want.field] != want.value {
			t.Errorf("%v: %s = %v, want %v", want.k, want.field, l[want.field], want.value)
		}
	}
	if len(lines) != 8 {
		t.Errorf("%d lines, want 8:\n%s", len(lines), buf.String())
	}
}

// The prober logs each change between up and down once, not each probe,
// and its figures feed the metrics.
func TestProberLogsChangesOnly(t *testing.T) {
	var buf bytes.Buffer
	log, _ := NewLogger(&buf, LogJSON, slog.LevelInfo)
	m, err := NewMetrics("acme", nil, Gauges{}, WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	results := []error{nil, nil, errors.New("dial tcp: connection refused"), errors.New("dial tcp: connection refused"), errors.New("timeout"), nil, nil}
	for _, r := range results {
		m.probeOnce(ctx, func(context.Context) (UpstreamMemory, error) { return UpstreamMemory{Used: 1, Max: 0, Known: true}, r })
	}
	var events []string
	for _, l := range logLines(t, &buf) {
		events = append(events, l["event"].(string))
	}
	if strings.Join(events, " ") != "upstream_up upstream_down upstream_up" {
		t.Errorf("events %v, want upstream_up upstream_down upstream_up", events)
	}
	body := scrape(t, m)
	wantMetrics(t, body, `result="success",tenant="acme"} 4`, `result="failure",tenant="acme"} 3`, `keyfence_upstream_memory_limit_bytes{`)
	if strings.Contains(body, "keyfence_upstream_memory_utilization_ratio{") {
		t.Error("a utilization ratio without maxmemory")
	}
}

func TestNewLoggerFormats(t *testing.T) {
	for _, tc := range []struct {
		format, want string
		bad          bool
	}{{"text", `level=INFO msg=hello event=x`, false}, {"", `level=INFO msg=hello event=x`, false},
		{"json", `"level":"INFO","msg":"hello","event":"x"}`, false}, {"yaml", "", true}} {
		var buf bytes.Buffer
		log, err := NewLogger(&buf, tc.format, slog.LevelInfo)
		if tc.bad {
			if err == nil {
				t.Errorf("format %q accepted", tc.format)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		log.Info("hello", "event", "x")
		if !strings.Contains(buf.String(), tc.want) {
			t.Errorf("format %q: %q lacks %q", tc.format, buf.String(), tc.want)
		}
	}
}

// The metrics path runs once per command: it must not allocate.
func BenchmarkMetricsCommand(b *testing.B) {
	m, err := NewMetrics("acme", []string{"get"}, Gauges{})
	if err != nil {
		b.Fatal(err)
	}
	rec, reply := m.NewBatch(), []byte("$1\r\nv\r\n")
	b.ReportAllocs()
	for b.Loop() {
		rec.Command("get", reply)
	}
}

// One batch of ten commands as a session records it, tracing off: the
// per-command counts, an error reply's class, the upstream round trip and
// the client-seen latency. 0 allocs/op is the requirement.
func BenchmarkBatchRecording(b *testing.B) {
	m, err := NewMetrics("acme", []string{"get", "set"}, fullGauges())
	if err != nil {
		b.Fatal(err)
	}
	rec := m.NewBatch()
	ctx := context.Background()
	ok, bad := []byte("+OK\r\n"), []byte("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		rec.Upstream(ctx, t0)
		for i := range 10 {
			if i == 9 {
				rec.Command("set", bad)
			} else {
				rec.Command("get", ok)
			}
		}
		rec.Done(ctx, t0)
	}
}

func BenchmarkErrorClass(b *testing.B) {
	reply := []byte("-ERR keyfence: upstream unavailable, the command may not have run\r\n")
	b.ReportAllocs()
	for b.Loop() {
		_ = errorClass(reply)
	}
}
