package telemetry

import (
	"context"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// Metrics records keyfence's OpenTelemetry metrics and serves them in the
// Prometheus format. The hot path (Command) only indexes a map built at
// start-up and passes pre-built attribute options: it allocates nothing.
type Metrics struct {
	provider *sdkmetric.MeterProvider
	registry *prometheus.Registry

	commands metric.Int64Counter
	duration metric.Float64Histogram
	upstream metric.Float64Histogram
	errors   metric.Int64Counter

	byName  map[string]*commandAttrs // read-only after NewMetrics
	other   *commandAttrs
	tenant  attribute.KeyValue
	upOpts  []metric.RecordOption
	errOpts map[string][]metric.AddOption
}

type commandAttrs struct {
	ok, failed []metric.AddOption
	record     []metric.RecordOption
}

// Gauges are read when metrics are collected, never on the hot path.
type Gauges struct {
	Sessions    func() int64
	PinnedConns func() int64
}

// Upstream error causes counted by UpstreamError.
var errorCauses = []string{"connection_refused", "timeout", "noauth", "oom", "connection_lost", "other"}

// NewMetrics sets up the instruments for tenant; commands lists every
// command name the proxy may record (others are recorded as "other").
func NewMetrics(tenant string, commands []string, gauges Gauges) (*Metrics, error) {
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	meter := provider.Meter("github.com/keyfence/keyfence")
	m := &Metrics{provider: provider, registry: reg, tenant: attribute.String("tenant", tenant), byName: map[string]*commandAttrs{}}
	if m.commands, err = meter.Int64Counter("keyfence.commands", metric.WithDescription("Commands handled, by command, tenant and outcome")); err != nil {
		return nil, err
	}
	if m.duration, err = meter.Float64Histogram("keyfence.command.duration", metric.WithUnit("s"),
		metric.WithDescription("Client-seen latency: from reading a request to writing its reply"),
		metric.WithExplicitBucketBoundaries(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)); err != nil {
		return nil, err
	}
	if m.upstream, err = meter.Float64Histogram("keyfence.upstream.duration", metric.WithUnit("s"),
		metric.WithDescription("Upstream round trip of one batch"),
		metric.WithExplicitBucketBoundaries(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)); err != nil {
		return nil, err
	}
	if m.errors, err = meter.Int64Counter("keyfence.upstream.errors", metric.WithDescription("Upstream failures, by cause")); err != nil {
		return nil, err
	}
	sessions, err := meter.Int64ObservableGauge("keyfence.client.connections", metric.WithDescription("Client connections now"))
	if err != nil {
		return nil, err
	}
	pinned, err := meter.Int64ObservableGauge("keyfence.upstream.pinned", metric.WithDescription("Upstream connections pinned to clients or idle in the pool"))
	if err != nil {
		return nil, err
	}
	if gauges.Sessions != nil && gauges.PinnedConns != nil {
		tenantOpt := metric.WithAttributes(m.tenant)
		if _, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
			o.ObserveInt64(sessions, gauges.Sessions(), tenantOpt)
			o.ObserveInt64(pinned, gauges.PinnedConns(), tenantOpt)
			return nil
		}, sessions, pinned); err != nil {
			return nil, err
		}
	}
	attrs := func(name string) *commandAttrs {
		set := func(outcome string) []metric.AddOption {
			return []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("command", name), m.tenant, attribute.String("outcome", outcome)))}
		}
		return &commandAttrs{
			ok:     set("ok"),
			failed: set("error"),
			record: []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("command", name), m.tenant))},
		}
	}
	for _, name := range commands {
		m.byName[name] = attrs(name)
	}
	m.other = attrs("other")
	m.upOpts = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(m.tenant))}
	m.errOpts = map[string][]metric.AddOption{}
	for _, c := range errorCauses {
		m.errOpts[c] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(m.tenant, attribute.String("cause", c)))}
	}
	return m, nil
}

// Command records one command's outcome and client-seen latency.
func (m *Metrics) Command(ctx context.Context, name string, ok bool, seconds float64) {
	a := m.byName[name]
	if a == nil {
		a = m.other
	}
	if ok {
		m.commands.Add(ctx, 1, a.ok...)
	} else {
		m.commands.Add(ctx, 1, a.failed...)
	}
	m.duration.Record(ctx, seconds, a.record...)
}

// Upstream records one batch's upstream round trip.
func (m *Metrics) Upstream(ctx context.Context, seconds float64) {
	m.upstream.Record(ctx, seconds, m.upOpts...)
}

// UpstreamError counts an upstream failure by cause (see errorCauses).
func (m *Metrics) UpstreamError(ctx context.Context, cause string) {
	opts, ok := m.errOpts[cause]
	if !ok {
		opts = m.errOpts["other"]
	}
	m.errors.Add(ctx, 1, opts...)
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// Shutdown flushes and stops the meter provider.
func (m *Metrics) Shutdown(ctx context.Context) error { return m.provider.Shutdown(ctx) }
