package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	"go.opentelemetry.io/otel/trace"
)

// Metrics records keyfence's OpenTelemetry metrics and serves them in the
// Prometheus format; with WithReader they also go to OTLP. The per-command
// cost (Batch.Command) is a map lookup and an atomic add; latencies are
// recorded once per batch. Counters that change on the data path are plain
// atomics handed to OpenTelemetry only when metrics are collected, so that
// recording never allocates and never takes a lock.
type Metrics struct {
	provider *sdkmetric.MeterProvider
	registry *prometheus.Registry
	status   *sdkmetric.ManualReader // what the status page reads
	tracer   trace.Tracer            // nil: tracing is off
	log      *slog.Logger
	tenantID string
	started  time.Time

	duration metric.Float64Histogram
	upstream metric.Float64Histogram
	errors   metric.Int64Counter

	// Commands are counted one pair per command name.
	index   map[string]int // command name → position in names; read-only
	names   []string       // the last one is "other"
	counts  []atomic.Int64 // 2*i: ok, 2*i+1: error
	obsOpts [][]metric.ObserveOption

	classes   [numClasses]atomic.Int64 // error replies by class
	accepted  atomic.Int64             // client connections accepted
	leftWait  atomic.Int64             // clients that closed while their command waited upstream
	rejected  [numRejectReasons]atomic.Int64
	probe     probeState
	limitRefs limitWatch
	history   statusState // the status page's recent readings

	tenant  attribute.KeyValue
	tenOpts []metric.RecordOption
	errOpts map[string][]metric.AddOption
}

// Gauges are read when metrics are collected, never on the hot path. Every
// field may be nil: its metric is then not exported.
type Gauges struct {
	Sessions    func() int64
	PinnedConns func() int64 // pinned upstream connections handed out or idle
	PinnedIdle  func() int64 // of those, idle in the pool
	PinnedMax   func() int64 // the pool's bound (--max-pinned)
	// Breaker is the circuit breaker's state (0 closed, 1 half-open,
	// 2 open), and FallbackHits/Misses count reads answered from the
	// cache or not during upstream failures; nil when there is no breaker.
	Breaker        func() int64
	FallbackHits   func() int64
	FallbackMisses func() int64
	// FallbackCache reads the read cache's figures; nil when it is off.
	FallbackCache func() CacheStats
	// OutputDisconnects counts clients dropped past the output hard
	// limit, RequestBufferRejections clients refused for the request
	// buffer budget, RequestBufferBytes the budget in use now.
	OutputDisconnects       func() int64
	RequestBufferRejections func() int64
	RequestBufferBytes      func() int64
	RequestBufferLimit      func() int64
	ScriptsLoaded           func() int64 // distinct scripts the tenant has loaded
	ScriptsMax              func() int64 // --max-scripts
}

// CacheStats are the read cache's figures (package fallback's Stats, kept
// apart so that telemetry imports nothing of keyfence's).
type CacheStats struct {
	Bytes, Entries, Evictions int64
}

// Upstream error causes counted by UpstreamError.
var errorCauses = []string{"connection_refused", "timeout", "noauth", "oom", "connection_lost", "other"}

// Reasons a client connection is refused, for keyfence.client.connections.rejected.
const (
	RejectMaxClients = iota // --max-clients reached
	RejectDraining          // keyfence is shutting down
	numRejectReasons
)

var rejectReasons = [numRejectReasons]string{"max_clients", "draining"}

// latencyBuckets are the bounds of both latency histograms, in seconds. 2 s
// is one of them so that the latency alert's threshold is exact.
var latencyBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10}

// Option configures NewMetrics.
type Option func(*options)

type options struct {
	readers  []sdkmetric.Reader
	resource *resource.Resource
	tracer   trace.TracerProvider
	log      *slog.Logger
}

// WithReader adds a metric reader, e.g. OTLP's periodic one (see OTLP).
func WithReader(r sdkmetric.Reader) Option {
	return func(o *options) {
		if r != nil {
			o.readers = append(o.readers, r)
		}
	}
}

// WithResource sets the resource every metric and span is reported with.
func WithResource(r *resource.Resource) Option { return func(o *options) { o.resource = r } }

// WithTracerProvider turns tracing on: one span per batch (see Batch).
// A nil provider leaves it off.
func WithTracerProvider(tp trace.TracerProvider) Option { return func(o *options) { o.tracer = tp } }

// WithLogger is where state changes are logged (upstream down and up,
// limits hit, the fallback serving); the default is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// scopeName is the instrumentation scope of every metric and span.
const scopeName = "github.com/keyfence/keyfence"

