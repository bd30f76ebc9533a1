package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/keyfence/keyfence/bench/internal/report"
	"github.com/keyfence/keyfence/bench/internal/stack"
)

// The tenants of -mode gateway-quota: B runs at a fixed rate while A
// floods, as a tenant with a quota or as one without.
const (
	tenantSteady    = "steady"
	tenantFlood     = "flood"
	tenantFloodFree = "flood-noquota"
)

// quotaPhase is one of the three things measured each round.
type quotaPhase struct {
	Name  string `json:"name"`
	Flood string `json:"flood,omitempty"` // the flooding tenant; "": none
}

// quotaRun is one phase of one round.
type quotaRun struct {
	Round int    `json:"round"`
	Phase string `json:"phase"`
	// B, the steady tenant, at its fixed rate.
	BRequests  int64 `json:"b_requests"`
	BScheduled int64 `json:"b_scheduled"`
	BErrors    int64 `json:"b_errors"`
	BP50us     int64 `json:"b_p50_us"`
	BP99us     int64 `json:"b_p99_us"`
	BP999us    int64 `json:"b_p999_us"`
	BMaxus     int64 `json:"b_max_us"`
	BMaxLagus  int64 `json:"b_max_lag_us"`
	// A, the flooding tenant, while B was measured.
	AOpsPerSec float64 `json:"a_ops_per_sec,omitempty"`
	AErrors    int64   `json:"a_errors,omitempty"`
	AP50us     int64   `json:"a_p50_us,omitempty"`
	AFirstErr  string  `json:"a_first_error,omitempty"`
}

type quotaResult struct {
	Phases []quotaPhase `json:"phases"`
	Runs   []quotaRun   `json:"runs"`
}

