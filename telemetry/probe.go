package telemetry

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// UpstreamMemory is what upstream's INFO memory says: used_memory and
// maxmemory in bytes (Max 0: no limit). Known is false when upstream would
// not say (an ACL user without INFO).
type UpstreamMemory struct {
	Used, Max int64
	Known     bool
}

// ProbeFunc checks upstream once. An error means upstream is down; when it
// is up, the memory figures come along.
type ProbeFunc func(ctx context.Context) (UpstreamMemory, error)

// Probe intervals: the default, and the bounds of --upstream-probe-interval.
const (
	DefaultProbeInterval = 5 * time.Second
	MinProbeInterval     = time.Second
	MaxProbeInterval     = time.Minute
	// probeTimeout bounds one probe: an upstream that takes longer to
	// answer PING is as good as down for the clients waiting on it.
	probeTimeout = 2 * time.Second
)

// probeState is the upstream prober's view, read by the metrics callback
// and the status page.
type probeState struct {
	up       atomic.Int64 // -1 before the first probe, 0 down, 1 up
	ok, fail atomic.Int64 // probe results so far
	used     atomic.Int64
	max      atomic.Int64
	memKnown atomic.Bool

	mu      sync.Mutex
	lastErr string    // the last failure, for the status page
	since   time.Time // when up last changed
}

func (p *probeState) instruments(meter metric.Meter, tenant attribute.KeyValue, add func(observed)) error {
	p.up.Store(-1)
	up, err := meter.Int64ObservableGauge("keyfence.upstream.up", metric.WithDescription("1 when the last probe of upstream (PING) succeeded, 0 when it failed"))
	if err != nil {
		return err
	}
	probes, err := meter.Int64ObservableCounter("keyfence.upstream.probes", metric.WithUnit("{probe}"),
		metric.WithDescription("Probes of upstream (PING every --upstream-probe-interval), by result: success or failure"))
	if err != nil {
		return err
	}
	used, err := meter.Int64ObservableGauge("keyfence.upstream.memory.used", metric.WithUnit("By"), metric.WithDescription("Upstream's used_memory (INFO memory), polled every --upstream-probe-interval"))
	if err != nil {
		return err
	}
	limit, err := meter.Int64ObservableGauge("keyfence.upstream.memory.limit", metric.WithUnit("By"), metric.WithDescription("Upstream's maxmemory; 0: no limit"))
	if err != nil {
		return err
	}
	ratio, err := meter.Float64ObservableGauge("keyfence.upstream.memory.utilization", metric.WithUnit("1"),
		metric.WithDescription("used_memory / maxmemory of upstream; absent when maxmemory is 0"))
	if err != nil {
		return err
	}
	tenantOpt := metric.WithAttributeSet(attribute.NewSet(tenant))
	okOpt := metric.WithAttributeSet(attribute.NewSet(tenant, attribute.String("result", "success")))
	failOpt := metric.WithAttributeSet(attribute.NewSet(tenant, attribute.String("result", "failure")))
	add(observed{[]metric.Observable{up, probes, used, limit, ratio}, func(o metric.Observer) {
		if v := p.up.Load(); v >= 0 {
			o.ObserveInt64(up, v, tenantOpt)
		}
		o.ObserveInt64(probes, p.ok.Load(), okOpt)
		o.ObserveInt64(probes, p.fail.Load(), failOpt)
		if p.memKnown.Load() {
			u, m := p.used.Load(), p.max.Load()
			o.ObserveInt64(used, u, tenantOpt)
			o.ObserveInt64(limit, m, tenantOpt)
			if m > 0 {
				o.ObserveFloat64(ratio, float64(u)/float64(m), tenantOpt)
			}
		}
	}})
	return nil
}

// RunProber probes upstream every interval until ctx is done: the result
// feeds keyfence.upstream.up, keyfence.upstream.probes and the memory
// gauges, and each change between up and down is logged once (never each
// probe). The first probe runs at once.
func (m *Metrics) RunProber(ctx context.Context, interval time.Duration, probe ProbeFunc) {
	interval = min(max(interval, MinProbeInterval), MaxProbeInterval)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		m.probeOnce(ctx, probe)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *Metrics) probeOnce(ctx context.Context, probe ProbeFunc) {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	mem, err := probe(pctx)
	cancel()
	if ctx.Err() != nil {
		return // shutting down: not a verdict on upstream
	}
	p := &m.probe
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	was := p.up.Load()
	if err != nil {
		p.fail.Add(1)
		p.up.Store(0)
		p.lastErr = err.Error()
		if was != 0 {
			p.since = now
			m.log.Warn("upstream down: probe failed", "event", "upstream_down", "err", err,
				"check", "is Redis running and reachable from keyfence? /readyz and the status page say more")
		}
		return
	}
	p.ok.Add(1)
	p.up.Store(1)
	if mem.Known {
		p.used.Store(mem.Used)
		p.max.Store(mem.Max)
		p.memKnown.Store(true)
	}
	if was != 1 {
		attrs := []any{"event", "upstream_up"}
		if was == 0 {
			attrs = append(attrs, "down_for", now.Sub(p.since).Round(time.Millisecond).String())
		}
		p.since = now
		m.log.Info("upstream up: probe succeeded", attrs...)
	}
}

// upstreamView is the prober's state for the status page.
type upstreamView struct {
	Up       *bool  `json:"up"` // null before the first probe
	LastErr  string `json:"last_error,omitempty"`
	Since    string `json:"since,omitempty"`
	Probes   int64  `json:"probes"`
	Failures int64  `json:"probe_failures"`
}

func (m *Metrics) upstreamView() upstreamView {
	p := &m.probe
	p.mu.Lock()
	defer p.mu.Unlock()
	v := upstreamView{Probes: p.ok.Load() + p.fail.Load(), Failures: p.fail.Load()}
	switch p.up.Load() {
	case 1:
		t := true
		v.Up = &t
	case 0:
		f := false
		v.Up, v.LastErr = &f, p.lastErr
	}
	if !p.since.IsZero() {
		v.Since = p.since.UTC().Format(time.RFC3339)
	}
	return v
}
