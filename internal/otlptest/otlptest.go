package otlptest

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Receiver accepts OTLP on two loopback listeners: GRPCAddr (host:port)
// and HTTPURL (http://host:port, paths /v1/metrics and /v1/traces).
type Receiver struct {
	GRPCAddr string
	HTTPURL  string

	mu      sync.Mutex
	metrics []received[*metricpb.ResourceMetrics]
	spans   []received[*tracepb.ResourceSpans]
	changed chan struct{} // closed and replaced on every export

	grpc *grpc.Server
	http *http.Server
}

// received is one export's data and the transport it came by.
type received[T any] struct {
	Transport string // "grpc" or "http"
	Data      T
}

// Start starts a receiver that stops when the test ends.
func Start(t testing.TB) *Receiver {
	t.Helper()
	r := &Receiver{changed: make(chan struct{})}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.GRPCAddr = gl.Addr().String()
	r.HTTPURL = "http://" + hl.Addr().String()
	r.grpc = grpc.NewServer()
	colmetricpb.RegisterMetricsServiceServer(r.grpc, metricsService{r: r})
	coltracepb.RegisterTraceServiceServer(r.grpc, traceService{r: r})
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/metrics", func(w http.ResponseWriter, req *http.Request) {
		var in colmetricpb.ExportMetricsServiceRequest
		if !decode(w, req, &in) {
			return
		}
		r.addMetrics("http", in.GetResourceMetrics())
		reply(w, &colmetricpb.ExportMetricsServiceResponse{})
	})
	mux.HandleFunc("POST /v1/traces", func(w http.ResponseWriter, req *http.Request) {
		var in coltracepb.ExportTraceServiceRequest
		if !decode(w, req, &in) {
			return
		}
		r.addSpans("http", in.GetResourceSpans())
		reply(w, &coltracepb.ExportTraceServiceResponse{})
	})
	r.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = r.grpc.Serve(gl) }()
	go func() { _ = r.http.Serve(hl) }()
	t.Cleanup(func() {
		r.grpc.Stop()
		_ = r.http.Close()
	})
	return r
}

