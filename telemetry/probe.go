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

// observers observe the prober's figures with attrs.
func (p *probeState) observers(in *instruments, attrs attribute.Set) []observed {
	opt := metric.WithAttributeSet(attrs)
	okOpt := withAttrs(attrs, attribute.String("result", "success"))
	failOpt := withAttrs(attrs, attribute.String("result", "failure"))
	return []observed{{[]metric.Observable{in.up, in.probes, in.memUsed, in.memLimit, in.memRatio}, func(o metric.Observer) {
		if v := p.up.Load(); v >= 0 {
			o.ObserveInt64(in.up, v, opt)
		}
		o.ObserveInt64(in.probes, p.ok.Load(), okOpt)
		o.ObserveInt64(in.probes, p.fail.Load(), failOpt)
		if p.memKnown.Load() {
			u, m := p.used.Load(), p.max.Load()
			o.ObserveInt64(in.memUsed, u, opt)
			o.ObserveInt64(in.memLimit, m, opt)
			if m > 0 {
				o.ObserveFloat64(in.memRatio, float64(u)/float64(m), opt)
			}
		}
	}}}
}

// RunProber probes upstream every interval until ctx is done: the result
// feeds keyfence.upstream.up, keyfence.upstream.probes and the memory
// gauges, and each change between up and down is logged once (never each
// probe). The first probe runs at once. Upstream is the process's: its
// series carry no tenant in gateway mode.
func (p *Provider) RunProber(ctx context.Context, interval time.Duration, probe ProbeFunc) {
	interval = min(max(interval, MinProbeInterval), MaxProbeInterval)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		p.probeOnce(ctx, probe)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// RunProber of a sidecar: its provider's (see Provider.RunProber).
func (m *Metrics) RunProber(ctx context.Context, interval time.Duration, probe ProbeFunc) {
	m.p.RunProber(ctx, interval, probe)
}

func (m *Metrics) probeOnce(ctx context.Context, probe ProbeFunc) { m.p.probeOnce(ctx, probe) }

func (p *Provider) probeOnce(ctx context.Context, probe ProbeFunc) {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	mem, err := probe(pctx)
	cancel()
	if ctx.Err() != nil {
		return // shutting down: not a verdict on upstream
	}
	st := &p.probe
	now := time.Now()
	st.mu.Lock()
	defer st.mu.Unlock()
	was := st.up.Load()
	if err != nil {
		st.fail.Add(1)
		st.up.Store(0)
		st.lastErr = err.Error()
		if was != 0 {
			st.since = now
			p.log.Warn("upstream down: probe failed", "event", "upstream_down", "err", err,
				"check", "is Redis running and reachable from keyfence? /readyz and the status page say more")
		}
		return
	}
	st.ok.Add(1)
	st.up.Store(1)
	if mem.Known {
		st.used.Store(mem.Used)
		st.max.Store(mem.Max)
		st.memKnown.Store(true)
	}
	if was != 1 {
		attrs := []any{"event", "upstream_up"}
		if was == 0 {
			attrs = append(attrs, "down_for", now.Sub(st.since).Round(time.Millisecond).String())
		}
		st.since = now
		p.log.Info("upstream up: probe succeeded", attrs...)
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

func (p *Provider) upstreamView() upstreamView {
	st := &p.probe
	st.mu.Lock()
	defer st.mu.Unlock()
	v := upstreamView{Probes: st.ok.Load() + st.fail.Load(), Failures: st.fail.Load()}
	switch st.up.Load() {
	case 1:
		t := true
		v.Up = &t
	case 0:
		f := false
		v.Up, v.LastErr = &f, st.lastErr
	}
	if !st.since.IsZero() {
		v.Since = st.since.UTC().Format(time.RFC3339)
	}
	return v
}
