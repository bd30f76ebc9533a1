package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/keyfence/keyfence/bench/internal/report"
	"github.com/keyfence/keyfence/bench/internal/resp"
	"github.com/keyfence/keyfence/bench/internal/stack"
)

// gatewayConnsResult is what -mode gateway-conns measured.
type gatewayConnsResult struct {
	Tenants int `json:"tenants"`
	Conns   int `json:"conns"`
	// RSS of keyfence: started with no tenant yet, after one connection of
	// every tenant (each tenant's Server starts at its first AUTH), with
	// half and with all of the connections open, and after the INCR rounds.
	// The connections are opened in two halves because the first ones
	// reuse heap the tenants' start left free (argon2id's 19 MiB per
	// verification, among others): the second half's growth is closer to
	// what one more connection costs.
	RSSIdle    int64 `json:"rss_idle_bytes"`
	RSSTenants int64 `json:"rss_tenants_bytes"`
	RSSHalf    int64 `json:"rss_half_bytes"`
	RSSConns   int64 `json:"rss_conns_bytes"`
	RSSActive  int64 `json:"rss_active_bytes"`
	Half       int   `json:"half"` // connections open at RSSHalf
	// Go's own count at the same points, just after a garbage collection
	// (which every step starts with): heap in use and goroutine stacks.
	// Unlike RSS it does not depend on what freed memory the step could
	// reuse, so it says what a tenant and a connection hold.
	Live [5]goMem `json:"live"` // idle, tenants, half, conns, active
	// How long the first connection of every tenant took to open, and the
	// two halves of the rest.
	TenantsTime time.Duration `json:"tenants_open_ns"`
	HalfTime    time.Duration `json:"half_open_ns"`
	ConnsTime   time.Duration `json:"conns_open_ns"` // both halves
	// One connection's dial + AUTH + PING, the first of each tenant's
	// apart (its AUTH verifies the password: argon2id).
	FirstConnectP50 time.Duration `json:"first_connect_p50_ns"`
	FirstConnectP99 time.Duration `json:"first_connect_p99_ns"`
	ConnectP50      time.Duration `json:"connect_p50_ns"` // both halves
	ConnectP99      time.Duration `json:"connect_p99_ns"`
	ConnectMax      time.Duration `json:"connect_max_ns"`
	// The INCR rounds.
	Rounds      int           `json:"rounds"`
	Rate        float64       `json:"rate"`
	ActiveTime  time.Duration `json:"active_ns"`
	IncrDone    int64         `json:"incr_done"`
	IncrErrors  int64         `json:"incr_errors"`
	FirstErr    string        `json:"first_error,omitempty"`
	IncrP50     time.Duration `json:"incr_p50_ns"`
	IncrP99     time.Duration `json:"incr_p99_ns"`
	IncrMax     time.Duration `json:"incr_max_ns"`
	MaxLag      time.Duration `json:"max_lag_ns"`
	TenantsSeen int           `json:"tenants_counted_exactly"`
}

