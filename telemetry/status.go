package telemetry

import (
	"context"
	"math"
	"sort"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// The thresholds of the operations team's four alerts. The Prometheus rules
// in deploy/prometheus use the same numbers (their test checks it); the
// status page shows each signal against them.
const (
	AlertLatencySeconds   = 2.0   // client-seen p99 latency above it
	AlertErrorRatio       = 0.01  // error replies per command above it
	AlertAvailability     = 0.999 // served share below it
	AlertMemoryUtilRatio  = 0.8   // upstream used_memory / maxmemory above it
	statusWindow          = 10 * time.Second
	statusHistory         = time.Minute
	statusMaxSnaps        = 40 // however many pages poll, this many readings at most
	statusMinSnapInterval = 500 * time.Millisecond
)

// snapshot is one reading of every metric, flattened: sums and gauges by
// "name" and by "name|attr=value" for the attributes the page groups by,
// histograms by name with their datapoints added up.
type snapshot struct {
	at      time.Time
	values  map[string]float64
	hists   map[string]hist
	tenants map[string]*tenantFigures // by tenant attribute
}

// tenantFigures are one tenant's figures in a snapshot, for the tenants
// table of a gateway's page.
type tenantFigures struct {
	commands, errors, clients float64
}

type hist struct {
	bounds []float64
	counts []uint64
	count  uint64
}

// statusState keeps the recent snapshots the page's rates come from.
type statusState struct {
	mu    sync.Mutex
	snaps []snapshot
}

// groupBy are the attributes a value is also kept under, per metric.
var groupBy = map[string]string{
	"keyfence.commands":                    "outcome",
	"keyfence.client.errors":               "class",
	"keyfence.fallback.reads":              "outcome",
	"keyfence.upstream.probes":             "result",
	"db.client.connection.count":           "db.client.connection.state",
	"keyfence.client.connections.rejected": "reason",
}

// largest are the gauges whose series are levels or bounds rather than
// counts: across tenants and the process the page shows the largest (the
// worst breaker, the tenant with the most scripts), not the sum. With one
// series, as in a sidecar, it is the same.
var largest = map[string]bool{
	"keyfence.breaker.state":        true,
	"keyfence.scripts.loaded":       true,
	"keyfence.scripts.limit":        true,
	"db.client.connection.max":      true,
	"keyfence.request_buffer.limit": true,
}

func (m *Metrics) snapshot(ctx context.Context) (snapshot, error) { return m.p.snapshot(ctx) }

func (p *Provider) snapshot(ctx context.Context) (snapshot, error) {
	var rm metricdata.ResourceMetrics
	if err := p.status.Collect(ctx, &rm); err != nil {
		return snapshot{}, err
	}
	s := snapshot{at: time.Now(), values: map[string]float64{}, hists: map[string]hist{}, tenants: map[string]*tenantFigures{}}
	point := func(name string, attrs attribute.Set, v float64) {
		if largest[name] {
			if was, ok := s.values[name]; !ok || v > was {
				s.values[name] = v
			}
		} else {
			s.values[name] += v
		}
		if p.sidecar == "" {
			p.tenantPoint(&s, name, attrs, v)
		}
		if key, ok := groupBy[name]; ok {
			if a, ok := attrs.Value(attribute.Key(key)); ok {
				s.values[name+"|"+key+"="+a.Emit()] += v
			}
		}
		if name == "keyfence.commands" {
			if a, ok := attrs.Value("command"); ok {
				s.values["cmd|"+a.Emit()] += v
				if o, _ := attrs.Value("outcome"); o.Emit() == "error" {
					s.values["cmderr|"+a.Emit()] += v
				}
			}
		}
	}
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			switch d := mt.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					point(mt.Name, p.Attributes, float64(p.Value))
				}
			case metricdata.Sum[float64]:
				for _, p := range d.DataPoints {
					point(mt.Name, p.Attributes, p.Value)
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					point(mt.Name, p.Attributes, float64(p.Value))
				}
			case metricdata.Gauge[float64]:
				for _, p := range d.DataPoints {
					point(mt.Name, p.Attributes, p.Value)
				}
			case metricdata.Histogram[float64]:
				h := hist{}
				for _, p := range d.DataPoints {
					if h.bounds == nil {
						h.bounds = p.Bounds
						h.counts = make([]uint64, len(p.BucketCounts))
					}
					if len(p.BucketCounts) != len(h.counts) {
						continue
					}
					for i, c := range p.BucketCounts {
						h.counts[i] += c
					}
					h.count += p.Count
				}
				s.hists[mt.Name] = h
			}
		}
	}
	return s, nil
}