// decode reads an OTLP/HTTP protobuf body, gzip-compressed or not.
func decode(w http.ResponseWriter, req *http.Request, m proto.Message) bool {
	if ct := req.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		http.Error(w, "want application/x-protobuf, got "+ct, http.StatusUnsupportedMediaType)
		return false
	}
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return false
		}
		body = zr
	}
	b, err := io.ReadAll(io.LimitReader(body, 64<<20))
	if err == nil {
		err = proto.Unmarshal(b, m)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func reply(w http.ResponseWriter, m proto.Message) {
	b, err := proto.Marshal(m)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = io.Copy(w, bytes.NewReader(b))
}

type metricsService struct {
	colmetricpb.UnimplementedMetricsServiceServer
	r *Receiver
}

func (s metricsService) Export(_ context.Context, in *colmetricpb.ExportMetricsServiceRequest) (*colmetricpb.ExportMetricsServiceResponse, error) {
	s.r.addMetrics("grpc", in.GetResourceMetrics())
	return &colmetricpb.ExportMetricsServiceResponse{}, nil
}

type traceService struct {
	coltracepb.UnimplementedTraceServiceServer
	r *Receiver
}

func (s traceService) Export(_ context.Context, in *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s.r.addSpans("grpc", in.GetResourceSpans())
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (r *Receiver) addMetrics(transport string, rms []*metricpb.ResourceMetrics) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rm := range rms {
		r.metrics = append(r.metrics, received[*metricpb.ResourceMetrics]{transport, rm})
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *Receiver) addSpans(transport string, rss []*tracepb.ResourceSpans) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range rss {
		r.spans = append(r.spans, received[*tracepb.ResourceSpans]{transport, rs})
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

// Metric is one received metric, flattened for tests.
type Metric struct {
	Transport string
	Resource  map[string]string
	Name      string
	Unit      string
	Points    []Point
}

// Point is one data point: its attributes and its value (a sum's or a
// gauge's; a histogram's count).
type Point struct {
	Attrs map[string]string
	Value float64
}

// Metrics returns every metric received so far, in arrival order.
func (r *Receiver) Metrics() []Metric {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Metric
	for _, rm := range r.metrics {
		res := attrs(rm.Data.GetResource().GetAttributes())
		for _, sm := range rm.Data.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				out = append(out, Metric{Transport: rm.Transport, Resource: res, Name: m.GetName(), Unit: m.GetUnit(), Points: points(m)})
			}
		}
	}
	return out
}

func points(m *metricpb.Metric) []Point {
	var out []Point
	num := func(dp *metricpb.NumberDataPoint) Point {
		v := dp.GetAsDouble()
		if _, ok := dp.GetValue().(*metricpb.NumberDataPoint_AsInt); ok {
			v = float64(dp.GetAsInt())
		}
		return Point{Attrs: attrs(dp.GetAttributes()), Value: v}
	}
	switch d := m.GetData().(type) {
	case *metricpb.Metric_Sum:
		for _, dp := range d.Sum.GetDataPoints() {
			out = append(out, num(dp))
		}
	case *metricpb.Metric_Gauge:
		for _, dp := range d.Gauge.GetDataPoints() {
			out = append(out, num(dp))
		}
	case *metricpb.Metric_Histogram:
		for _, dp := range d.Histogram.GetDataPoints() {
			out = append(out, Point{Attrs: attrs(dp.GetAttributes()), Value: float64(dp.GetCount())})
		}
	}
	return out
}

// Span is one received span, flattened for tests.
type Span struct {
	Transport      string
	Resource       map[string]string
	Name           string
	Kind           string
	TraceID        string
	SpanID         string
	ParentSpanID   string
	Attrs          map[string]string
	StatusError    bool
	StartNs, EndNs uint64
}

// Spans returns every span received so far.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Span
	for _, rs := range r.spans {
		res := attrs(rs.Data.GetResource().GetAttributes())
		for _, ss := range rs.Data.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				out = append(out, Span{Transport: rs.Transport, Resource: res, Name: s.GetName(), Kind: s.GetKind().String(),
					TraceID: fmt.Sprintf("%x", s.GetTraceId()), SpanID: fmt.Sprintf("%x", s.GetSpanId()), ParentSpanID: fmt.Sprintf("%x", s.GetParentSpanId()),
					Attrs: attrs(s.GetAttributes()), StatusError: s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR,
					StartNs: s.GetStartTimeUnixNano(), EndNs: s.GetEndTimeUnixNano()})
			}
		}
	}
	return out
}

// Wait blocks until cond holds of what was received, or ctx ends; it
// rechecks after every export, so it takes no wall-clock guess.
func (r *Receiver) Wait(ctx context.Context, cond func() bool) error {
	for {
		r.mu.Lock()
		ch := r.changed
		r.mu.Unlock()
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("otlptest: %w while waiting", ctx.Err())
		case <-ch:
		}
	}
}

// MetricNames lists the distinct names received, sorted.
func (r *Receiver) MetricNames() []string {
	seen := map[string]bool{}
	for _, m := range r.Metrics() {
		seen[m.Name] = true
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// attrs renders attribute values as text: string slices as their elements
// joined by ",", so a test can look for a value without a type switch.
func attrs(kvs []*commonpb.KeyValue) map[string]string {
	out := map[string]string{}
	for _, kv := range kvs {
		out[kv.GetKey()] = valueText(kv.GetValue())
	}
	return out
}

func valueText(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return fmt.Sprint(x.IntValue)
	case *commonpb.AnyValue_DoubleValue:
		return fmt.Sprint(x.DoubleValue)
	case *commonpb.AnyValue_BoolValue:
		return fmt.Sprint(x.BoolValue)
	case *commonpb.AnyValue_ArrayValue:
		var b bytes.Buffer
		for i, e := range x.ArrayValue.GetValues() {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(valueText(e))
		}
		return b.String()
	}
	return ""
}