// gatewayConns holds cfg.idleConns connections spread over cfg.tenants
// tenants of one gateway keyfence, every one authenticated as its tenant:
// it reports keyfence's memory per tenant and per connection and how long
// connecting took, then sends INCR on every connection, round after round,
// at a fixed total rate, and checks that each tenant's counter holds
// exactly its own connections' increments.
func gatewayConns(ctx context.Context, cfg config, stdout io.Writer, log *slog.Logger) error {
	width := len(strconv.Itoa(cfg.tenants - 1))
	list := make([]gatewayTenant, cfg.tenants)
	for i := range list {
		var err error
		if list[i], err = newGatewayTenant(fmt.Sprintf("t%0*d", width, i)); err != nil {
			return err
		}
	}
	// keyfence's --max-clients (10,000 by default) counts every client
	// connection of the gateway.
	// --admin-pprof: Go's memory figures (readGoMem).
	extra := []string{"--max-clients", strconv.Itoa(cfg.idleConns + 100), "--admin-pprof"}
	var res gatewayConnsResult
	err := withGateway(ctx, cfg, list, extra, log, func(_ *stack.Stack, gw *stack.Proc) error {
		var err error
		res, err = measureGatewayConns(ctx, cfg, list, gw, log)
		return err
	})
	if err != nil {
		return err
	}
	out := output{
		When:    time.Now(),
		Title:   fmt.Sprintf("loadgen gateway-conns: %s connections over %d tenants of one gateway keyfence", report.FormatOps(float64(res.Conns)), res.Tenants),
		Gateway: res,
		Header: []string{"step", "connections", "took", "p50 ms", "p99 ms", "max ms",
			"RSS MiB", "Go live MiB", "Go live added MiB", "Go live KiB per"},
	}
	perKiB := func(d int64, n int) string { return fmt.Sprintf("%.1f", float64(d)/1024/float64(max(n, 1))) }
	first, second := res.Half-res.Tenants, res.Conns-res.Half
	live := func(i int) int64 { return res.Live[i].total() }
	// mem is the memory cells of a step: RSS, and Go's live count in all,
	// added since step from, and per unit.
	mem := func(rss int64, i, from, n int, unit string) []string {
		return []string{mib(rss), mib(live(i)), mib(live(i) - live(from)), perKiB(live(i)-live(from), n) + unit}
	}
	out.Rows = [][]string{
		append([]string{"gateway started, no tenant yet", "0", "-", "-", "-", "-"},
			mib(res.RSSIdle), mib(live(0)), "-", "-"),
		append([]string{"first connection of each tenant (dial, AUTH: argon2id, tenant starts, PING)", strconv.Itoa(res.Tenants),
			res.TenantsTime.Round(time.Millisecond).String(), ms(res.FirstConnectP50), ms(res.FirstConnectP99), "-"},
			mem(res.RSSTenants, 1, 0, res.Tenants, " /tenant")...),
		append([]string{fmt.Sprintf("%d more connections (dial, AUTH, PING)", first), strconv.Itoa(res.Half),
			res.HalfTime.Round(time.Millisecond).String(), "", "", ""},
			mem(res.RSSHalf, 2, 1, first, " /conn")...),
		append([]string{fmt.Sprintf("%d more connections (dial, AUTH, PING)", second), strconv.Itoa(res.Conns),
			(res.ConnsTime - res.HalfTime).Round(time.Millisecond).String(), "", "", ""},
			mem(res.RSSConns, 3, 2, second, " /conn")...),
		append([]string{fmt.Sprintf("all %d connections after the tenants' first", first+second), strconv.Itoa(res.Conns),
			res.ConnsTime.Round(time.Millisecond).String(), ms(res.ConnectP50), ms(res.ConnectP99), ms(res.ConnectMax)},
			mem(res.RSSConns, 3, 1, first+second, " /conn")...),
		append([]string{fmt.Sprintf("%d rounds of INCR on every connection at %s/s", res.Rounds, report.FormatOps(res.Rate)), strconv.Itoa(res.Conns),
			res.ActiveTime.Round(time.Millisecond).String(), ms(res.IncrP50), ms(res.IncrP99), ms(res.IncrMax)},
			mib(res.RSSActive), mib(live(4)), mib(live(4)-live(3)), "-"),
	}
	lc := res.Live[3]
	lt := res.Live[1]
	out.Notes = append(out.Notes,
		fmt.Sprintf("Go live memory per connection, all %d after the tenants' first: heap %s KiB, goroutine stacks %s KiB",
			first+second, perKiB(lc.HeapInuse-lt.HeapInuse, first+second), perKiB(lc.StackInuse-lt.StackInuse, first+second)),
		fmt.Sprintf("Go live memory per tenant: heap %s KiB, goroutine stacks %s KiB",
			perKiB(lt.HeapInuse-res.Live[0].HeapInuse, res.Tenants), perKiB(lt.StackInuse-res.Live[0].StackInuse, res.Tenants)))
	out.Settings = []string{
		fmt.Sprintf("one redis-server and one keyfence gateway (`--tenants-file`, %d tenants with argon2id password hashes, `--max-clients %d`); tenant of connection j: j mod %d",
			res.Tenants, cfg.idleConns+100, res.Tenants),
		fmt.Sprintf("every connection: dial, AUTH <tenant> <password>, PING; %d at a time; latency per connection from dial to PONG", cfg.dialers),
		fmt.Sprintf("keyfence: %s; after each step loadgen has it collect garbage and reads Go's HeapInuse + StackInuse (Go live; /debug/pprof/heap?debug=1&gc=1, `--admin-pprof`), then %s later its VmRSS (RSS); KiB per tenant or per connection = Go live added / count", cfg.keyfence, cfg.settle),
		"RSS is what the machine gives keyfence, but its growth is no per-connection figure: it holds memory Go freed and kept (each argon2id verification takes 19 MiB), which later steps reuse, and the runtime returns some of it after a collection",
		fmt.Sprintf("INCR rounds: request i (connection i mod %d) due at start + i/rate, latency from its due time (no coordinated omission), %d senders",
			res.Conns, cfg.dialers),
		fmt.Sprintf("check: each tenant's counter (GET through its own connection) equals its connections × rounds: %d of %d tenants exact; INCR errors: %d",
			res.TenantsSeen, res.Tenants, res.IncrErrors),
	}
	out.Notes = append(out.Notes, fmt.Sprintf("INCR rounds: the largest delay between a request's due time and its send was %s ms; "+
		"when it is close to the max latency, the load generator itself was late (the machine was busy) and the tail is that delay", ms(res.MaxLag)))
	if res.FirstErr != "" {
		out.Notes = append(out.Notes, "first INCR error: "+res.FirstErr)
	}
	if res.TenantsSeen != res.Tenants || res.IncrErrors > 0 {
		if perr := printAndWrite(stdout, cfg.out, "gateway-conns", out); perr != nil {
			return perr
		}
		return fmt.Errorf("gateway-conns: %d of %d tenants counted exactly, %d INCR errors", res.TenantsSeen, res.Tenants, res.IncrErrors)
	}
	return printAndWrite(stdout, cfg.out, "gateway-conns", out)
}

