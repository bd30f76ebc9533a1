package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
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

// Provider is keyfence's telemetry for one process: one OpenTelemetry meter
// provider, one Prometheus /metrics, one status page, the OTLP readers, the
// tracer, the logger, the upstream prober. Tenant gives each tenant its
// *Metrics, whose series carry its tenant attribute.
//
// Two kinds of series come out of it:
//
//   - A tenant's own, labelled tenant=<id>: its commands, error replies,
//     latencies, upstream failures, and whichever Gauges it was given.
//   - The process's, with no tenant label in gateway mode: the upstream
//     probe (RunProber), WithProcessGauges, and ClientAccepted and
//     ClientRejected of the Provider, for what happens before a client has
//     a tenant. Summed across tenants and the process, a counter or a
//     connection gauge is the whole process's figure.
//
// Cardinality is bounded twice: the command label takes values from the
// command table only, and at most WithMaxTenants tenants have series of
// their own; those past the cap share one *Metrics labelled
// tenant="_overflow" (OverflowTenant), and keyfence.tenants.overflowed says
// how many are in it.
type Provider struct {
	provider *sdkmetric.MeterProvider
	registry *prometheus.Registry
	status   *sdkmetric.ManualReader // what the status page reads
	meter    metric.Meter
	inst     *instruments
	tracer   trace.Tracer // nil: tracing is off
	log      *slog.Logger
	started  time.Time

	// The command table, shared read-only by every tenant.
	index map[string]int // command name → position in names
	names []string       // the last one is "other"

	// sidecar is NewMetrics's tenant: the process series carry it as their
	// tenant attribute, and the status page is that tenant's. "" in gateway
	// mode.
	sidecar    string
	maxTenants int

	mu       sync.Mutex
	tenants  map[string]*Metrics // those with series of their own
	overflow *Metrics            // those past the cap; nil while none is
	closed   bool
	// Read by the process callback, which must not take mu: the SDK holds
	// its own lock while it runs callbacks, and Close unregisters under it.
	count      atomic.Int64 // len(tenants)
	overflowed atomic.Int64 // holders of overflow

	// The process's own series.
	procAttrs attribute.Set
	gauges    Gauges
	accepted  atomic.Int64
	rejected  [numRejectReasons]atomic.Int64
	authFails [numAuthFailures]atomic.Int64
	probe     probeState
	watch     limitWatch
	history   statusState // the status page's recent readings
}

// OverflowTenant is the tenant attribute of the tenants past the cap of
// WithMaxTenants. A tenant id is [A-Za-z0-9_-]{1,64}, so this one could be
// configured: Tenant refuses it.
const OverflowTenant = "_overflow"

// DefaultMaxTenants is how many tenants have series of their own unless
// WithMaxTenants says otherwise.
const DefaultMaxTenants = 1000

// Option configures NewProvider and NewMetrics.
type Option func(*options)

type options struct {
	readers    []sdkmetric.Reader
	late       []*lateProducer
	resource   *resource.Resource
	tracer     trace.TracerProvider
	log        *slog.Logger
	maxTenants int
	gauges     Gauges
}

// WithReader adds a metric reader. The one NewOTLP makes gets every metric;
// a reader made elsewhere gets all but the two latency histograms, which
// keyfence produces itself (see histogram.go) and hands only to readers it
// made.
func WithReader(r sdkmetric.Reader) Option {
	return func(o *options) {
		if r != nil {
			o.readers = append(o.readers, r)
			if or, ok := r.(*otlpReader); ok {
				o.late = append(o.late, or.hists)
			}
		}
	}
}

// WithResource sets the resource every metric and span is reported with.
func WithResource(r *resource.Resource) Option { return func(o *options) { o.resource = r } }

// WithTracerProvider turns tracing on: one span per batch (see Batch).
// A nil provider leaves it off.
func WithTracerProvider(tp trace.TracerProvider) Option { return func(o *options) { o.tracer = tp } }

