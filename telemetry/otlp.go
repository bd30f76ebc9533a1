package telemetry

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// OTLP is what the standard OTEL_* environment variables ask for: a
// metric reader that pushes to an OTLP endpoint, and a tracer provider
// when traces are on. Either may be nil. Only the choices are made here
// (on or off, gRPC or HTTP); the exporters and the SDK read the rest of the
// variables themselves — endpoint, headers, TLS files, compression, timeout,
// OTEL_METRIC_EXPORT_INTERVAL, OTEL_TRACES_SAMPLER_ARG — so every variable
// means what the OpenTelemetry specification says.
type OTLP struct {
	Resource *resource.Resource
	Reader   sdkmetric.Reader         // nil: metrics go to /metrics only
	Tracer   *sdktrace.TracerProvider // nil: tracing is off
}

// OTLPSettings describes the choices, for the start-up log line.
func (o *OTLP) String() string {
	var parts []string
	if o.Reader != nil {
		parts = append(parts, "metrics")
	}
	if o.Tracer != nil {
		parts = append(parts, "traces")
	}
	if len(parts) == 0 {
		return "off"
	}
	return strings.Join(parts, "+")
}

// NewOTLP reads the OTEL_* variables through getenv:
//
//   - Metrics go by OTLP when OTEL_EXPORTER_OTLP_ENDPOINT or
//     OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is set, unless OTEL_METRICS_EXPORTER
//     is "none"; /metrics is served either way.
//   - Traces are off unless OTEL_TRACES_SAMPLER names a sampler that samples
//     something (keyfence's default is off, where the specification's is
//     parentbased_always_on: a proxy's spans are many) and an endpoint is
//     set (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
//     OTEL_TRACES_EXPORTER=none turns them off too.
//   - OTEL_EXPORTER_OTLP_PROTOCOL (or the per-signal _METRICS_ / _TRACES_
//     form) is grpc or http/protobuf, the specification's default.
//   - OTEL_SDK_DISABLED=true turns both off.
//
// The exporters themselves read the process environment (os.Getenv).
func NewOTLP(ctx context.Context, getenv func(string) string) (*OTLP, error) {
	o := &OTLP{}
	res, err := resource.New(ctx, resource.WithTelemetrySDK(), resource.WithAttributes(attribute.String("service.name", "keyfence")), resource.WithFromEnv())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	o.Resource = res
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return o, nil
	}
	endpoint := func(signal string) bool {
		return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_"+signal+"_ENDPOINT") != ""
	}
	protocol := func(signal string) (string, error) {
		p := getenv("OTEL_EXPORTER_OTLP_" + signal + "_PROTOCOL")
		if p == "" {
			p = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
		}
		switch p {
		case "", "http/protobuf":
			return "http/protobuf", nil
		case "grpc":
			return "grpc", nil
		}
		return "", fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL %q: keyfence speaks grpc or http/protobuf", p)
	}

	switch exp := strings.TrimSpace(getenv("OTEL_METRICS_EXPORTER")); exp {
	case "", "otlp", "prometheus":
		// "prometheus" is /metrics, always served; OTLP when an endpoint is set.
		if endpoint("METRICS") && exp != "prometheus" {
			p, err := protocol("METRICS")
			if err != nil {
				return nil, err
			}
			var mexp sdkmetric.Exporter
			if p == "grpc" {
				mexp, err = otlpmetricgrpc.New(ctx)
			} else {
				mexp, err = otlpmetrichttp.New(ctx)
			}
			if err != nil {
				return nil, fmt.Errorf("OTLP metric exporter: %w", err)
			}
			// The reader reads OTEL_METRIC_EXPORT_INTERVAL; the latency
			// histograms come from its producer once WithReader has bound
			// it to a provider.
			hists := &lateProducer{}
			o.Reader = &otlpReader{PeriodicReader: sdkmetric.NewPeriodicReader(mexp, sdkmetric.WithProducer(hists)), hists: hists}
		}
	case "none":
	default:
		return nil, fmt.Errorf("OTEL_METRICS_EXPORTER %q: keyfence exports otlp (when an endpoint is set) or none; /metrics is always served", exp)
	}

	sampler := strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER"))
	switch sampler {
	case "", "always_off", "parentbased_always_off":
		return o, nil
	case "always_on", "traceidratio", "parentbased_always_on", "parentbased_traceidratio":
	default:
		// The SDK would fall back to always_on with only a log line: a
		// typo must not turn on a span per batch.
		return nil, fmt.Errorf("OTEL_TRACES_SAMPLER %q: want always_on, always_off, traceidratio or their parentbased_ forms", sampler)
	}
	switch exp := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); exp {
	case "", "otlp":
	case "none":
		return o, nil
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER %q: keyfence exports traces by otlp only", exp)
	}
	if !endpoint("TRACES") {
		return nil, errors.New("OTEL_TRACES_SAMPLER is set but no OTLP endpoint is: set OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)")
	}
	p, err := protocol("TRACES")
	if err != nil {
		return nil, err
	}
	var texp sdktrace.SpanExporter
	if p == "grpc" {
		texp, err = otlptracegrpc.New(ctx)
	} else {
		texp, err = otlptracehttp.New(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	// No WithSampler: the SDK builds the one OTEL_TRACES_SAMPLER and
	// OTEL_TRACES_SAMPLER_ARG name. The batch processor reads OTEL_BSP_*.
	o.Tracer = sdktrace.NewTracerProvider(sdktrace.WithBatcher(texp), sdktrace.WithResource(res))
	return o, nil
}

// otlpReader is the OTLP metric reader, with the producer of keyfence's
// latency histograms (histogram.go), which WithReader recognises and binds.
type otlpReader struct {
	*sdkmetric.PeriodicReader
	hists *lateProducer
}

// Shutdown flushes and stops the tracer provider (the metric reader stops
// with Provider.Shutdown or Metrics.Shutdown).
func (o *OTLP) Shutdown(ctx context.Context) error {
	if o == nil || o.Tracer == nil {
		return nil
	}
	return o.Tracer.Shutdown(ctx)
}