func measureGatewayConns(ctx context.Context, cfg config, list []gatewayTenant, gw *stack.Proc, log *slog.Logger) (gatewayConnsResult, error) {
	res := gatewayConnsResult{Tenants: len(list), Conns: cfg.idleConns, Rounds: cfg.rounds, Rate: cfg.activeRate}
	pid := gw.Pid()
	step := 0
	// rss reads Go's memory (forcing a collection), waits for keyfence to
	// settle, and reads its RSS.
	rss := func(into *int64) error {
		m, err := readGoMem(ctx, gw.Admin)
		if err != nil {
			return err
		}
		res.Live[step] = m
		step++
		if err := sleep(ctx, cfg.settle); err != nil {
			return err
		}
		*into, err = stack.RSS(pid)
		return err
	}
	if err := rss(&res.RSSIdle); err != nil {
		return res, err
	}
	// Connections live until the end; this context only bounds opening.
	connCtx, cancelConns := context.WithCancel(ctx)
	defer cancelConns()
	conns := make([]*resp.Conn, cfg.idleConns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	eps := make([]endpoint, len(list))
	for i, t := range list {
		eps[i] = t.endpoint(gw.Addr, pid)
	}

	// First every tenant's first connection, then the rest.
	first, took, err := openConns(connCtx, conns, 0, len(list), eps, cfg.dialers)
	if err != nil {
		return res, err
	}
	res.TenantsTime = took
	res.FirstConnectP50, res.FirstConnectP99 = us(first.ValueAtQuantile(50)), us(first.ValueAtQuantile(99))
	log.Info("first connection of every tenant open", "tenants", len(list), "took", took.Round(time.Millisecond))
	if err := rss(&res.RSSTenants); err != nil {
		return res, err
	}
	res.Half = len(list) + (len(conns)-len(list))/2
	rest, took, err := openConns(connCtx, conns, len(list), res.Half, eps, cfg.dialers)
	if err != nil {
		return res, err
	}
	res.HalfTime = took
	log.Info("half of the connections open", "conns", res.Half, "took", took.Round(time.Millisecond))
	if err := rss(&res.RSSHalf); err != nil {
		return res, err
	}
	second, took, err := openConns(connCtx, conns, res.Half, len(conns), eps, cfg.dialers)
	if err != nil {
		return res, err
	}
	res.ConnsTime = res.HalfTime + took
	rest.Merge(second)
	res.ConnectP50, res.ConnectP99, res.ConnectMax = us(rest.ValueAtQuantile(50)), us(rest.ValueAtQuantile(99)), us(rest.Max())
	log.Info("all connections open", "conns", len(conns), "took", res.ConnsTime.Round(time.Millisecond))
	if err := rss(&res.RSSConns); err != nil {
		return res, err
	}

	act, err := incrRounds(ctx, conns, cfg.rounds, cfg.activeRate, cfg.dialers)
	if err != nil {
		return res, err
	}
	res.ActiveTime, res.IncrDone, res.IncrErrors, res.FirstErr, res.MaxLag = act.took, act.done, act.errs, act.firstErr, act.maxLag
	res.IncrP50, res.IncrP99, res.IncrMax = us(act.hist.ValueAtQuantile(50)), us(act.hist.ValueAtQuantile(99)), us(act.hist.Max())
	log.Info("INCR rounds done", "rounds", cfg.rounds, "requests", act.done, "errors", act.errs, "took", act.took.Round(time.Millisecond))
	if err := rss(&res.RSSActive); err != nil {
		return res, err
	}

	// Every tenant's counter holds its own connections' increments only.
	for i, t := range list {
		want := (len(conns) - i + len(list) - 1) / len(list) * cfg.rounds
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		got, err := conns[i].Do(gctx, "GET", keyPrefix+"conns")
		cancel()
		if err != nil {
			return res, fmt.Errorf("tenant %s: GET: %w", t.ID, err)
		}
		if got == strconv.Itoa(want) {
			res.TenantsSeen++
		} else {
			log.Error("a tenant's counter is off", "tenant", t.ID, "got", got, "want", want)
		}
	}
	return res, nil
}

func us(v int64) time.Duration { return time.Duration(v) * time.Microsecond }

// goMem is what Go's runtime counts of a process's memory.
type goMem struct {
	HeapInuse  int64 `json:"heap_inuse_bytes"`
	StackInuse int64 `json:"stack_inuse_bytes"`
}

func (m goMem) total() int64 { return m.HeapInuse + m.StackInuse }

// readGoMem reads keyfence's runtime.MemStats from its admin endpoint
// (/debug/pprof/heap?debug=1 ends with them; keyfence runs with
// --admin-pprof), asking for a garbage collection first (gc=1) so that the
// heap in use is what is live.
func readGoMem(ctx context.Context, admin string) (goMem, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	url := "http://" + admin + "/debug/pprof/heap?debug=1&gc=1"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return goMem{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return goMem{}, fmt.Errorf("keyfence's memory stats: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return goMem{}, fmt.Errorf("keyfence's memory stats: GET %s: %s", url, resp.Status)
	}
	var m goMem
	found := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "# "), " = ")
		if !ok {
			continue
		}
		var into *int64
		switch name {
		case "HeapInuse":
			into = &m.HeapInuse
		case "Stack": // "# Stack = <StackInuse> / <StackSys>"
			into = &m.StackInuse
			val, _, _ = strings.Cut(val, " ")
		default:
			continue
		}
		if *into, err = strconv.ParseInt(val, 10, 64); err != nil {
			return goMem{}, fmt.Errorf("keyfence's memory stats: %s = %q: %w", name, val, err)
		}
		found++
	}
	if err := sc.Err(); err != nil {
		return goMem{}, fmt.Errorf("keyfence's memory stats: %w", err)
	}
	if found != 2 {
		return goMem{}, fmt.Errorf("keyfence's memory stats: no HeapInuse and StackInuse in %s", url)
	}
	return m, nil
}