// WithLogger is where state changes are logged (upstream down and up,
// limits hit, the fallback serving); the default is slog.Default(). Each
// tenant's lines carry tenant=<id> (Provider.Tenant adds it; NewMetrics
// takes the logger as it is).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithMaxTenants caps the tenants that have series of their own (default
// DefaultMaxTenants); the rest share tenant="_overflow". Every series of a
// tenant costs memory in keyfence and in Prometheus: up to two per command
// of the table, so the cap is what keeps a gateway's /metrics bounded
// however many tenants its file lists. NewMetrics ignores it.
func WithMaxTenants(n int) Option { return func(o *options) { o.maxTenants = n } }

// WithProcessGauges are the gauges a gateway reports once for the whole
// process, without a tenant label, rather than per tenant: those of
// resources all tenants share (see Gauges). NewMetrics ignores them: a
// sidecar passes its gauges to NewMetrics, labelled with its tenant.
func WithProcessGauges(g Gauges) Option { return func(o *options) { o.gauges = g } }

// scopeName is the instrumentation scope of every metric and span.
const scopeName = "github.com/keyfence/keyfence"

// NewProvider sets up the telemetry of a gateway; commands lists every
// command name the proxy may record (others are recorded as "other"), so
// that the command label takes values from a bounded set only.
func NewProvider(commands []string, opts ...Option) (*Provider, error) {
	return newProvider(commands, "", opts)
}

func newProvider(commands []string, sidecar string, opts []Option) (*Provider, error) {
	o := options{maxTenants: DefaultMaxTenants}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	if sidecar != "" {
		o.maxTenants, o.gauges = 1, Gauges{}
	}
	if o.maxTenants < 1 {
		return nil, fmt.Errorf("max tenants %d: want at least 1", o.maxTenants)
	}
	p := &Provider{log: o.log, started: time.Now(), sidecar: sidecar, maxTenants: o.maxTenants,
		tenants: map[string]*Metrics{}, gauges: o.gauges, index: map[string]int{}}
	p.names = append(append([]string(nil), commands...), "other")
	for i, name := range p.names {
		p.index[name] = i
	}
	if sidecar != "" {
		p.procAttrs = attribute.NewSet(attribute.String("tenant", sidecar))
	}
	if o.tracer != nil {
		p.tracer = o.tracer.Tracer(scopeName)
	}

	p.registry = prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(p.registry), otelprom.WithProducer(histProducer{p}))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	p.status = sdkmetric.NewManualReader(sdkmetric.WithProducer(histProducer{p}))
	// The SDK's default cap of 2000 series per instrument would fold a
	// gateway's tenants into otel.metric.overflow; the command table and
	// the tenant cap already bound them, to this.
	perTenant := max(2*len(p.names), int(numClasses))
	popts := []sdkmetric.Option{sdkmetric.WithReader(exp), sdkmetric.WithReader(p.status),
		sdkmetric.WithCardinalityLimit(perTenant * (o.maxTenants + 2))}
	for _, r := range o.readers {
		popts = append(popts, sdkmetric.WithReader(r))
	}
	if o.resource != nil {
		popts = append(popts, sdkmetric.WithResource(o.resource))
	}
	p.provider = sdkmetric.NewMeterProvider(popts...)
	for _, l := range o.late {
		l.p.Store(p)
	}
	p.meter = p.provider.Meter(scopeName)
	if p.inst, err = newInstruments(p.meter); err != nil {
		_ = p.provider.Shutdown(context.Background())
		return nil, err
	}
	p.probe.up.Store(-1)
	p.watch.init(p.log, &p.rejected, nil, p.gauges)
	if _, err := register(p.meter, p.processObservers()); err != nil {
		_ = p.provider.Shutdown(context.Background())
		return nil, err
	}
	return p, nil
}

// Tenant returns the recorder of tenant id, with its gauges (any field may
// be nil: see Gauges for which a gateway reports per tenant). Its series
// are exported until Close. Called again for an id already held, it
// returns the same *Metrics, which then needs one more Close, and ignores
// the new gauges: gauges should read the tenant's state by id rather than
// hold an object a reload replaces.
//
// Past WithMaxTenants tenants, the *Metrics returned is the shared one of
// OverflowTenant, without gauges (a sum of closures cannot lose one on
// Close), and its log lines say tenant=_overflow; a warning names the
// tenant. A tenant stays where it was put until it is closed and asked for
// again, even once others have made room.
func (p *Provider) Tenant(id string, gauges Gauges) (*Metrics, error) {
	if id == OverflowTenant {
		return nil, fmt.Errorf("tenant id %q is reserved for the tenants past the metrics cap", id)
	}
	if id == "" {
		return nil, errors.New("tenant id is empty")
	}
	return p.tenant(id, gauges, p.log.With("tenant", id))
}

