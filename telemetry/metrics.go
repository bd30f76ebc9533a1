package telemetry

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// Metrics records keyfence's OpenTelemetry metrics and serves them in the
// Prometheus format. The hot path (Command, once per command) is a map
// lookup and an atomic add; latencies are recorded once per batch.
type Metrics struct {
	provider *sdkmetric.MeterProvider
	registry *prometheus.Registry

	duration metric.Float64Histogram
	upstream metric.Float64Histogram
	errors   metric.Int64Counter

	// Commands are counted in plain atomics, one pair per command name,
	// and handed to OpenTelemetry only when metrics are collected: the
	// per-command cost is a map lookup and an atomic add.
	index   map[string]int // command name → position in names; read-only
	names   []string       // the last one is "other"
	counts  []atomic.Int64 // 2*i: ok, 2*i+1: error
	obsOpts [][]metric.ObserveOption

	tenant  attribute.KeyValue
	tenOpts []metric.RecordOption
	errOpts map[string][]metric.AddOption
}

// Gauges are read when metrics are collected, never on the hot path.
type Gauges struct {
	Sessions    func() int64
	PinnedConns func() int64
	// Breaker is the circuit breaker's state (0 closed, 1 half-open,
	// 2 open), and FallbackHits/Misses count reads answered from the
	// cache or not during upstream failures; nil when there is no breaker.
	Breaker        func() int64
	FallbackHits   func() int64
	FallbackMisses func() int64
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
	m := &Metrics{provider: provider, registry: reg, tenant: attribute.String("tenant", tenant), index: map[string]int{}}
	m.names = append(append([]string(nil), commands...), "other")
	m.counts = make([]atomic.Int64, 2*len(m.names))
	for i, name := range m.names {
		m.index[name] = i
		for _, outcome := range []string{"ok", "error"} {
			m.obsOpts = append(m.obsOpts, []metric.ObserveOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("command", name), m.tenant, attribute.String("outcome", outcome)))})
		}
	}
	commandsCounter, err := meter.Int64ObservableCounter("keyfence.commands", metric.WithDescription("Commands handled, by command, tenant and outcome"))
	if err != nil {
		return nil, err
	}
	if _, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for i := range m.counts {
			if n := m.counts[i].Load(); n > 0 {
				o.ObserveInt64(commandsCounter, n, m.obsOpts[i]...)
			}
		}
		return nil
	}, commandsCounter); err != nil {
		return nil, err
	}
	if m.duration, err = meter.Float64Histogram("keyfence.command.duration", metric.WithUnit("s"),
		metric.WithDescription("Client-seen latency of a batch: from reading the requests to writing the replies"),
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
	if gauges.Breaker != nil && gauges.FallbackHits != nil && gauges.FallbackMisses != nil {
		breaker, err := meter.Int64ObservableGauge("keyfence.breaker.state", metric.WithDescription("Circuit breaker state: 0 closed, 1 half-open, 2 open"))
		if err != nil {
			return nil, err
		}
		reads, err := meter.Int64ObservableCounter("keyfence.fallback.reads", metric.WithDescription("Reads during upstream failures, answered from the cache (hit) or not (miss)"))
		if err != nil {
			return nil, err
		}
		tenantOpt := metric.WithAttributes(m.tenant)
		hitOpt := metric.WithAttributes(m.tenant, attribute.String("outcome", "hit"))
		missOpt := metric.WithAttributes(m.tenant, attribute.String("outcome", "miss"))
		if _, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
			o.ObserveInt64(breaker, gauges.Breaker(), tenantOpt)
			o.ObserveInt64(reads, gauges.FallbackHits(), hitOpt)
			o.ObserveInt64(reads, gauges.FallbackMisses(), missOpt)
			return nil
		}, breaker, reads); err != nil {
			return nil, err
		}
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
	m.tenOpts = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(m.tenant))}
	m.errOpts = map[string][]metric.AddOption{}
	for _, c := range errorCauses {
		m.errOpts[c] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(m.tenant, attribute.String("cause", c)))}
	}
	return m, nil
}

// Command counts one command by name and outcome.
func (m *Metrics) Command(name string, ok bool) {
	i, known := m.index[name]
	if !known {
		i = len(m.names) - 1
	}
	if ok {
		m.counts[2*i].Add(1)
	} else {
		m.counts[2*i+1].Add(1)
	}
}

// Batch records the client-seen latency of one batch of commands: from
// reading the request bytes to writing the replies.
func (m *Metrics) Batch(ctx context.Context, seconds float64) {
	m.duration.Record(ctx, seconds, m.tenOpts...)
}

// Upstream records one batch's upstream round trip.
func (m *Metrics) Upstream(ctx context.Context, seconds float64) {
	m.upstream.Record(ctx, seconds, m.tenOpts...)
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