// openConns opens conns[from:to], connection j as the tenant of eps[j %
// len(eps)], dialers at a time: dial, AUTH, PING. It returns the latency
// of each (dial to PONG) and how long all took; the first failure ends it.
func openConns(ctx context.Context, conns []*resp.Conn, from, to int, eps []endpoint, dialers int) (*hdrhistogram.Histogram, time.Duration, error) {
	openCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var next atomic.Int64
	next.Store(int64(from))
	hists := make([]*hdrhistogram.Histogram, dialers)
	var errOnce sync.Once
	var firstErr error
	start := time.Now()
	var wg sync.WaitGroup
	for d := range dialers {
		hists[d] = newHist()
		wg.Go(func() {
			for openCtx.Err() == nil {
				j := int(next.Add(1) - 1)
				if j >= to {
					return
				}
				t0 := time.Now()
				c, err := eps[j%len(eps)].dial(ctx, true)
				if err == nil {
					pctx, pcancel := context.WithTimeout(openCtx, 10*time.Second)
					_, err = c.Do(pctx, "PING")
					pcancel()
					if err != nil {
						c.Close()
					}
				}
				if err != nil {
					errOnce.Do(func() {
						firstErr = fmt.Errorf("connection %d (tenant %s): %w", j, eps[j%len(eps)].User, err)
						cancel()
					})
					return
				}
				record(hists[d], time.Since(t0))
				conns[j] = c
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	all := newHist()
	for _, h := range hists {
		all.Merge(h)
	}
	if firstErr != nil {
		return all, took, firstErr
	}
	if err := ctx.Err(); err != nil {
		return all, took, err
	}
	if err := openCtx.Err(); err != nil {
		return all, took, fmt.Errorf("opening connections %d..%d: %w", from, to, err)
	}
	return all, took, nil
}

type incrResult struct {
	hist     *hdrhistogram.Histogram
	took     time.Duration
	done     int64
	errs     int64
	firstErr string
	maxLag   time.Duration
}

// incrRounds sends INCR lg:conns on every connection, rounds times, at
// rate requests per second in all: request i goes to connection i mod
// len(conns) and is due at start + i/rate. Sender s owns the connections j
// with j mod senders = s, so no connection is used by two at once, and
// takes its requests in due order; latency is measured from the due time.
func incrRounds(ctx context.Context, conns []*resp.Conn, rounds int, rate float64, senders int) (incrResult, error) {
	n := len(conns)
	total := time.Duration(float64(rounds*n) / rate * float64(time.Second))
	ctx, cancel := context.WithTimeout(ctx, total+time.Minute)
	defer cancel()
	type part struct {
		hist     *hdrhistogram.Histogram
		done     int64
		errs     int64
		firstErr string
		maxLag   time.Duration
		broken   error
	}
	parts := make([]*part, senders)
	start := time.Now().Add(50 * time.Millisecond)
	var wg sync.WaitGroup
	for s := range senders {
		p := &part{hist: newHist()}
		parts[s] = p
		wg.Go(func() {
			sl, err := newSleeper(ctx)
			if err != nil {
				p.broken = err
				return
			}
			defer sl.Close()
			for r := range rounds {
				for j := s; j < n; j += senders {
					i := r*n + j
					due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
					if err := sl.until(due); err != nil {
						p.broken = err
						return
					}
					p.maxLag = max(p.maxLag, time.Since(due))
					dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
					_, err := conns[j].Do(dctx, "INCR", keyPrefix+"conns")
					dcancel()
					switch {
					case err == nil:
						p.done++
						record(p.hist, time.Since(due))
					case resp.IsServerError(err):
						p.errs++
						if p.firstErr == "" {
							p.firstErr = err.Error()
						}
					default:
						p.broken = fmt.Errorf("connection %d: %w", j, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	res := incrResult{hist: newHist(), took: time.Since(start)}
	var broken []error
	for _, p := range parts {
		res.hist.Merge(p.hist)
		res.done += p.done
		res.errs += p.errs
		res.maxLag = max(res.maxLag, p.maxLag)
		if res.firstErr == "" {
			res.firstErr = p.firstErr
		}
		if p.broken != nil {
			broken = append(broken, p.broken)
		}
	}
	if len(broken) > 0 {
		return res, fmt.Errorf("INCR rounds: %w", errors.Join(broken...))
	}
	return res, nil
}