// tenantPoint adds a datapoint to its tenant's figures. Every tenant
// observes keyfence.client.errors, zeros too, so every live one is listed.
func (p *Provider) tenantPoint(s *snapshot, name string, attrs attribute.Set, v float64) {
	switch name {
	case "keyfence.commands", "keyfence.client.connections", "keyfence.client.errors":
	default:
		return
	}
	t, ok := attrs.Value("tenant")
	if !ok {
		return // the process's
	}
	f := s.tenants[t.AsString()]
	if f == nil {
		f = &tenantFigures{}
		s.tenants[t.AsString()] = f
	}
	switch name {
	case "keyfence.commands":
		f.commands += v
		if o, _ := attrs.Value("outcome"); o.AsString() == "error" {
			f.errors += v
		}
	case "keyfence.client.connections":
		f.clients += v
	}
}

// Status is what the status page shows: /status.json.
type Status struct {
	// Tenant is a sidecar's tenant; "" in gateway mode, whose page lists
	// its tenants in Tenants instead.
	Tenant        string             `json:"tenant"`
	Tenants       *tenantsView       `json:"tenants,omitempty"`
	Uptime        float64            `json:"uptime_seconds"`
	Window        float64            `json:"window_seconds"` // 0: no rates yet (the first look)
	Upstream      upstreamView       `json:"upstream"`
	Breaker       string             `json:"breaker"` // closed, half-open, open, off
	Commands      float64            `json:"commands_per_second"`
	Errors        float64            `json:"errors_per_second"`
	ErrorRatio    *float64           `json:"error_ratio"`
	Availability  *float64           `json:"availability"`
	Latency       latencyView        `json:"latency"`
	Fallback      *fallbackView      `json:"fallback,omitempty"`
	Connections   connView           `json:"connections"`
	Memory        *memoryView        `json:"memory,omitempty"`
	ErrorClasses  map[string]float64 `json:"error_classes_per_second"`
	TopCommands   []commandRate      `json:"top_commands"`
	Alerts        []alertView        `json:"alerts"`
	Limits        limitsView         `json:"limits"`
	GeneratedAtMs int64              `json:"generated_at_ms"`
}

// tenantsView is a gateway's tenants: the busiest first, at most
// statusMaxTenants of them, and how many more there are.
type tenantsView struct {
	Count      int          `json:"count"`      // tenants with series of their own
	Max        int          `json:"max"`        // the cap (WithMaxTenants)
	Overflowed int64        `json:"overflowed"` // tenants past it, under _overflow
	Top        []tenantRate `json:"top"`
	More       int          `json:"more"` // listed tenants not in Top
}

type tenantRate struct {
	Tenant   string  `json:"tenant"`
	Clients  float64 `json:"clients"`
	Commands float64 `json:"commands_per_second"`
	Errors   float64 `json:"errors_per_second"` // error replies
}

// statusMaxTenants bounds the tenants the page lists.
const statusMaxTenants = 50

type latencyView struct {
	Client   quantiles `json:"client"`
	Upstream quantiles `json:"upstream"`
}

// quantiles are in seconds; null when the window saw no batch.
type quantiles struct {
	P50 *float64 `json:"p50"`
	P90 *float64 `json:"p90"`
	P99 *float64 `json:"p99"`
}

type fallbackView struct {
	HitRatio      *float64 `json:"hit_ratio"` // of reads during failures, in the window
	Hits          float64  `json:"hits_per_second"`
	Misses        float64  `json:"misses_per_second"`
	CacheBytes    *float64 `json:"cache_bytes,omitempty"`
	CacheEntries  *float64 `json:"cache_entries,omitempty"`
	CacheEvicted  *float64 `json:"cache_evictions,omitempty"`
	HitsTotal     float64  `json:"hits_total"`
	MissesTotal   float64  `json:"misses_total"`
	ServingNow    bool     `json:"serving"`
	CacheDisabled bool     `json:"cache_disabled"`
}