func (p *Provider) tenant(id string, gauges Gauges, log *slog.Logger) (*Metrics, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("telemetry provider is shut down")
	}
	if m, ok := p.tenants[id]; ok {
		m.refs++
		return m, nil
	}
	if len(p.tenants) >= p.maxTenants {
		if p.overflow == nil {
			m, err := p.newTenant(OverflowTenant, Gauges{}, p.log.With("tenant", OverflowTenant))
			if err != nil {
				return nil, err
			}
			p.overflow = m
		}
		p.overflow.refs++
		p.overflowed.Add(1)
		p.log.Warn("limit hit: tenants past the metrics cap are counted under tenant=_overflow", "event", "limit_hit",
			"limit", "max_tenants", "max", p.maxTenants, "tenant", id, "overflowed", p.overflowed.Load())
		return p.overflow, nil
	}
	m, err := p.newTenant(id, gauges, log)
	if err != nil {
		return nil, err
	}
	m.refs = 1
	p.tenants[id] = m
	p.count.Store(int64(len(p.tenants)))
	return m, nil
}

// release drops one holder of m; the last one takes its series away.
func (p *Provider) release(m *Metrics) {
	p.mu.Lock()
	if m.refs == 0 {
		p.mu.Unlock()
		return
	}
	m.refs--
	if m == p.overflow {
		p.overflowed.Add(-1)
	}
	if m.refs > 0 {
		p.mu.Unlock()
		return
	}
	if m == p.overflow {
		p.overflow = nil
	} else if p.tenants[m.tenantID] == m {
		delete(p.tenants, m.tenantID)
		p.count.Store(int64(len(p.tenants)))
	}
	reg := m.reg
	p.mu.Unlock()
	// Outside mu: Unregister waits for a collection under way, whose
	// producer takes mu.
	if reg != nil {
		if err := reg.Unregister(); err != nil {
			p.log.Debug("unregistering a tenant's metrics", "tenant", m.tenantID, "err", err)
		}
	}
}

// live is every tenant whose series are exported now, the overflow one too.
func (p *Provider) live() []*Metrics {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*Metrics, 0, len(p.tenants)+1)
	for _, m := range p.tenants {
		out = append(out, m)
	}
	if p.overflow != nil {
		out = append(out, p.overflow)
	}
	return out
}

// ClientAccepted counts a client connection keyfence took on before it has
// a tenant (a gateway's, which learns the tenant from AUTH). A nil
// *Provider records nothing.
func (p *Provider) ClientAccepted() {
	if p != nil {
		p.accepted.Add(1)
	}
}

// ClientRejected counts a client connection refused before it has a tenant
// (RejectMaxClients, RejectDraining).
func (p *Provider) ClientRejected(reason int) {
	if p != nil && reason >= 0 && reason < numRejectReasons {
		p.rejected[reason].Add(1)
	}
}

// Reasons a gateway refuses an AUTH, for keyfence.auth.failures.
const (
	AuthUnknownTenant = iota // no such tenant in the tenants file
	AuthWrongPassword        // the tenant exists; the password is wrong
	numAuthFailures
)

var authFailureReasons = [numAuthFailures]string{"unknown_tenant", "wrong_password"}

// AuthFailed counts an AUTH a gateway refused (AuthUnknownTenant,
// AuthWrongPassword). A nil *Provider records nothing.
func (p *Provider) AuthFailed(reason int) {
	if p != nil && reason >= 0 && reason < numAuthFailures {
		p.authFails[reason].Add(1)
	}
}

// Handler serves /metrics.
func (p *Provider) Handler() http.Handler {
	return promhttp.HandlerFor(p.registry, promhttp.HandlerOpts{})
}

