package main

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/keyfence/keyfence/proxy"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/telemetry"
)

// frontend is what run serves: one tenant's Server (sidecar mode) or a
// Gateway of many (--tenants-file).
type frontend interface {
	Listen() error
	Serve(ctx context.Context) error
	Shutdown(ctx context.Context) error
	Ping(ctx context.Context) error
	ProbeUpstream(ctx context.Context) (telemetry.UpstreamMemory, error)
}

// telemetrySink is the metrics side of a frontend: a sidecar's
// *telemetry.Metrics or a gateway's *telemetry.Provider.
type telemetrySink interface {
	Handler() http.Handler
	Status(ctx context.Context) (*telemetry.Status, error)
	RunProber(ctx context.Context, interval time.Duration, probe telemetry.ProbeFunc)
	RunWatch(ctx context.Context)
	Shutdown(ctx context.Context) error
}

func telemetryOptions(log *slog.Logger, otlp *telemetry.OTLP) []telemetry.Option {
	return []telemetry.Option{telemetry.WithReader(otlp.Reader), telemetry.WithResource(otlp.Resource),
		telemetry.WithLogger(log), telemetry.WithTracerProvider(tracerProvider(otlp))}
}

// newSidecar is sidecar mode: one tenant, every client its.
func newSidecar(cfg *config, log *slog.Logger, otlp *telemetry.OTLP) (*proxy.Server, *telemetry.Metrics, error) {
	srv, err := proxy.New(cfg.proxy)
	if err != nil {
		return nil, nil, err
	}
	opts := telemetryOptions(log.With("tenant", cfg.proxy.Tenant), otlp)
	m, err := telemetry.NewMetrics(cfg.proxy.Tenant, rewrite.CommandNames(), srv.Gauges(), opts...)
	if err != nil {
		return nil, nil, err
	}
	srv.UseMetrics(m)
	return srv, m, nil
}

// newGateway is gateway mode: the tenants file's tenants, each client's
// chosen by AUTH.
func newGateway(cfg *config, log *slog.Logger, otlp *telemetry.OTLP) (*proxy.Gateway, *telemetry.Provider, error) {
	g, err := proxy.NewGateway(proxy.GatewayConfig{Server: cfg.proxy, Tenants: cfg.tenants, QuotaWait: cfg.quotaWait})
	if err != nil {
		return nil, nil, err
	}
	opts := append(telemetryOptions(log, otlp), telemetry.WithMaxTenants(cfg.maxTenantMetrics), telemetry.WithProcessGauges(g.ProcessGauges()))
	p, err := telemetry.NewProvider(rewrite.CommandNames(), opts...)
	if err != nil {
		return nil, nil, err
	}
	g.UseTelemetry(p)
	return g, p, nil
}

// reloadOnHangup reloads the tenants file on SIGHUP: a file that does not
// load is logged and the gateway keeps the one it has.
func reloadOnHangup(path, keyFormat string, g *proxy.Gateway, log *slog.Logger) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-hup:
				f, err := readTenantsFile(path, keyFormat, lookupEnv)
				if err != nil {
					log.Error("SIGHUP: tenants file rejected; the gateway keeps the previous one", "event", "reload_failed", "err", err)
					continue
				}
				g.Reload(f)
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
	}
}
