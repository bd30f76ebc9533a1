package telemetry

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/otlptest"
)

// Which OTEL_* settings turn what on, and which are refused at start-up
// rather than half-honoured.
func TestNewOTLPChoices(t *testing.T) {
	const ep = "http://127.0.0.1:4318"
	tests := []struct {
		name             string
		env              map[string]string
		metrics, traces  bool
		errContains      string
		resourceContains string
	}{
		{name: "nothing set: /metrics only", env: nil},
		{name: "endpoint: metrics by OTLP, no traces", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": ep}, metrics: true},
		{name: "metrics endpoint alone", env: map[string]string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": ep + "/v1/metrics"}, metrics: true},
		{name: "metrics exporter none", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": ep, "OTEL_METRICS_EXPORTER": "none"}},
		{name: "sampler turns traces on", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": ep, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}, metrics: true, traces: true},
		{name: "always_off is off", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": ep, "OTEL_TRACES_SAMPLER": "always_off"}, metrics: true},
		{name: "traces exporter none", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": ep, "OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_EXPORTER": "none"}, metrics: true},
		{name: "grpc", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": ep, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_TRACES_SAMPLER": "always_on"}, metrics: true, traces: true},
		{name: "SDK disabled", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": ep, "OTEL_TRACES_SAMPLER": "always_on", "OTEL_SDK_DISABLED": "true"}},
		{name: "sampler without endpoint", env: map[string]string{"OTEL_TRACES_SAMPLER": "always_on"}, errContains: "no OTLP endpoint"},
		{name: "a sampler typo", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": ep, "OTEL_TRACES_SAMPLER": "alwayson"}, errContains: "OTEL_TRACES_SAMPLER"},
		{name: "http/json", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": ep, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, errContains: "grpc or http/protobuf"},
		{name: "console exporter", env: map[string]string{"OTEL_METRICS_EXPORTER": "console"}, errContains: "OTEL_METRICS_EXPORTER"},
		{name: "service name from the environment", env: map[string]string{"OTEL_SERVICE_NAME": "kf-acme"}, resourceContains: "kf-acme"},
		{name: "keyfence is the default service name", env: nil, resourceContains: "service.name:keyfence"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The exporters read the process environment too: keep it
			// the same as what NewOTLP is given.
			for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
				"OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_METRICS_EXPORTER", "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"} {
				t.Setenv(k, tc.env[k])
			}
			o, err := NewOTLP(context.Background(), func(k string) string { return tc.env[k] })
			if tc.errContains != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errContains) {
					t.Fatalf("err %v, want one containing %q", err, tc.errContains)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (o.Reader != nil) != tc.metrics || (o.Tracer != nil) != tc.traces {
				t.Errorf("metrics %v traces %v, want %v %v", o.Reader != nil, o.Tracer != nil, tc.metrics, tc.traces)
			}
			if tc.resourceContains != "" {
				var kv []string
				for _, a := range o.Resource.Attributes() {
					kv = append(kv, string(a.Key)+":"+a.Value.Emit())
				}
				if !strings.Contains(strings.Join(kv, " "), tc.resourceContains) {
					t.Errorf("resource %v lacks %q", kv, tc.resourceContains)
				}
			}
			_ = o.Shutdown(context.Background())
			if o.Reader != nil {
				_ = o.Reader.Shutdown(context.Background())
			}
		})
	}
}

// Metrics and spans reach a real OTLP receiver, over gRPC and over HTTP:
// the names and units the dashboards use, a span per batch with the
// upstream round trip as its child, and no key or value anywhere.
func TestOTLPExport(t *testing.T) {
	for _, protocol := range []string{"grpc", "http/protobuf"} {
		t.Run(protocol, func(t *testing.T) {
			rcv := otlptest.Start(t)
			endpoint := rcv.HTTPURL
			if protocol == "grpc" {
				endpoint = "http://" + rcv.GRPCAddr // http: plain text
			}
			env := map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
				"OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
				"OTEL_METRIC_EXPORT_INTERVAL": "60000", // Shutdown flushes: no waiting on a timer
				"OTEL_TRACES_SAMPLER":         "always_on",
				"OTEL_SERVICE_NAME":           "keyfence-test",
			}
			for k, v := range env {
				t.Setenv(k, v)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			o, err := NewOTLP(ctx, func(k string) string { return env[k] })
			if err != nil {
				t.Fatal(err)
			}
			m, err := NewMetrics("acme", []string{"get", "set"}, fullGauges(), WithReader(o.Reader), WithResource(o.Resource),
				WithTracerProvider(o.Tracer), WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
			if err != nil {
				t.Fatal(err)
			}
			const secretKey, secretValue = "user:1234:session", "s3cr3t-value"
			b := m.NewBatch()
			readAt := time.Now()
			b.Upstream(ctx, readAt)
			b.Command("set", []byte("+OK\r\n"))
			b.Command("get", []byte("$12\r\n"+secretValue+"\r\n"))
			b.Command("get", []byte("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"))
			b.Done(ctx, readAt)
			readAt = time.Now()
			b.Upstream(ctx, readAt)
			b.UpstreamError(ctx, "connection_refused")
			b.Command("get", []byte("-ERR keyfence: upstream unavailable, the command may not have run: (dial "+secretKey+")\r\n"))
			b.Done(ctx, readAt)
			m.probeOnce(ctx, func(context.Context) (UpstreamMemory, error) {
				return UpstreamMemory{Used: 5, Max: 10, Known: true}, nil
			})

			if err := m.Shutdown(ctx); err != nil { // flushes the metrics
				t.Fatal(err)
			}
			if err := o.Shutdown(ctx); err != nil { // flushes the spans
				t.Fatal(err)
			}
			want := []string{"keyfence.commands", "keyfence.command.duration", "keyfence.upstream.duration", "keyfence.upstream.errors",
				"keyfence.client.errors", "keyfence.upstream.up", "keyfence.upstream.memory.utilization", "db.client.connection.count", "keyfence.fallback.cache.used"}
			err = rcv.Wait(ctx, func() bool {
				names := rcv.MetricNames()
				for _, w := range want {
					if !slices.Contains(names, w) {
						return false
					}
				}
				return len(rcv.Spans()) >= 4
			})
			if err != nil {
				t.Fatalf("%v: metrics %v, %d spans", err, rcv.MetricNames(), len(rcv.Spans()))
			}
			units := map[string]string{}
			for _, mt := range rcv.Metrics() {
				units[mt.Name] = mt.Unit
				if mt.Transport != map[string]string{"grpc": "grpc", "http/protobuf": "http"}[protocol] {
					t.Errorf("%s came by %s", mt.Name, mt.Transport)
				}
				if mt.Resource["service.name"] != "keyfence-test" {
					t.Errorf("%s: resource %v", mt.Name, mt.Resource)
				}
			}
			for name, unit := range map[string]string{"keyfence.command.duration": "s", "keyfence.upstream.memory.used": "By", "keyfence.upstream.memory.utilization": "1", "db.client.connection.count": "{connection}"} {
				if units[name] != unit {
					t.Errorf("%s unit %q, want %q", name, units[name], unit)
				}
			}

			spans := rcv.Spans()
			byID := map[string]otlptest.Span{}
			for _, s := range spans {
				byID[s.SpanID] = s
				for k, v := range s.Attrs {
					if strings.Contains(v, secretKey) || strings.Contains(v, secretValue) || strings.Contains(k, secretKey) {
						t.Errorf("span %s carries a key or value: %s=%s", s.Name, k, v)
					}
				}
			}
			var batches, children int
			for _, s := range spans {
				switch s.Kind {
				case "SPAN_KIND_SERVER":
					batches++
					if s.Attrs["keyfence.tenant"] != "acme" || s.Attrs["db.system.name"] != "redis" {
						t.Errorf("batch span %s attrs %v", s.Name, s.Attrs)
					}
				case "SPAN_KIND_CLIENT":
					children++
					parent, ok := byID[s.ParentSpanID]
					if !ok || parent.Kind != "SPAN_KIND_SERVER" || parent.TraceID != s.TraceID {
						t.Errorf("upstream span %s has no batch span as parent", s.Name)
					}
					if s.StartNs < parent.StartNs || s.EndNs > parent.EndNs {
						t.Errorf("upstream span %s outside its batch", s.Name)
					}
				}
			}
			if batches != 2 || children != 2 {
				t.Errorf("%d batch spans and %d upstream spans, want 2 and 2", batches, children)
			}
			for _, s := range spans {
				switch s.Name {
				case "PIPELINE":
					if s.Attrs["keyfence.commands"] != "set,get" || s.Attrs["db.operation.batch.size"] != "3" || s.Attrs["keyfence.outcome"] != "error" || s.StatusError {
						t.Errorf("pipeline span: %+v (a client's WRONGTYPE is not a failed request)", s)
					}
				case "GET":
					if !s.StatusError || s.Attrs["keyfence.outcome"] != "error" {
						t.Errorf("GET span with upstream unavailable: %+v", s)
					}
				case "upstream GET":
					if s.Attrs["error.type"] != "connection_refused" || !s.StatusError {
						t.Errorf("upstream span of a failure: %+v", s)
					}
				}
			}
		})
	}
}

// Tracing off: a batch costs no span and no allocation; on, every batch is
// a span (the sampler decides which are kept).
func BenchmarkBatchTracing(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on-always_on"
		}
		b.Run(name, func(b *testing.B) {
			var opts []Option
			if on {
				rcv := otlptest.Start(b)
				b.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.HTTPURL)
				b.Setenv("OTEL_TRACES_SAMPLER", "always_on")
				o, err := NewOTLP(context.Background(), func(k string) string {
					return map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rcv.HTTPURL, "OTEL_TRACES_SAMPLER": "always_on", "OTEL_METRICS_EXPORTER": "none"}[k]
				})
				if err != nil {
					b.Fatal(err)
				}
				defer o.Shutdown(context.Background())
				opts = append(opts, WithTracerProvider(o.Tracer))
			}
			m, err := NewMetrics("acme", []string{"get"}, Gauges{}, opts...)
			if err != nil {
				b.Fatal(err)
			}
			rec := m.NewBatch()
			ctx := context.Background()
			reply := []byte("+OK\r\n")
			b.ReportAllocs()
			for b.Loop() {
				t0 := time.Now()
				rec.Upstream(ctx, t0)
				rec.Command("get", reply)
				rec.Done(ctx, t0)
			}
		})
	}
}