// Shutdown flushes (to OTLP, when it is on) and stops the meter provider;
// Tenant fails afterwards.
func (p *Provider) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	return p.provider.Shutdown(ctx)
}

// RunWatch logs the state changes of limits and of the fallback, the
// process's and every tenant's, until ctx is done. Run it once, and not
// alongside Metrics.RunWatch.
func (p *Provider) RunWatch(ctx context.Context) {
	t := time.NewTicker(watchTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			p.watch.tick(now)
			for _, m := range p.live() {
				m.limitRefs.tick(now)
			}
		}
	}
}

// processObservers are the process's series: the upstream probe and the
// process gauges; in gateway mode also the connections refused or taken
// before AUTH and the tenant counts.
func (p *Provider) processObservers() []observed {
	in := p.inst
	list := p.probe.observers(in, p.procAttrs)
	list = append(list, in.gaugeObservers(p.gauges, p.procAttrs)...)
	if p.sidecar != "" {
		return list // the sidecar's tenant counts its own connections
	}
	opt := metric.WithAttributeSet(p.procAttrs)
	var rejOpts [numRejectReasons]metric.ObserveOption
	for r := range rejOpts {
		rejOpts[r] = withAttrs(p.procAttrs, attribute.String("reason", rejectReasons[r]))
	}
	var authOpts [numAuthFailures]metric.ObserveOption
	for r := range authOpts {
		authOpts[r] = withAttrs(p.procAttrs, attribute.String("reason", authFailureReasons[r]))
	}
	return append(list,
		observed{[]metric.Observable{in.accepted}, func(o metric.Observer) { o.ObserveInt64(in.accepted, p.accepted.Load(), opt) }},
		observed{[]metric.Observable{in.rejected}, func(o metric.Observer) {
			for r := range p.rejected {
				o.ObserveInt64(in.rejected, p.rejected[r].Load(), rejOpts[r])
			}
		}},
		observed{[]metric.Observable{in.authFailures}, func(o metric.Observer) {
			for r := range p.authFails {
				o.ObserveInt64(in.authFailures, p.authFails[r].Load(), authOpts[r])
			}
		}},
		observed{[]metric.Observable{in.tenants, in.overflowed}, func(o metric.Observer) {
			o.ObserveInt64(in.tenants, p.count.Load(), opt)
			o.ObserveInt64(in.overflowed, p.overflowed.Load(), opt)
		}})
}

// observed is observable instruments and how to observe them.
type observed struct {
	insts   []metric.Observable
	observe func(metric.Observer)
}

// register registers one callback observing every instrument in list; its
// Registration takes them all away again.
func register(meter metric.Meter, list []observed) (metric.Registration, error) {
	if len(list) == 0 {
		return nil, nil
	}
	var insts []metric.Observable
	for _, o := range list {
		insts = append(insts, o.insts...)
	}
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for _, ob := range list {
			ob.observe(o)
		}
		return nil
	}, insts...)
}

// instruments are made once per provider; each tenant registers a callback
// of its own that observes them with its attributes, and unregisters it on
// Close. (The SDK would return the same instrument for the same name, kind,
// unit and description anyway; TestInstrumentsShared checks it.) Every one
// is observable: the SDK forgets an attribute set that a callback no longer
// observes, and never one a synchronous instrument recorded.
type instruments struct {
	commands, classes, accepted, rejected, leftWait, upErrors metric.Int64ObservableCounter

	gauges         []metric.Int64Observable // one per gaugeSpecs entry
	pinned         metric.Int64ObservableUpDownCounter
	fallbackReads  metric.Int64ObservableCounter
	cacheUsed      metric.Int64ObservableGauge
	cacheEntries   metric.Int64ObservableGauge
	cacheEvictions metric.Int64ObservableCounter

	up, memUsed, memLimit metric.Int64ObservableGauge
	probes                metric.Int64ObservableCounter
	memRatio              metric.Float64ObservableGauge

	tenants, overflowed metric.Int64ObservableGauge
	authFailures        metric.Int64ObservableCounter
}