// NewMetrics sets up the instruments for tenant; commands lists every
// command name the proxy may record (others are recorded as "other"), so
// that the command label takes values from a bounded set only.
func NewMetrics(tenant string, commands []string, gauges Gauges, opts ...Option) (*Metrics, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	status := sdkmetric.NewManualReader()
	popts := []sdkmetric.Option{sdkmetric.WithReader(exp), sdkmetric.WithReader(status)}
	for _, r := range o.readers {
		popts = append(popts, sdkmetric.WithReader(r))
	}
	if o.resource != nil {
		popts = append(popts, sdkmetric.WithResource(o.resource))
	}
	provider := sdkmetric.NewMeterProvider(popts...)
	m := &Metrics{provider: provider, registry: reg, status: status, log: o.log, tenantID: tenant, started: time.Now(),
		tenant: attribute.String("tenant", tenant), index: map[string]int{}}
	if o.tracer != nil {
		m.tracer = o.tracer.Tracer(scopeName)
	}
	if err := m.instruments(provider.Meter(scopeName), commands, gauges); err != nil {
		_ = provider.Shutdown(context.Background())
		return nil, err
	}
	m.limitRefs.init(m, gauges)
	return m, nil
}

// instruments creates every instrument and the callbacks of the observed ones.
func (m *Metrics) instruments(meter metric.Meter, commands []string, g Gauges) error {
	m.names = append(append([]string(nil), commands...), "other")
	m.counts = make([]atomic.Int64, 2*len(m.names))
	for i, name := range m.names {
		m.index[name] = i
		for _, outcome := range []string{"ok", "error"} {
			m.obsOpts = append(m.obsOpts, []metric.ObserveOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("command", name), m.tenant, attribute.String("outcome", outcome)))})
		}
	}
	var err error
	if m.duration, err = meter.Float64Histogram("keyfence.command.duration", metric.WithUnit("s"),
		metric.WithDescription("Client-seen latency of a batch: from reading the requests to writing the replies; blocking commands (BLPOP, XREAD BLOCK, WAIT…), which wait by design, are left out"),
		metric.WithExplicitBucketBoundaries(latencyBuckets...)); err != nil {
		return err
	}
	if m.upstream, err = meter.Float64Histogram("keyfence.upstream.duration", metric.WithUnit("s"),
		metric.WithDescription("Upstream round trip of one batch"),
		metric.WithExplicitBucketBoundaries(latencyBuckets...)); err != nil {
		return err
	}
	if m.errors, err = meter.Int64Counter("keyfence.upstream.errors", metric.WithUnit("{error}"), metric.WithDescription("Upstream failures, by cause")); err != nil {
		return err
	}
	m.tenOpts = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(m.tenant))}
	m.errOpts = map[string][]metric.AddOption{}
	for _, c := range errorCauses {
		m.errOpts[c] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(m.tenant, attribute.String("cause", c)))}
	}

	// Everything else is observed: counters kept in atomics here or in the
	// proxy, and gauges read from it, all in one callback.
	var list []observed
	add := func(o observed) { list = append(list, o) }
	tenantOpt := metric.WithAttributeSet(attribute.NewSet(m.tenant))

	commandsCounter, err := meter.Int64ObservableCounter("keyfence.commands", metric.WithUnit("{command}"), metric.WithDescription("Commands handled, by command, tenant and outcome (error: the reply was an error)"))
	if err != nil {
		return err
	}
	add(observed{[]metric.Observable{commandsCounter}, func(o metric.Observer) {
		for i := range m.counts {
			if n := m.counts[i].Load(); n > 0 {
				o.ObserveInt64(commandsCounter, n, m.obsOpts[i]...)
			}
		}
	}})

	classCounter, err := meter.Int64ObservableCounter("keyfence.client.errors", metric.WithUnit("{error}"),
		metric.WithDescription("Error replies clients got, by class: the Redis error prefix (ERR, WRONGTYPE, NOPERM, OOM…), UNAVAILABLE when upstream did not answer, LIMIT for keyfence's own capacity limits"))
	if err != nil {
		return err
	}
	var classOpts [numClasses]metric.ObserveOption
	for c := range classOpts {
		classOpts[c] = metric.WithAttributeSet(attribute.NewSet(m.tenant, attribute.String("class", classNames[c])))
	}
	add(observed{[]metric.Observable{classCounter}, func(o metric.Observer) {
		// Every class, zeros too: a rate over a series that appears
		// with its first error would miss that error.
		for c := range m.classes {
			o.ObserveInt64(classCounter, m.classes[c].Load(), classOpts[c])
		}
	}})

	acceptedCounter, err := meter.Int64ObservableCounter("keyfence.client.connections.accepted", metric.WithUnit("{connection}"), metric.WithDescription("Client connections accepted"))
	if err != nil {
		return err
	}
	rejectedCounter, err := meter.Int64ObservableCounter("keyfence.client.connections.rejected", metric.WithUnit("{connection}"),
		metric.WithDescription("Client connections refused, by reason: max_clients (--max-clients) or draining"))
	if err != nil {
		return err
	}
	var rejOpts [numRejectReasons]metric.ObserveOption
	for r := range rejOpts {
		rejOpts[r] = metric.WithAttributeSet(attribute.NewSet(m.tenant, attribute.String("reason", rejectReasons[r])))
	}
	add(observed{[]metric.Observable{acceptedCounter}, func(o metric.Observer) { o.ObserveInt64(acceptedCounter, m.accepted.Load(), tenantOpt) }})
	leftCounter, err := meter.Int64ObservableCounter("keyfence.client.closed_while_waiting", metric.WithUnit("{connection}"),
		metric.WithDescription("Clients that closed their connection while a command of theirs waited upstream (a blocked BLPOP, a worker shutting down): not an upstream failure"))
	if err != nil {
		return err
	}
	add(observed{[]metric.Observable{leftCounter}, func(o metric.Observer) { o.ObserveInt64(leftCounter, m.leftWait.Load(), tenantOpt) }})
	add(observed{[]metric.Observable{rejectedCounter}, func(o metric.Observer) {
		for r := range m.rejected {
			o.ObserveInt64(rejectedCounter, m.rejected[r].Load(), rejOpts[r])
		}
	}})

	if err := m.probe.instruments(meter, m.tenant, add); err != nil {
		return err
	}
	if err := m.gaugeInstruments(meter, g, tenantOpt, add); err != nil {
		return err
	}
	return m.register(meter, list)
}