type connView struct {
	Clients     float64  `json:"clients"`
	Accepted    float64  `json:"accepted_per_second"`
	Rejected    float64  `json:"rejected_total"`
	PinnedUsed  float64  `json:"pinned_used"`
	PinnedIdle  float64  `json:"pinned_idle"`
	PinnedMax   *float64 `json:"pinned_max,omitempty"`
	OutputDrops float64  `json:"output_disconnects_total"`
	BudgetDrops float64  `json:"request_buffer_rejections_total"`
}

type memoryView struct {
	Used  float64  `json:"used_bytes"`
	Limit float64  `json:"limit_bytes"`
	Ratio *float64 `json:"ratio"`
}

type limitsView struct {
	ScriptsLoaded *float64 `json:"scripts_loaded,omitempty"`
	ScriptsMax    *float64 `json:"scripts_max,omitempty"`
}

type commandRate struct {
	Command string  `json:"command"`
	Rate    float64 `json:"per_second"`
	Errors  float64 `json:"errors_per_second"`
}

// alertView is one of the four signals: firing (red) or not, its value now
// and the threshold, as text a person reads.
type alertView struct {
	Name      string `json:"name"`
	Firing    bool   `json:"firing"`
	Known     bool   `json:"known"` // false: no data to judge by (no traffic)
	Value     string `json:"value"`
	Threshold string `json:"threshold"`
}

// Status reads the metrics now and compares them with a reading from about
// statusWindow ago for rates, percentiles and the alert signals: the
// provider's, all tenants and the process together, and a gateway's
// tenants one by one.
func (p *Provider) Status(ctx context.Context) (*Status, error) {
	st := &p.history
	st.mu.Lock()
	defer st.mu.Unlock()
	now := time.Now()
	var cur snapshot
	if n := len(st.snaps); n > 0 && now.Sub(st.snaps[n-1].at) < statusMinSnapInterval {
		cur = st.snaps[n-1]
	} else {
		s, err := p.snapshot(ctx)
		if err != nil {
			return nil, err
		}
		cur = s
		st.snaps = append(st.snaps, s)
	}
	// Drop what is older than the history; keep the base of the window.
	for len(st.snaps) > 2 && (now.Sub(st.snaps[1].at) > statusHistory || len(st.snaps) > statusMaxSnaps) {
		st.snaps = st.snaps[1:]
	}
	var base *snapshot
	for i := len(st.snaps) - 1; i >= 0; i-- {
		if cur.at.Sub(st.snaps[i].at) >= 500*time.Millisecond {
			base = &st.snaps[i]
			if cur.at.Sub(st.snaps[i].at) >= statusWindow {
				break
			}
		}
	}
	return p.buildStatus(cur, base), nil
}

// Status of a sidecar: its provider's (see Provider.Status).
func (m *Metrics) Status(ctx context.Context) (*Status, error) { return m.p.Status(ctx) }

func (m *Metrics) buildStatus(cur snapshot, base *snapshot) *Status {
	return m.p.buildStatus(cur, base)
}