// gaugeSpecs are the Gauges fields that are one number each.
var gaugeSpecs = []struct {
	name, unit, desc string
	counter          bool
	read             func(Gauges) func() int64
}{
	{"keyfence.client.connections", "{connection}", "Client connections now", false, func(g Gauges) func() int64 { return g.Sessions }},
	{"keyfence.breaker.state", "", "Circuit breaker state: 0 closed, 1 half-open, 2 open", false, func(g Gauges) func() int64 { return g.Breaker }},
	{"keyfence.client.output_disconnects", "{connection}", "Clients disconnected because their unread replies passed --client-output-hard-limit", true,
		func(g Gauges) func() int64 { return g.OutputDisconnects }},
	{"keyfence.request_buffer.rejections", "{connection}", "Clients refused because the request buffer budget (--max-request-buffer-total) was spent", true,
		func(g Gauges) func() int64 { return g.RequestBufferRejections }},
	{"keyfence.request_buffer.used", "By", "Request buffer bytes reserved from --max-request-buffer-total now", false, func(g Gauges) func() int64 { return g.RequestBufferBytes }},
	{"keyfence.request_buffer.limit", "By", "The request buffer budget, --max-request-buffer-total", false, func(g Gauges) func() int64 { return g.RequestBufferLimit }},
	{"keyfence.scripts.loaded", "{script}", "Distinct Lua scripts the tenant has loaded", false, func(g Gauges) func() int64 { return g.ScriptsLoaded }},
	{"keyfence.scripts.limit", "{script}", "Distinct scripts a tenant may load, --max-scripts", false, func(g Gauges) func() int64 { return g.ScriptsMax }},
	{"db.client.connection.max", "{connection}", "Pinned upstream connections one pool may hold, --max-pinned", false, func(g Gauges) func() int64 { return g.PinnedMax }},
}

func newInstruments(meter metric.Meter) (*instruments, error) {
	var errs []error
	keep := func(err error) { errs = append(errs, err) }
	counter := func(name, unit, desc string) metric.Int64ObservableCounter {
		c, err := meter.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		keep(err)
		return c
	}
	gauge := func(name, unit, desc string) metric.Int64ObservableGauge {
		g, err := meter.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		keep(err)
		return g
	}
	in := &instruments{
		commands: counter("keyfence.commands", "{command}", "Commands handled, by command, tenant and outcome (error: the reply was an error)"),
		classes: counter("keyfence.client.errors", "{error}",
			"Error replies clients got, by class: the Redis error prefix (ERR, WRONGTYPE, NOPERM, OOM…), UNAVAILABLE when upstream did not answer, LIMIT for keyfence's own capacity limits"),
		accepted: counter("keyfence.client.connections.accepted", "{connection}", "Client connections accepted"),
		rejected: counter("keyfence.client.connections.rejected", "{connection}", "Client connections refused, by reason: max_clients (--max-clients) or draining"),
		leftWait: counter("keyfence.client.closed_while_waiting", "{connection}",
			"Clients that closed their connection while a command of theirs waited upstream (a blocked BLPOP, a worker shutting down): not an upstream failure"),
		upErrors: counter("keyfence.upstream.errors", "{error}", "Upstream failures, by cause"),

		fallbackReads:  counter("keyfence.fallback.reads", "{read}", "Reads during upstream failures, answered from the cache (hit) or not (miss)"),
		cacheUsed:      gauge("keyfence.fallback.cache.used", "By", "Bytes the read cache holds (bounded by --fallback-max-bytes)"),
		cacheEntries:   gauge("keyfence.fallback.cache.entries", "{entry}", "Entries the read cache holds"),
		cacheEvictions: counter("keyfence.fallback.cache.evictions", "{entry}", "Entries the read cache dropped for room or on expiry"),

		up:       gauge("keyfence.upstream.up", "", "1 when the last probe of upstream (PING) succeeded, 0 when it failed"),
		probes:   counter("keyfence.upstream.probes", "{probe}", "Probes of upstream (PING every --upstream-probe-interval), by result: success or failure"),
		memUsed:  gauge("keyfence.upstream.memory.used", "By", "Upstream's used_memory (INFO memory), polled every --upstream-probe-interval"),
		memLimit: gauge("keyfence.upstream.memory.limit", "By", "Upstream's maxmemory; 0: no limit"),

		tenants:    gauge("keyfence.tenants", "{tenant}", "Tenants with series of their own (at most the cap of tenants with metrics)"),
		overflowed: gauge("keyfence.tenants.overflowed", "{tenant}", `Tenants past the cap of tenants with metrics, counted together under tenant="_overflow"`),
		authFailures: counter("keyfence.auth.failures", "{attempt}",
			"AUTHs a gateway refused, by reason: unknown_tenant or wrong_password (no tenant label: an unknown tenant is whatever the client sent)"),
	}
	var err error
	in.memRatio, err = meter.Float64ObservableGauge("keyfence.upstream.memory.utilization", metric.WithUnit("1"),
		metric.WithDescription("used_memory / maxmemory of upstream; absent when maxmemory is 0"))
	keep(err)
	// The OpenTelemetry database-client convention: connections of a pool
	// by state. keyfence's pool is the pinned connections (transactions,
	// blocking commands, subscribers).
	in.pinned, err = meter.Int64ObservableUpDownCounter("db.client.connection.count", metric.WithUnit("{connection}"),
		metric.WithDescription("Pinned upstream connections (MULTI, WATCH, blocking commands, subscribers), used or idle in the pool"))
	keep(err)
	for _, s := range gaugeSpecs {
		if s.counter {
			in.gauges = append(in.gauges, counter(s.name, s.unit, s.desc))
		} else {
			in.gauges = append(in.gauges, gauge(s.name, s.unit, s.desc))
		}
	}
	return in, errors.Join(errs...)
}

