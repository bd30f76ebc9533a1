package telemetry

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Metrics records one tenant's metrics: its series carry tenant=<id>. A
// sidecar gets its own with NewMetrics; a gateway one per tenant from
// Provider.Tenant. The per-command cost (Batch.Command) is a map lookup and
// an atomic add; latencies are recorded once per batch, into atomics too.
// Everything is handed to OpenTelemetry only when metrics are collected, so
// that recording never allocates and never takes a lock.
type Metrics struct {
	p        *Provider
	owner    bool         // made by NewMetrics: Shutdown stops p
	tracer   trace.Tracer // nil: tracing is off
	log      *slog.Logger
	tenantID string
	attrs    attribute.Set // tenant=<id>
	started  time.Time

	// Commands are counted one pair per command name of the provider's
	// table.
	index  map[string]int // shared, read-only
	names  []string       // shared, read-only; the last one is "other"
	counts []atomic.Int64 // 2*i: ok, 2*i+1: error

	classes   [numClasses]atomic.Int64 // error replies by class
	accepted  atomic.Int64             // client connections accepted
	leftWait  atomic.Int64             // clients that closed while their command waited upstream
	rejected  [numRejectReasons]atomic.Int64
	upErrs    [len(errorCauses)]atomic.Int64
	duration  histogram // client-seen latency of a batch
	upstream  histogram // upstream round trip of a batch
	limitRefs limitWatch

	// The collection side.
	reg     metric.Registration // the callback observing this tenant
	refs    int                 // holders (Provider.mu)
	obsMu   sync.Mutex          // guards obsOpts: readers collect concurrently
	obsOpts []metric.ObserveOption
}

// Gauges are read when metrics are collected, never on the hot path. Every
// field may be nil: its metric is then not exported.
//
// A sidecar passes them all to NewMetrics. A gateway reports each once, at
// the level where the resource lives: per tenant (Provider.Tenant) what a
// tenant has of its own — Sessions (its authenticated connections),
// ScriptsLoaded, and OutputDisconnects or FallbackHits/Misses if it counts
// them per tenant; per process (WithProcessGauges) what all tenants share —
// PinnedConns/PinnedIdle/PinnedMax (one pool), Breaker and FallbackCache
// (one upstream, one cache), RequestBufferBytes/Limit/Rejections (one
// budget, spent before AUTH too), ScriptsMax, and Sessions for the
// connections that have not authenticated yet, so that the sum over all
// series is every connection. The status page sums the counts and takes the
// largest of the levels and limits (breaker state, scripts loaded, the
// bounds).
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
var errorCauses = [...]string{"connection_refused", "timeout", "noauth", "oom", "connection_lost", "other"}

// errorCause is the position of each cause in errorCauses.
var errorCause = func() map[string]int {
	m := map[string]int{}
	for i, c := range errorCauses {
		m[c] = i
	}
	return m
}()

// Reasons a client connection is refused, for keyfence.client.connections.rejected.
const (
	RejectMaxClients = iota // --max-clients reached
	RejectDraining          // keyfence is shutting down
	numRejectReasons
)

var rejectReasons = [numRejectReasons]string{"max_clients", "draining"}

// latencyBuckets are the bounds of both latency histograms, in seconds. 2 s
// is one of them so that the latency alert's threshold is exact.
var latencyBuckets = [...]float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10}

// NewMetrics sets up the telemetry of a sidecar: a Provider of its own
// with tenant as its one tenant, whose process series (the upstream probe)
// carry tenant too. commands lists every command name the proxy may record
// (others are recorded as "other"), so that the command label takes values
// from a bounded set only. The logger of WithLogger is used as it is.
func NewMetrics(tenant string, commands []string, gauges Gauges, opts ...Option) (*Metrics, error) {
	if tenant == "" {
		return nil, errors.New("tenant id is empty")
	}
	p, err := newProvider(commands, tenant, opts)
	if err != nil {
		return nil, err
	}
	m, err := p.tenant(tenant, gauges, p.log)
	if err != nil {
		_ = p.provider.Shutdown(context.Background())
		return nil, err
	}
	m.owner = true
	return m, nil
}

// newTenant sets up the series of one tenant and registers the callback
// that observes them.
func (p *Provider) newTenant(id string, g Gauges, log *slog.Logger) (*Metrics, error) {
	m := &Metrics{p: p, tracer: p.tracer, log: log, tenantID: id, attrs: attribute.NewSet(attribute.String("tenant", id)),
		started: time.Now(), index: p.index, names: p.names}
	m.counts = make([]atomic.Int64, 2*len(m.names))
	m.obsOpts = make([]metric.ObserveOption, len(m.counts))
	reg, err := register(p.meter, m.observers(p.inst, g))
	if err != nil {
		return nil, err
	}
	m.reg = reg
	m.limitRefs.init(log, &m.rejected, &m.classes[classLIMIT], g)
	return m, nil
}

