package telemetry

import (
	"context"
	"math"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// The two latency histograms are kept here rather than in OpenTelemetry
// instruments. The SDK keeps every attribute set a synchronous instrument
// has seen for as long as the process lives (it has no way to forget one:
// open-telemetry/opentelemetry-specification#2232), so a tenant removed on reload
// would go on being exported; and there are no observable histograms to
// unregister as the counters are. So each tenant counts its own buckets in
// atomics and the provider hands them to every reader as a metric
// Producer: a tenant that is gone is simply not produced any more.

// latencyBucketsNs are latencyBuckets in nanoseconds, which they all are
// exactly.
var latencyBucketsNs = func() (ns [len(latencyBuckets)]int64) {
	for i, b := range latencyBuckets {
		ns[i] = int64(math.Round(b * 1e9))
	}
	return ns
}()

// histogram is one series of a latency histogram: recording is a short scan
// of the bounds and two atomic adds.
type histogram struct {
	counts [len(latencyBuckets) + 1]atomic.Uint64 // the last: past the last bound
	sumNs  atomic.Int64
}

// record counts one latency of d. A bucket holds the values up to and
// including its bound, as OpenTelemetry's and Prometheus's do.
func (h *histogram) record(d time.Duration) {
	ns := max(int64(d), 0)
	i := 0
	for i < len(latencyBucketsNs) && ns > latencyBucketsNs[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(ns)
}

// point reads h as a cumulative data point; ok is false while it holds
// nothing, so that a series appears with its first value as an SDK
// histogram's does. The count is the sum of the buckets read, so that the
// two always agree even while others record.
func (h *histogram) point() (dp metricdata.HistogramDataPoint[float64], ok bool) {
	dp.BucketCounts = make([]uint64, len(h.counts))
	for i := range h.counts {
		dp.BucketCounts[i] = h.counts[i].Load()
		dp.Count += dp.BucketCounts[i]
	}
	dp.Sum = float64(h.sumNs.Load()) / 1e9
	dp.Bounds = latencyBuckets[:]
	return dp, dp.Count > 0
}

// histDesc describes one of the two histograms.
type histDesc struct {
	name, desc string
	series     func(m *Metrics) *histogram
}

var histograms = []histDesc{
	{"keyfence.command.duration", "Client-seen latency of a batch: from reading the requests to writing the replies; blocking commands (BLPOP, XREAD BLOCK, WAIT…), which wait by design, are left out",
		func(m *Metrics) *histogram { return &m.duration }},
	{"keyfence.upstream.duration", "Upstream round trip of one batch",
		func(m *Metrics) *histogram { return &m.upstream }},
}

// histProducer produces the live tenants' histograms for a reader.
type histProducer struct{ p *Provider }

var _ sdkmetric.Producer = histProducer{}

// Produce implements sdkmetric.Producer. It runs at collection time only,
// never on the data path.
func (h histProducer) Produce(context.Context) ([]metricdata.ScopeMetrics, error) {
	tenants := h.p.live()
	now := time.Now()
	var out []metricdata.Metrics
	for _, d := range histograms {
		var pts []metricdata.HistogramDataPoint[float64]
		for _, m := range tenants {
			dp, ok := d.series(m).point()
			if !ok {
				continue
			}
			dp.Attributes, dp.StartTime, dp.Time = m.attrs, m.started, now
			pts = append(pts, dp)
		}
		if len(pts) > 0 {
			out = append(out, metricdata.Metrics{Name: d.name, Description: d.desc, Unit: "s",
				Data: metricdata.Histogram[float64]{DataPoints: pts, Temporality: metricdata.CumulativeTemporality}})
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return []metricdata.ScopeMetrics{{Scope: instrumentation.Scope{Name: scopeName}, Metrics: out}}, nil
}

// lateProducer is the producer of a reader made before its provider (the
// OTLP reader NewOTLP makes): it produces nothing until WithReader binds it.
type lateProducer struct{ p atomic.Pointer[Provider] }

func (l *lateProducer) Produce(ctx context.Context) ([]metricdata.ScopeMetrics, error) {
	if p := l.p.Load(); p != nil {
		return histProducer{p}.Produce(ctx)
	}
	return nil, nil
}