// withAttrs is attrs and kvs as one measurement option.
func withAttrs(attrs attribute.Set, kvs ...attribute.KeyValue) metric.MeasurementOption {
	return metric.WithAttributeSet(attribute.NewSet(append(attrs.ToSlice(), kvs...)...))
}

// gaugeObservers observes what g feeds, with attrs: a tenant's gauges or
// the process's.
func (in *instruments) gaugeObservers(g Gauges, attrs attribute.Set) []observed {
	var list []observed
	opt := metric.WithAttributeSet(attrs)
	for i, s := range gaugeSpecs {
		f := s.read(g)
		if f == nil {
			continue
		}
		inst := in.gauges[i]
		list = append(list, observed{[]metric.Observable{inst}, func(o metric.Observer) { o.ObserveInt64(inst, f(), opt) }})
	}
	if g.PinnedConns != nil {
		pool := attribute.String("db.client.connection.pool.name", "pinned")
		used := withAttrs(attrs, pool, attribute.String("db.client.connection.state", "used"))
		idle := withAttrs(attrs, pool, attribute.String("db.client.connection.state", "idle"))
		list = append(list, observed{[]metric.Observable{in.pinned}, func(o metric.Observer) {
			all, free := g.PinnedConns(), int64(0)
			if g.PinnedIdle != nil {
				free = min(g.PinnedIdle(), all)
			}
			o.ObserveInt64(in.pinned, all-free, used)
			o.ObserveInt64(in.pinned, free, idle)
		}})
	}
	if g.FallbackHits != nil && g.FallbackMisses != nil {
		hit, miss := withAttrs(attrs, attribute.String("outcome", "hit")), withAttrs(attrs, attribute.String("outcome", "miss"))
		list = append(list, observed{[]metric.Observable{in.fallbackReads}, func(o metric.Observer) {
			o.ObserveInt64(in.fallbackReads, g.FallbackHits(), hit)
			o.ObserveInt64(in.fallbackReads, g.FallbackMisses(), miss)
		}})
	}
	if g.FallbackCache != nil {
		list = append(list, observed{[]metric.Observable{in.cacheUsed, in.cacheEntries, in.cacheEvictions}, func(o metric.Observer) {
			st := g.FallbackCache()
			o.ObserveInt64(in.cacheUsed, st.Bytes, opt)
			o.ObserveInt64(in.cacheEntries, st.Entries, opt)
			o.ObserveInt64(in.cacheEvictions, st.Evictions, opt)
		}})
	}
	return list
}