// observed is observable instruments and how to observe them.
type observed struct {
	insts   []metric.Observable
	observe func(metric.Observer)
}

// gaugeInstruments adds the instruments read from g.
func (m *Metrics) gaugeInstruments(meter metric.Meter, g Gauges, tenantOpt metric.ObserveOption, add func(observed)) error {
	gauge := func(name, unit, desc string, f func() int64) error {
		if f == nil {
			return nil
		}
		inst, err := meter.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		if err != nil {
			return err
		}
		add(observed{[]metric.Observable{inst}, func(o metric.Observer) { o.ObserveInt64(inst, f(), tenantOpt) }})
		return nil
	}
	counter := func(name, unit, desc string, f func() int64) error {
		if f == nil {
			return nil
		}
		inst, err := meter.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		if err != nil {
			return err
		}
		add(observed{[]metric.Observable{inst}, func(o metric.Observer) { o.ObserveInt64(inst, f(), tenantOpt) }})
		return nil
	}
	for _, err := range []error{
		gauge("keyfence.client.connections", "{connection}", "Client connections now", g.Sessions),
		gauge("keyfence.breaker.state", "", "Circuit breaker state: 0 closed, 1 half-open, 2 open", g.Breaker),
		counter("keyfence.client.output_disconnects", "{connection}", "Clients disconnected because their unread replies passed --client-output-hard-limit", g.OutputDisconnects),
		counter("keyfence.request_buffer.rejections", "{connection}", "Clients refused because the request buffer budget (--max-request-buffer-total) was spent", g.RequestBufferRejections),
		gauge("keyfence.request_buffer.used", "By", "Request buffer bytes reserved from --max-request-buffer-total now", g.RequestBufferBytes),
		gauge("keyfence.request_buffer.limit", "By", "The request buffer budget, --max-request-buffer-total", g.RequestBufferLimit),
		gauge("keyfence.scripts.loaded", "{script}", "Distinct Lua scripts the tenant has loaded", g.ScriptsLoaded),
		gauge("keyfence.scripts.limit", "{script}", "Distinct scripts a tenant may load, --max-scripts", g.ScriptsMax),
		gauge("db.client.connection.max", "{connection}", "Pinned upstream connections one pool may hold, --max-pinned", g.PinnedMax),
	} {
		if err != nil {
			return err
		}
	}
	if g.PinnedConns != nil {
		// The OpenTelemetry database-client convention: connections of a
		// pool by state. keyfence's pool is the pinned connections
		// (transactions, blocking commands, subscribers).
		count, err := meter.Int64ObservableUpDownCounter("db.client.connection.count", metric.WithUnit("{connection}"),
			metric.WithDescription("Pinned upstream connections (MULTI, WATCH, blocking commands, subscribers), used or idle in the pool"))
		if err != nil {
			return err
		}
		pool := attribute.String("db.client.connection.pool.name", "pinned")
		used := metric.WithAttributeSet(attribute.NewSet(m.tenant, pool, attribute.String("db.client.connection.state", "used")))
		idle := metric.WithAttributeSet(attribute.NewSet(m.tenant, pool, attribute.String("db.client.connection.state", "idle")))
		add(observed{[]metric.Observable{count}, func(o metric.Observer) {
			all, free := g.PinnedConns(), int64(0)
			if g.PinnedIdle != nil {
				free = min(g.PinnedIdle(), all)
			}
			o.ObserveInt64(count, all-free, used)
			o.ObserveInt64(count, free, idle)
		}})
	}
	if g.FallbackHits != nil && g.FallbackMisses != nil {
		reads, err := meter.Int64ObservableCounter("keyfence.fallback.reads", metric.WithUnit("{read}"), metric.WithDescription("Reads during upstream failures, answered from the cache (hit) or not (miss)"))
		if err != nil {
			return err
		}
		hitOpt := metric.WithAttributeSet(attribute.NewSet(m.tenant, attribute.String("outcome", "hit")))
		missOpt := metric.WithAttributeSet(attribute.NewSet(m.tenant, attribute.String("outcome", "miss")))
		add(observed{[]metric.Observable{reads}, func(o metric.Observer) {
			o.ObserveInt64(reads, g.FallbackHits(), hitOpt)
			o.ObserveInt64(reads, g.FallbackMisses(), missOpt)
		}})
	}
	if g.FallbackCache != nil {
		used, err := meter.Int64ObservableGauge("keyfence.fallback.cache.used", metric.WithUnit("By"), metric.WithDescription("Bytes the read cache holds (bounded by --fallback-max-bytes)"))
		if err != nil {
			return err
		}
		entries, err := meter.Int64ObservableGauge("keyfence.fallback.cache.entries", metric.WithUnit("{entry}"), metric.WithDescription("Entries the read cache holds"))
		if err != nil {
			return err
		}
		evictions, err := meter.Int64ObservableCounter("keyfence.fallback.cache.evictions", metric.WithUnit("{entry}"), metric.WithDescription("Entries the read cache dropped for room or on expiry"))
		if err != nil {
			return err
		}
		add(observed{[]metric.Observable{used, entries, evictions}, func(o metric.Observer) {
			st := g.FallbackCache()
			o.ObserveInt64(used, st.Bytes, tenantOpt)
			o.ObserveInt64(entries, st.Entries, tenantOpt)
			o.ObserveInt64(evictions, st.Evictions, tenantOpt)
		}})
	}
	return nil
}

