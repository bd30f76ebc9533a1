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
	var fe frontend
	var tel telemetrySink
	if cfg.tenants != nil {
		g, p, err := newGateway(cfg, log, otlp)
		if err != nil {
			return err
		}
		fe, tel = g, p
		stopReload := reloadOnHangup(cfg.tenantsFile, cfg.proxy.KeyFormat, g, log)
		defer stopReload()
	} else {
		srv, m, err := newSidecar(cfg, log, otlp)
		if err != nil {
			return err
		}
		fe, tel = srv, m
	}
	if err := fe.Listen(); err != nil {
		return err
	}
	if otlp.Reader != nil || otlp.Tracer != nil {
		log.Info("OTLP export", "signals", otlp.String())
	}
	bg, stopBackground := context.WithCancel(context.Background())
	defer stopBackground()
	go tel.RunProber(bg, cfg.probeInterval, fe.ProbeUpstream)
	go tel.RunWatch(bg)

	var draining atomic.Bool
	var admin *telemetry.Admin
	if cfg.admin != "" {
		opts := cfg.adminOpts
		opts.Cmdline = append([]string{os.Args[0]}, redactArgs(os.Args[1:])...)
		opts.Status = tel.Status
		admin, err = telemetry.NewAdmin(cfg.admin, readiness(fe, &draining, cfg.proxy.Fallback != nil && cfg.proxy.FallbackCache), tel.Handler(), log, opts)
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
	if err := fe.Serve(ctx); err != nil {
		return err
	}
	draining.Store(true)
	log.Info("draining", "event", "draining", "timeout", cfg.shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	drainErr := fe.Shutdown(sctx)
	stopBackground()
	if admin != nil {
		_ = admin.Shutdown(sctx)
	}
	// Flush what OTLP has not sent yet, on a budget of its own: the drain
	// may have used all of its own.
	fctx, cancelFlush := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelFlush()
	_ = tel.Shutdown(fctx)
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

// readiness is /readyz: not ready while draining, or while upstream does
// not answer and there is no read cache to serve from; ready, with a note,
// when the cache stands in for upstream.
func readiness(srv frontend, draining *atomic.Bool, fallbackCache bool) telemetry.ReadyFunc {
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