// gatewayQuota measures what a flooding tenant does to a steady one
// through one gateway keyfence: B (tenant "steady") sends its mixed
// workload at a fixed rate, latency from each request's due time, alone;
// then while A floods (closed loop, many connections, pipelined) as tenant
// "flood", whose max_ops_per_second is -quota; then while A floods as
// tenant "flood-noquota", which has none. Every round runs the three
// phases in that order; the report gives medians over rounds.
func gatewayQuota(ctx context.Context, cfg config, stdout io.Writer, log *slog.Logger) error {
	var list []gatewayTenant
	for _, id := range []string{tenantSteady, tenantFlood, tenantFloodFree} {
		t, err := newGatewayTenant(id)
		if err != nil {
			return err
		}
		if id == tenantFlood {
			t.MaxOps = cfg.quota
		}
		list = append(list, t)
	}
	wl, err := newWorkload(cfg.readRatio, uint64(cfg.keys), cfg.zipfS, cfg.valueMin, cfg.valueMax, cfg.seed)
	if err != nil {
		return err
	}
	phases := []quotaPhase{
		{Name: "B alone"},
		{Name: fmt.Sprintf("B, A flooding with max_ops_per_second %s", report.FormatOps(cfg.quota)), Flood: tenantFlood},
		{Name: "B, A flooding without a quota", Flood: tenantFloodFree},
	}
	res := quotaResult{Phases: phases}
	err = withGateway(ctx, cfg, list, nil, log, func(st *stack.Stack, gw *stack.Proc) error {
		eps := map[string]endpoint{}
		for _, t := range list {
			eps[t.ID] = t.endpoint(gw.Addr, gw.Pid())
		}
		if err := preload(ctx, wl, eps[tenantSteady]); err != nil {
			return err
		}
		b := group{Name: tenantSteady, Endpoints: []endpoint{eps[tenantSteady]}}
		spec := loadSpec{conns: cfg.steadyConns, maxOps: cfg.maxOps, duration: cfg.duration, rate: cfg.steadyRate}
		for round := 1; round <= cfg.rounds; round++ {
			for _, ph := range phases {
				run, err := quotaRound(ctx, cfg, wl, b, spec, ph, eps, log)
				if err != nil {
					return fmt.Errorf("round %d, %s: %w", round, ph.Name, err)
				}
				run.Round = round
				res.Runs = append(res.Runs, run)
				log.Info("measured", "round", round, "phase", ph.Name, "b_p50_ms", msOf(run.BP50us), "b_p99_ms", msOf(run.BP99us),
					"a_ops_per_sec", int64(run.AOpsPerSec), "a_errors", run.AErrors)
				// Let A's last replies and closed sockets go before the next phase.
				if err := sleep(ctx, time.Second); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return printAndWrite(stdout, cfg.out, "gateway-quota", quotaOutput(cfg, res))
}

// quotaRound measures one phase: A's flood (if any) runs from a second
// before B's measurement to its end.
func quotaRound(ctx context.Context, cfg config, wl *workload, b group, spec loadSpec, ph quotaPhase, eps map[string]endpoint, log *slog.Logger) (quotaRun, error) {
	run := quotaRun{Phase: ph.Name}
	var fl *flood
	if ph.Flood != "" {
		var err error
		if fl, err = startFlood(ctx, wl, eps[ph.Flood], cfg.floodConns, cfg.pipeline); err != nil {
			return run, err
		}
		defer fl.stop()
		if err := sleep(ctx, time.Second); err != nil {
			return run, err
		}
	}
	var a0 int64
	t0 := time.Now()
	if fl != nil {
		a0 = fl.completed.Load()
	}
	lr, err := runLoad(ctx, wl, b, spec)
	if err != nil {
		return run, err
	}
	if berr := lr.brokenErr(); berr != nil {
		return run, fmt.Errorf("steady tenant: connection failed: %w", berr)
	}
	if fl != nil {
		run.AOpsPerSec = float64(fl.completed.Load()-a0) / time.Since(t0).Seconds()
		ar, err := fl.stop()
		if err != nil {
			return run, fmt.Errorf("flooding tenant: %w", err)
		}
		run.AErrors, run.AP50us, run.AFirstErr = ar.errs, ar.hist.ValueAtQuantile(50), ar.firstErr
	}
	h := newHist()
	for _, w := range lr.workers {
		h.Merge(w.read)
		h.Merge(w.write)
		run.BErrors += w.serverErrs
		run.BMaxLagus = max(run.BMaxLagus, w.maxLag.Microseconds())
	}
	run.BRequests, run.BScheduled = h.TotalCount(), lr.scheduled
	run.BP50us, run.BP99us, run.BP999us, run.BMaxus = h.ValueAtQuantile(50), h.ValueAtQuantile(99), h.ValueAtQuantile(99.9), h.Max()
	return run, nil
}

// flood is tenant A at full speed: conns connections, each sending depth
// requests at a time and the next batch as soon as the last reply came.
type flood struct {
	workers   []*worker
	completed atomic.Int64
	halt      atomic.Bool
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	once      sync.Once
	res       floodResult
	err       error
}

type floodResult struct {
	hist     *hdrhistogram.Histogram
	errs     int64
	firstErr string
}

func startFlood(ctx context.Context, wl *workload, ep endpoint, conns, depth int) (*flood, error) {
	fctx, cancel := context.WithCancel(ctx)
	f := &flood{cancel: cancel}
	for i := range conns {
		c, err := ep.dial(fctx, false)
		if err != nil {
			for _, w := range f.workers {
				w.conn.Close()
			}
			cancel()
			return nil, err
		}
		// Seeds apart from B's workers, whose ids start at 0.
		f.workers = append(f.workers, wl.newWorker(1_000_000+i, 0, c))
	}
	for _, w := range f.workers {
		f.wg.Go(func() { f.loop(w, depth) })
	}
	return f, nil
}

func (f *flood) loop(w *worker, depth int) {
	isRead := make([]bool, depth)
	for !f.halt.Load() {
		for k := range depth {
			isRead[k] = w.queue()
		}
		t0 := time.Now()
		if err := w.conn.Flush(); err != nil {
			w.broken = err
			return
		}
		for k := range depth {
			err := w.conn.Skip()
			if !w.account(isRead[k], time.Since(t0), err) {
				return
			}
			f.completed.Add(1)
		}
	}
}

// stop ends the flood once every connection has its last batch's replies
// (under a quota they may wait for it, up to the gateway's quota wait), or
// after 30 s, cutting the connections.
func (f *flood) stop() (floodResult, error) {
	f.once.Do(func() {
		f.halt.Store(true)
		done := make(chan struct{})
		go func() { f.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			f.cancel()
			<-done
			f.err = errors.New("its connections did not finish their last batch within 30 s")
		}
		f.cancel()
		f.res.hist = newHist()
		for _, w := range f.workers {
			f.res.hist.Merge(w.read)
			f.res.hist.Merge(w.write)
			f.res.errs += w.serverErrs
			if f.res.firstErr == "" {
				f.res.firstErr = w.firstErr
			}
			if w.broken != nil && f.err == nil && !errors.Is(w.broken, context.Canceled) {
				f.err = w.broken
			}
			w.conn.Close()
		}
	})
	return f.res, f.err
}

func quotaOutput(cfg config, res quotaResult) output {
	out := output{
		When:    time.Now(),
		Title:   fmt.Sprintf("loadgen gateway-quota: tenant B at %s req/s next to tenant A flooding, one gateway keyfence", report.FormatOps(cfg.steadyRate)),
		Gateway: res,
		Header: []string{"phase", "B p50 ms", "B p99 ms", "B p99.9 ms", "B max ms", "B p99 by round ms", "B p99 / alone",
			"B errors", "A req/s", "A p50 ms", "A errors"},
	}
	var aloneP99 float64
	for i, ph := range res.Phases {
		var p50, p99, p999, mx, aOps, aP50 []float64
		var byRound []string
		var bErrs, aErrs int64
		var firstErr string
		for _, r := range res.Runs {
			if r.Phase != ph.Name {
				continue
			}
			p50 = append(p50, float64(r.BP50us))
			p99 = append(p99, float64(r.BP99us))
			p999 = append(p999, float64(r.BP999us))
			mx = append(mx, float64(r.BMaxus))
			byRound = append(byRound, msOf(r.BP99us))
			bErrs += r.BErrors
			aOps = append(aOps, r.AOpsPerSec)
			aP50 = append(aP50, float64(r.AP50us))
			aErrs += r.AErrors
			if firstErr == "" {
				firstErr = r.AFirstErr
			}
			if r.BRequests+r.BErrors < r.BScheduled {
				out.Notes = append(out.Notes, fmt.Sprintf("round %d, %s: only %d of %d of B's scheduled requests completed",
					r.Round, ph.Name, r.BRequests+r.BErrors, r.BScheduled))
			}
		}
		m99 := median(p99)
		if i == 0 {
			aloneP99 = m99
		}
		ratio := "1.00x"
		if i > 0 && aloneP99 > 0 {
			ratio = fmt.Sprintf("%.2fx", m99/aloneP99)
		}
		aCells := []string{"-", "-", "-"}
		if ph.Flood != "" {
			aCells = []string{report.FormatOps(median(aOps)), msOf(int64(median(aP50))), fmt.Sprint(aErrs)}
			if firstErr != "" {
				out.Notes = append(out.Notes, fmt.Sprintf("%s: A's errors, e.g. %q", ph.Name, firstErr))
			}
		}
		out.Rows = append(out.Rows, append([]string{ph.Name,
			msOf(int64(median(p50))), msOf(int64(m99)), msOf(int64(median(p999))), msOf(int64(median(mx))),
			strings.Join(byRound, " / "), ratio, fmt.Sprint(bErrs)}, aCells...))
	}
	out.Settings = []string{
		fmt.Sprintf("one redis-server and one keyfence gateway (%s `--tenants-file`, argon2id password hashes, quota wait: keyfence's default); every connection AUTHs as its tenant", cfg.keyfence),
		fmt.Sprintf("B (tenant %q): %d connections, open loop at %s req/s, latency from each request's due time (no coordinated omission), %s per phase",
			tenantSteady, cfg.steadyConns, report.FormatOps(cfg.steadyRate), cfg.duration),
		fmt.Sprintf("A: %d connections, closed loop, %d requests pipelined per connection, from 1 s before B's measurement to its end; as tenant %q (max_ops_per_second %s, burst: keyfence's default, a tenth of it) or %q (no quota)",
			cfg.floodConns, cfg.pipeline, tenantFlood, report.FormatOps(cfg.quota), tenantFloodFree),
		fmt.Sprintf("both: %.0f%% GET / %.0f%% SET on %d keys (Zipf s=%g), values %d B – %d B (log-uniform); B's keys preloaded",
			cfg.readRatio*100, (1-cfg.readRatio)*100, cfg.keys, cfg.zipfS, cfg.valueMin, cfg.valueMax),
		fmt.Sprintf("%d rounds, each: B alone, B with A under its quota, B with A without one; latencies and A req/s are medians over rounds, errors are sums; A p50 is per batch, from its send to each reply", cfg.rounds),
		"B p99 / alone: the median p99 of the phase divided by that of B alone; the p99 by round shows the spread a ratio has to be read against",
	}
	return out
}
