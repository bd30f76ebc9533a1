package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/keyfence/keyfence/proxy"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/telemetry"
)

func main() {
	if len(os.Args) > 1 {
		var sub func() error
		switch os.Args[1] {
		case "acl":
			sub = func() error { return runACL(os.Args[2:], lookupEnv, os.Stdout, os.Stderr) }
		case "hash-password":
			sub = func() error { return runHashPassword(os.Args[2:], os.Stdin, os.Stdout, os.Stderr) }
		}
		if sub != nil {
			err := sub()
			if errors.Is(err, flag.ErrHelp) {
				os.Exit(0)
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "keyfence: "+err.Error())
				os.Exit(2)
			}
			return
		}
	}
	cfg, err := parseConfig(os.Args[1:], lookupEnv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "keyfence: "+err.Error())
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "keyfence: "+err.Error())
		os.Exit(1)
	}
}

func run(cfg *config) error {
	log, err := telemetry.NewLogger(os.Stderr, cfg.logFormat, cfg.logLevel)
	if err != nil {
		return err
	}
	slog.SetDefault(log) // parts configured before run (the Sentinel resolver) log through it
	cfg.proxy.Logger = log
	for _, w := range cfg.warnings {
		log.Warn(w)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	otlp, err := telemetry.NewOTLP(ctx, lookupEnv)
	if err != nil {
		return err
	}
	var srv *proxy.Server
	metrics, err := telemetry.NewMetrics(cfg.proxy.Tenant, rewrite.CommandNames(), gauges(cfg, &srv),
		telemetry.WithReader(otlp.Reader), telemetry.WithResource(otlp.Resource), telemetry.WithLogger(log.With("tenant", cfg.proxy.Tenant)),
		telemetry.WithTracerProvider(tracerProvider(otlp)))
	if err != nil {
		return err
	}
	cfg.proxy.Metrics = metrics
	srv, err = proxy.New(cfg.proxy)
	if err != nil {
		return err
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	if otlp.Reader != nil || otlp.Tracer != nil {
		log.Info("OTLP export", "signals", otlp.String())
	}
	bg, stopBackground := context.WithCancel(context.Background())
	defer stopBackground()
	go metrics.RunProber(bg, cfg.probeInterval, srv.ProbeUpstream)
	go metrics.RunWatch(bg)

	var draining atomic.Bool
	var admin *telemetry.Admin
	if cfg.admin != "" {
		opts := cfg.adminOpts
		opts.Cmdline = append([]string{os.Args[0]}, redactArgs(os.Args[1:])...)
		opts.Status = metrics.Status
		admin, err = telemetry.NewAdmin(cfg.admin, readiness(srv, &draining, cfg.proxy.Fallback != nil && cfg.proxy.FallbackCache), metrics.Handler(), log, opts)
		if err != nil {
			return err
		}
		go func() {
			if err := admin.Serve(); err != nil {
				log.Error("admin listener stopped", "err", err)
			}
		}()
		log.Info("admin listening", "addr", admin.Addr().String(), "token", cfg.adminOpts.Token != "", "pprof", cfg.adminOpts.Pprof)
	}
	// Serve returns when ctx is cancelled by a signal; then drain. The
	// admin listener stays up while draining so that /readyz says so
	// (and Kubernetes stops sending clients) until the last session ends.
	if err := srv.Serve(ctx); err != nil {
		return err
	}
	draining.Store(true)
	log.Info("draining", "event", "draining", "timeout", cfg.shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	drainErr := srv.Shutdown(sctx)
	stopBackground()
	if admin != nil {
		_ = admin.Shutdown(sctx)
	}
	// Flush what OTLP has not sent yet, on a budget of its own: the drain
	// may have used all of its own.
	fctx, cancelFlush := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelFlush()
	_ = metrics.Shutdown(fctx)
	_ = otlp.Shutdown(fctx)
	if drainErr != nil {
		return fmt.Errorf("drain: %w", drainErr)
	}
	log.Info("stopped")
	return nil
}

// tracerProvider is nil (tracing off) unless OTLP traces are on; a typed
// nil would look like a provider.
func tracerProvider(o *telemetry.OTLP) trace.TracerProvider {
	if o.Tracer == nil {
		return nil
	}
	return o.Tracer
}

// gauges reads the server's figures for the metrics; *srv is set once the
// server exists, before anything collects.
func gauges(cfg *config, srv **proxy.Server) telemetry.Gauges {
	maxPinned, maxScripts, budget := int64(cfg.proxy.MaxPinned), int64(cfg.proxy.MaxScripts), cfg.proxy.MaxRequestBufferTotal
	g := telemetry.Gauges{
		Sessions:                func() int64 { return int64((*srv).Stats().Sessions) },
		PinnedConns:             func() int64 { return int64((*srv).Stats().PinnedConns) },
		PinnedIdle:              func() int64 { return int64((*srv).PinnedIdle()) },
		PinnedMax:               func() int64 { return maxPinned },
		OutputDisconnects:       func() int64 { return (*srv).Stats().ClientOutputDisconnects },
		RequestBufferRejections: func() int64 { return (*srv).Stats().RequestBufferRefused },
		RequestBufferBytes:      func() int64 { return (*srv).Stats().RequestBufferBytes },
		RequestBufferLimit:      func() int64 { return budget },
		ScriptsLoaded:           func() int64 { return int64((*srv).ScriptsLoaded()) },
		ScriptsMax:              func() int64 { return maxScripts },
	}
	if cfg.proxy.Fallback != nil { // the breaker is on
		g.Breaker = func() int64 { return breakerLevel((*srv).Stats().Breaker) }
		g.FallbackHits = func() int64 { return (*srv).Stats().FallbackHits }
		g.FallbackMisses = func() int64 { return (*srv).Stats().FallbackMisses }
		if cfg.proxy.FallbackCache {
			g.FallbackCache = func() telemetry.CacheStats {
				st, _ := (*srv).FallbackCacheStats()
				return st
			}
		}
	}
	return g
}

// readiness is /readyz: not ready while draining, or while upstream does
// not answer and there is no read cache to serve from; ready, with a note,
// when the cache stands in for upstream.
func readiness(srv *proxy.Server, draining *atomic.Bool, fallbackCache bool) telemetry.ReadyFunc {
	return func(ctx context.Context) telemetry.Readiness {
		if draining.Load() {
			return telemetry.Readiness{Reason: "draining: keyfence is shutting down and takes no new clients"}
		}
		err := srv.Ping(ctx)
		switch {
		case err == nil:
			return telemetry.Readiness{Ready: true}
		case fallbackCache:
			return telemetry.Readiness{Ready: true, Reason: "upstream down, serving cached reads (--fallback); writes fail", Detail: err}
		}
		return telemetry.Readiness{Reason: "upstream down and the read fallback is off", Detail: err}
	}
}

// breakerLevel maps the breaker's state to the gauge's numbers.
func breakerLevel(state string) int64 {
	switch state {
	case "half-open":
		return 1
	case "open":
		return 2
	}
	return 0
}