// register registers one callback observing every instrument in list.
func (m *Metrics) register(meter metric.Meter, list []observed) error {
	if len(list) == 0 {
		return nil
	}
	var insts []metric.Observable
	for _, o := range list {
		insts = append(insts, o.insts...)
	}
	_, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for _, ob := range list {
			ob.observe(o)
		}
		return nil
	}, insts...)
	return err
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
// reading the request bytes to writing the replies. Sessions record through
// their own *Batch (NewBatch), which also leaves blocking commands out and
// makes the batch's span.
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

// ClientAccepted counts a client connection keyfence took on. A nil
// *Metrics records nothing, so that callers need no check.
func (m *Metrics) ClientAccepted() {
	if m != nil {
		m.accepted.Add(1)
	}
}

// ClientClosedWhileWaiting counts a client that went away while its command
// waited upstream; keyfence closes the upstream connection it had pinned,
// which is no upstream failure.
func (m *Metrics) ClientClosedWhileWaiting() {
	if m != nil {
		m.leftWait.Add(1)
	}
}

// ClientRejected counts a client connection refused for reason
// (RejectMaxClients, RejectDraining).
func (m *Metrics) ClientRejected(reason int) {
	if m != nil && reason >= 0 && reason < numRejectReasons {
		m.rejected[reason].Add(1)
	}
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// Shutdown flushes (to OTLP, when it is on) and stops the meter provider.
func (m *Metrics) Shutdown(ctx context.Context) error { return m.provider.Shutdown(ctx) }