func (p *Provider) buildStatus(cur snapshot, base *snapshot) *Status {
	v := cur.values
	out := &Status{Tenant: p.sidecar, Uptime: time.Since(p.started).Seconds(), Upstream: p.upstreamView(),
		ErrorClasses: map[string]float64{}, GeneratedAtMs: cur.at.UnixMilli()}
	if p.sidecar == "" {
		out.Tenants = p.tenantsView(cur, base)
	}
	_, hasBreaker := v["keyfence.breaker.state"]
	out.Breaker = "off"
	if hasBreaker {
		out.Breaker = [...]string{"closed", "half-open", "open"}[min(max(int(v["keyfence.breaker.state"]), 0), 2)]
	}
	out.Connections = connView{Clients: v["keyfence.client.connections"], Rejected: v["keyfence.client.connections.rejected"],
		PinnedUsed: v["db.client.connection.count|db.client.connection.state=used"], PinnedIdle: v["db.client.connection.count|db.client.connection.state=idle"],
		PinnedMax: ptrIf(v, "db.client.connection.max"), OutputDrops: v["keyfence.client.output_disconnects"], BudgetDrops: v["keyfence.request_buffer.rejections"]}
	out.Limits = limitsView{ScriptsLoaded: ptrIf(v, "keyfence.scripts.loaded"), ScriptsMax: ptrIf(v, "keyfence.scripts.limit")}
	if _, ok := v["keyfence.upstream.memory.used"]; ok {
		out.Memory = &memoryView{Used: v["keyfence.upstream.memory.used"], Limit: v["keyfence.upstream.memory.limit"], Ratio: ptrIf(v, "keyfence.upstream.memory.utilization")}
	}
	_, hasReads := v["keyfence.fallback.reads"]
	if hasReads {
		out.Fallback = &fallbackView{HitsTotal: v["keyfence.fallback.reads|outcome=hit"], MissesTotal: v["keyfence.fallback.reads|outcome=miss"],
			CacheBytes: ptrIf(v, "keyfence.fallback.cache.used"), CacheEntries: ptrIf(v, "keyfence.fallback.cache.entries"), CacheEvicted: ptrIf(v, "keyfence.fallback.cache.evictions")}
		out.Fallback.CacheDisabled = out.Fallback.CacheBytes == nil
	}

	var cmds, serverErrs float64
	var probesOK, probesAll float64
	if base != nil {
		secs := cur.at.Sub(base.at).Seconds()
		out.Window = secs
		rate := func(key string) float64 { return math.Max(cur.values[key]-base.values[key], 0) / secs }
		cmds = rate("keyfence.commands")
		out.Commands = cmds
		out.Errors = rate("keyfence.commands|outcome=error")
		for _, c := range classNames {
			if r := rate("keyfence.client.errors|class=" + c); r > 0 {
				out.ErrorClasses[c] = r
			}
		}
		for _, c := range ServerClasses {
			serverErrs += rate("keyfence.client.errors|class=" + c)
		}
		if cmds > 0 {
			out.ErrorRatio = ptr(out.Errors / cmds)
		}
		out.Connections.Accepted = rate("keyfence.client.connections.accepted")
		if out.Fallback != nil {
			out.Fallback.Hits, out.Fallback.Misses = rate("keyfence.fallback.reads|outcome=hit"), rate("keyfence.fallback.reads|outcome=miss")
			if t := out.Fallback.Hits + out.Fallback.Misses; t > 0 {
				out.Fallback.HitRatio = ptr(out.Fallback.Hits / t)
			}
			out.Fallback.ServingNow = out.Fallback.Hits > 0
		}
		probesOK, probesAll = rate("keyfence.upstream.probes|result=success"), rate("keyfence.upstream.probes")
		out.Latency.Client = quantilesOf(cur.hists["keyfence.command.duration"], base.hists["keyfence.command.duration"])
		out.Latency.Upstream = quantilesOf(cur.hists["keyfence.upstream.duration"], base.hists["keyfence.upstream.duration"])
		var top []commandRate
		for key, n := range cur.values {
			if len(key) > 4 && key[:4] == "cmd|" {
				if r := (n - base.values[key]) / secs; r > 0 {
					top = append(top, commandRate{Command: key[4:], Rate: r, Errors: math.Max(cur.values["cmderr|"+key[4:]]-base.values["cmderr|"+key[4:]], 0) / secs})
				}
			}
		}
		sort.Slice(top, func(i, j int) bool {
			return top[i].Rate > top[j].Rate || top[i].Rate == top[j].Rate && top[i].Command < top[j].Command
		})
		out.TopCommands = top[:min(len(top), 10)]
	}
	switch {
	case cmds > 0:
		out.Availability = ptr(1 - math.Min(serverErrs/cmds, 1))
	case probesAll > 0:
		out.Availability = ptr(probesOK / probesAll)
	}
	if out.Upstream.Up != nil && !*out.Upstream.Up {
		// Down now: whatever the window says, clients are not served as
		// they should be (the breaker may be failing them fast).
		if out.Availability == nil || *out.Availability >= AlertAvailability {
			out.Availability = ptr(0)
		}
	}
	if out.TopCommands == nil {
		out.TopCommands = []commandRate{}
	}
	out.Alerts = alerts(out)
	return out
}