// observers are the tenant's series: counters kept in atomics here and
// gauges read through g.
func (m *Metrics) observers(in *instruments, g Gauges) []observed {
	tenantOpt := metric.WithAttributeSet(m.attrs)
	tenantKV := attribute.String("tenant", m.tenantID)
	var classOpts [numClasses]metric.ObserveOption
	for c := range classOpts {
		classOpts[c] = withAttrs(m.attrs, attribute.String("class", classNames[c]))
	}
	var rejOpts [numRejectReasons]metric.ObserveOption
	for r := range rejOpts {
		rejOpts[r] = withAttrs(m.attrs, attribute.String("reason", rejectReasons[r]))
	}
	var errOpts [len(errorCauses)]metric.ObserveOption
	for c := range errOpts {
		errOpts[c] = withAttrs(m.attrs, attribute.String("cause", errorCauses[c]))
	}
	list := []observed{
		{[]metric.Observable{in.commands}, func(o metric.Observer) {
			// A command's attribute set is made the first time it is
			// seen: every pair for every tenant would be hundreds of
			// sets each, most never used.
			m.obsMu.Lock()
			defer m.obsMu.Unlock()
			for i := range m.counts {
				if n := m.counts[i].Load(); n > 0 {
					if m.obsOpts[i] == nil {
						outcome := "ok"
						if i%2 == 1 {
							outcome = "error"
						}
						m.obsOpts[i] = metric.WithAttributeSet(attribute.NewSet(attribute.String("command", m.names[i/2]), tenantKV, attribute.String("outcome", outcome)))
					}
					o.ObserveInt64(in.commands, n, m.obsOpts[i])
				}
			}
		}},
		{[]metric.Observable{in.classes}, func(o metric.Observer) {
			// Every class, zeros too: a rate over a series that appears
			// with its first error would miss that error.
			for c := range m.classes {
				o.ObserveInt64(in.classes, m.classes[c].Load(), classOpts[c])
			}
		}},
		{[]metric.Observable{in.accepted}, func(o metric.Observer) { o.ObserveInt64(in.accepted, m.accepted.Load(), tenantOpt) }},
		{[]metric.Observable{in.leftWait}, func(o metric.Observer) { o.ObserveInt64(in.leftWait, m.leftWait.Load(), tenantOpt) }},
		{[]metric.Observable{in.rejected}, func(o metric.Observer) {
			for r := range m.rejected {
				o.ObserveInt64(in.rejected, m.rejected[r].Load(), rejOpts[r])
			}
		}},
		{[]metric.Observable{in.upErrors}, func(o metric.Observer) {
			for c := range m.upErrs {
				if n := m.upErrs[c].Load(); n > 0 { // a cause appears with its first failure
					o.ObserveInt64(in.upErrors, n, errOpts[c])
				}
			}
		}},
	}
	return append(list, in.gaugeObservers(g, m.attrs)...)
}

// commandIndex is where name's counters are: an unknown name counts as
// other, the last.
func (m *Metrics) commandIndex(name string) int {
	i, known := m.index[name]
	if !known {
		i = len(m.names) - 1
	}
	return i
}

// count counts one command by its counters' index and outcome.
func (m *Metrics) count(i int, ok bool) {
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
func (m *Metrics) Batch(_ context.Context, seconds float64) {
	m.duration.record(time.Duration(seconds * 1e9))
}

// Upstream records one batch's upstream round trip.
func (m *Metrics) Upstream(_ context.Context, seconds float64) {
	m.upstream.record(time.Duration(seconds * 1e9))
}

// UpstreamError counts an upstream failure by cause (see errorCauses).
func (m *Metrics) UpstreamError(_ context.Context, cause string) {
	i, ok := errorCause[cause]
	if !ok {
		i = len(errorCauses) - 1 // other
	}
	m.upErrs[i].Add(1)
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

// Tenant is the tenant attribute of m's series: its id, or OverflowTenant.
func (m *Metrics) Tenant() string { return m.tenantID }

// Logger is where m logs its state changes: from Provider.Tenant, the
// provider's logger with tenant=<id>, for the caller's own lines about the
// tenant too.
func (m *Metrics) Logger() *slog.Logger { return m.log }

// Close takes the tenant's series away: its callback is unregistered and
// its histograms are no longer produced, once every holder has closed it
// (see Provider.Tenant; the overflow *Metrics is shared by every tenant past
// the cap). Recording into a closed *Metrics is harmless and goes nowhere.
// A nil *Metrics does nothing.
func (m *Metrics) Close() {
	if m != nil {
		m.p.release(m)
	}
}

// Handler serves /metrics: every tenant of m's provider.
func (m *Metrics) Handler() http.Handler { return m.p.Handler() }

// Shutdown flushes (to OTLP, when it is on) and stops the meter provider
// of a *Metrics from NewMetrics; one from Provider.Tenant is closed instead,
// its provider left to its owner.
func (m *Metrics) Shutdown(ctx context.Context) error {
	if !m.owner {
		m.Close()
		return nil
	}
	return m.p.Shutdown(ctx)
}
