package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/keyfence/keyfence/proxy"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/telemetry"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "acl" {
		err := runACL(os.Args[2:], lookupEnv, os.Stdout, os.Stderr)
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "keyfence: "+err.Error())
			os.Exit(2)
		}
		return
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
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
	slog.SetDefault(log) // parts configured before run (the Sentinel resolver) log through it
	cfg.proxy.Logger = log
	for _, w := range cfg.warnings {
		log.Warn(w)
	}
	var srv *proxy.Server
	gauges := telemetry.Gauges{
		Sessions:    func() int64 { return int64(srv.Stats().Sessions) },
		PinnedConns: func() int64 { return int64(srv.Stats().PinnedConns) },
	}
	if cfg.proxy.Fallback != nil { // the breaker is on
		gauges.Breaker = func() int64 { return breakerLevel(srv.Stats().Breaker) }
		gauges.FallbackHits = func() int64 { return srv.Stats().FallbackHits }
		gauges.FallbackMisses = func() int64 { return srv.Stats().FallbackMisses }
	}
	metrics, err := telemetry.NewMetrics(cfg.proxy.Tenant, rewrite.CommandNames(), gauges)
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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var admin *telemetry.Admin
	if cfg.admin != "" {
		opts := cfg.adminOpts
		opts.Cmdline = append([]string{os.Args[0]}, redactArgs(os.Args[1:])...)
		admin, err = telemetry.NewAdmin(cfg.admin, srv.Ping, metrics.Handler(), log, opts)
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
	// Serve returns when ctx is cancelled by a signal; then drain.
	if err := srv.Serve(ctx); err != nil {
		return err
	}
	log.Info("draining", "timeout", cfg.shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if admin != nil {
		_ = admin.Shutdown(sctx)
	}
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	_ = metrics.Shutdown(sctx)
	log.Info("stopped")
	return nil
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