// tenantsView lists the tenants of cur, the busiest first: commands/s over
// the window (none before there is one), then clients, then the id.
func (p *Provider) tenantsView(cur snapshot, base *snapshot) *tenantsView {
	out := &tenantsView{Count: int(p.count.Load()), Max: p.maxTenants, Overflowed: p.overflowed.Load(), Top: []tenantRate{}}
	for id, f := range cur.tenants {
		r := tenantRate{Tenant: id, Clients: f.clients}
		if base != nil {
			secs := cur.at.Sub(base.at).Seconds()
			var was tenantFigures
			if b := base.tenants[id]; b != nil {
				was = *b
			}
			r.Commands = math.Max(f.commands-was.commands, 0) / secs
			r.Errors = math.Max(f.errors-was.errors, 0) / secs
		}
		out.Top = append(out.Top, r)
	}
	sort.Slice(out.Top, func(i, j int) bool {
		a, b := out.Top[i], out.Top[j]
		if a.Commands != b.Commands {
			return a.Commands > b.Commands
		}
		if a.Clients != b.Clients {
			return a.Clients > b.Clients
		}
		return a.Tenant < b.Tenant
	})
	if len(out.Top) > statusMaxTenants {
		out.More = len(out.Top) - statusMaxTenants
		out.Top = out.Top[:statusMaxTenants]
	}
	return out
}

// alerts judges the four signals as the Prometheus rules do, over the
// page's short window.
func alerts(s *Status) []alertView {
	lat := alertView{Name: "Latency p99", Threshold: "> 2 s", Value: "no traffic"}
	if p := s.Latency.Client.P99; p != nil {
		lat.Known, lat.Firing, lat.Value = true, *p > AlertLatencySeconds, seconds(*p)
	}
	errs := alertView{Name: "Error rate", Threshold: "> 1 %", Value: "no traffic"}
	if r := s.ErrorRatio; r != nil {
		errs.Known, errs.Firing, errs.Value = true, *r > AlertErrorRatio, percent(*r)
	}
	avail := alertView{Name: "Availability", Threshold: "< 99.9 %", Value: "no data"}
	if a := s.Availability; a != nil {
		avail.Known, avail.Firing, avail.Value = true, *a < AlertAvailability, percent(*a)
	}
	mem := alertView{Name: "Redis memory", Threshold: "> 80 % of maxmemory", Value: "unknown"}
	if s.Memory != nil {
		if r := s.Memory.Ratio; r != nil {
			mem.Known, mem.Firing, mem.Value = true, *r > AlertMemoryUtilRatio, percent(*r)
		} else {
			mem.Known, mem.Value = true, "no maxmemory set"
		}
	}
	return []alertView{lat, errs, avail, mem}
}

// quantilesOf estimates p50/p90/p99 from the buckets added between base and
// cur, interpolating linearly inside a bucket as Prometheus's
// histogram_quantile does.
func quantilesOf(cur, base hist) quantiles {
	if len(cur.counts) == 0 {
		return quantiles{}
	}
	delta := make([]uint64, len(cur.counts))
	var total uint64
	for i, c := range cur.counts {
		var b uint64
		if i < len(base.counts) {
			b = base.counts[i]
		}
		if c > b {
			delta[i] = c - b
		}
		total += delta[i]
	}
	if total == 0 {
		return quantiles{}
	}
	q := func(p float64) *float64 {
		rank := p * float64(total)
		var seen float64
		for i, c := range delta {
			if seen+float64(c) >= rank && c > 0 {
				lo := 0.0
				if i > 0 {
					lo = cur.bounds[i-1]
				}
				if i >= len(cur.bounds) { // the +Inf bucket: its lower bound is all we know
					return ptr(lo)
				}
				hi := cur.bounds[i]
				return ptr(lo + (hi-lo)*(rank-seen)/float64(c))
			}
			seen += float64(c)
		}
		return ptr(cur.bounds[len(cur.bounds)-1])
	}
	return quantiles{P50: q(0.5), P90: q(0.9), P99: q(0.99)}
}

func ptr(f float64) *float64 { return &f }

func ptrIf(v map[string]float64, key string) *float64 {
	if f, ok := v[key]; ok {
		return ptr(f)
	}
	return nil
}

func seconds(s float64) string {
	switch {
	case s < 0.001:
		return formatFloat(s*1e6, 0) + " µs"
	case s < 1:
		return formatFloat(s*1e3, 1) + " ms"
	}
	return formatFloat(s, 2) + " s"
}

func percent(r float64) string {
	if r > 0.99 && r < 1 {
		return formatFloat(r*100, 3) + " %"
	}
	return formatFloat(r*100, 2) + " %"
}

func formatFloat(f float64, prec int) string { return strconv.FormatFloat(f, 'f', prec, 64) }
