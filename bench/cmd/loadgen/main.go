package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/keyfence/keyfence/bench/internal/envflag"
	"github.com/keyfence/keyfence/bench/internal/report"
	"github.com/keyfence/keyfence/bench/internal/resp"
	"github.com/keyfence/keyfence/bench/internal/stack"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

type config struct {
	mode         string
	groups       groupsFlag
	stackTargets []string
	tenants      int
	keyfence     string
	keyfenceArgs string
	conns        int
	maxOps       int64
	duration     time.Duration
	rate         float64
	readRatio    float64
	keys         int
	zipfS        float64
	valueMin     int
	valueMax     int
	preload      bool
	seed         uint64
	idleConns    int
	dialers      int
	settle       time.Duration
	// The gateway modes' (gateway*.go).
	rounds      int
	activeRate  float64
	quota       float64
	steadyRate  float64
	steadyConns int
	floodConns  int
	pipeline    int

	out     string
	timeout time.Duration
	verbose bool
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	root := envflag.RepoRoot()
	var c config
	var env envflag.Defaults
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.mode, "mode", envflag.String("LOADGEN_MODE", "mixed"), "mixed (closed loop), rate (fixed rate, open loop), conns (idle connections and RSS), gateway-conns (connections over many tenants of one gateway keyfence) or gateway-quota (a steady tenant next to a flooding one); env LOADGEN_MODE")
	fs.Var(&c.groups, "targets", "`[name=]addr[@pid][,addr[@pid]...]` to measure instead of starting servers; the addresses of one flag are loaded together (tenants), repeated flags one after another; @pid enables RSS readings")
	stackTargets := fs.String("stack-targets", envflag.String("LOADGEN_STACK_TARGETS", "direct,twemproxy,keyfence"), "without -targets: which of the started servers to measure; env LOADGEN_STACK_TARGETS")
	fs.IntVar(&c.tenants, "tenants", env.Int("LOADGEN_TENANTS", 0), "without -targets: keyfence listeners (one tenant each) to load at once; gateway-conns: tenants of the gateway; 0 = 4 for mixed/rate, 1 for conns, 100 for gateway-conns; env LOADGEN_TENANTS")
	fs.StringVar(&c.keyfence, "keyfence", envflag.String("KEYFENCE_BIN", filepath.Join(root, "bin", "keyfence")), "keyfence binary; env KEYFENCE_BIN")
	fs.StringVar(&c.keyfenceArgs, "keyfence-args", envflag.String("KEYFENCE_ARGS", ""), "extra keyfence arguments, space-separated; env KEYFENCE_ARGS")
	fs.IntVar(&c.conns, "c", env.Int("LOADGEN_CLIENTS", 50), "mixed/rate: connections per target, spread over its addresses; env LOADGEN_CLIENTS")
	maxOps := fs.Int("n", env.Int("LOADGEN_REQUESTS", 5_000_000), "mixed/rate: at most this many requests per target; env LOADGEN_REQUESTS")
	fs.DurationVar(&c.duration, "duration", env.Duration("LOADGEN_DURATION", 10*time.Second), "mixed/rate: at most this long per target; env LOADGEN_DURATION")
	fs.Float64Var(&c.rate, "rate", env.Float("LOADGEN_RATE", 10000), "rate: requests per second per target; env LOADGEN_RATE")
	fs.Float64Var(&c.readRatio, "read-ratio", env.Float("LOADGEN_READ_RATIO", 0.8), "share of GETs; the rest are SETs; env LOADGEN_READ_RATIO")
	fs.IntVar(&c.keys, "keys", env.Int("LOADGEN_KEYS", 10000), "distinct keys; env LOADGEN_KEYS")
	fs.Float64Var(&c.zipfS, "zipf", env.Float("LOADGEN_ZIPF", 1.1), "Zipf exponent of key popularity, > 1; env LOADGEN_ZIPF")
	fs.IntVar(&c.valueMin, "value-min", env.Int("LOADGEN_VALUE_MIN", 32), "smallest value, bytes; env LOADGEN_VALUE_MIN")
	fs.IntVar(&c.valueMax, "value-max", env.Int("LOADGEN_VALUE_MAX", 4096), "largest value, bytes; env LOADGEN_VALUE_MAX")
	fs.BoolVar(&c.preload, "preload", true, "write every key once before measuring, so GETs hit")
	seed := fs.Uint64("seed", 1, "random seed; the same seed gives the same request sequence per connection")
	fs.IntVar(&c.idleConns, "conns", env.Int("LOADGEN_CONNS", 10000), "conns, gateway-conns: connections per target; env LOADGEN_CONNS")
	fs.IntVar(&c.dialers, "dialers", 64, "conns, gateway-conns: connections opened (and driven) in parallel")
	fs.DurationVar(&c.settle, "settle", env.Duration("LOADGEN_SETTLE", 2*time.Second), "conns, gateway-conns: wait after opening before reading RSS; env LOADGEN_SETTLE")
	fs.IntVar(&c.rounds, "rounds", env.Int("LOADGEN_ROUNDS", 3), "gateway-conns: INCR rounds over every connection; gateway-quota: measurement rounds (medians are reported); env LOADGEN_ROUNDS")
	fs.Float64Var(&c.activeRate, "active-rate", env.Float("LOADGEN_ACTIVE_RATE", 2000), "gateway-conns: INCRs per second over all connections during the rounds; env LOADGEN_ACTIVE_RATE")
	fs.Float64Var(&c.quota, "quota", env.Float("LOADGEN_QUOTA", 2000), "gateway-quota: the flooding tenant's max_ops_per_second; env LOADGEN_QUOTA")
	fs.Float64Var(&c.steadyRate, "steady-rate", env.Float("LOADGEN_STEADY_RATE", 500), "gateway-quota: the steady tenant's fixed rate, requests per second; env LOADGEN_STEADY_RATE")
	fs.IntVar(&c.steadyConns, "steady-conns", env.Int("LOADGEN_STEADY_CONNS", 4), "gateway-quota: the steady tenant's connections; env LOADGEN_STEADY_CONNS")
	fs.IntVar(&c.floodConns, "flood-conns", env.Int("LOADGEN_FLOOD_CONNS", 50), "gateway-quota: the flooding tenant's connections; env LOADGEN_FLOOD_CONNS")
	fs.IntVar(&c.pipeline, "pipeline", env.Int("LOADGEN_PIPELINE", 16), "gateway-quota: requests the flooding tenant pipelines on each connection; env LOADGEN_PIPELINE")
	fs.StringVar(&c.out, "out", envflag.String("BENCH_OUT", filepath.Join(root, "bench", "results")), "directory for loadgen-<mode>.{md,json} (gateway modes: <mode>.{md,json}); env BENCH_OUT")
	fs.DurationVar(&c.timeout, "timeout", env.Duration("LOADGEN_TIMEOUT", 30*time.Minute), "limit for the whole run; env LOADGEN_TIMEOUT")
	fs.BoolVar(&c.verbose, "v", false, "debug logging")
	if err := env.Err(); err != nil {
		return c, err
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.maxOps, c.seed = int64(*maxOps), *seed
	c.stackTargets = envflag.List(strings.ToLower(*stackTargets))
	if c.tenants == 0 {
		switch c.mode {
		case "conns":
			c.tenants = 1
		case "gateway-conns":
			c.tenants = 100
		default:
			c.tenants = 4
		}
	}
	gateway := strings.HasPrefix(c.mode, "gateway-")
	switch {
	case !slices.Contains([]string{"mixed", "rate", "conns", "gateway-conns", "gateway-quota"}, c.mode):
		return c, fmt.Errorf("-mode %q: want mixed, rate, conns, gateway-conns or gateway-quota", c.mode)
	case gateway && len(c.groups) > 0:
		return c, fmt.Errorf("-mode %s starts its own Redis and gateway keyfence (it writes the tenants file): -targets does not apply", c.mode)
	case c.mode == "gateway-conns" && (c.idleConns < c.tenants || c.tenants > 10_000 || c.rounds < 1 || c.activeRate <= 0 || c.dialers < 1):
		return c, errors.New("gateway-conns: want -tenants 1..10000, -conns at least -tenants, positive -rounds, -active-rate and -dialers")
	case c.mode == "gateway-quota" && (c.rounds < 1 || c.quota <= 0 || c.steadyRate <= 0 || c.steadyConns < 1 || c.floodConns < 1 || c.pipeline < 1):
		return c, errors.New("gateway-quota: -rounds, -quota, -steady-rate, -steady-conns, -flood-conns and -pipeline must be positive")
	case c.conns < 1 || c.maxOps < 1 || c.duration <= 0 || c.tenants < 1:
		return c, errors.New("-c, -n, -duration and -tenants must be positive")
	case c.mode == "rate" && c.rate <= 0:
		return c, errors.New("-rate must be positive")
	case c.mode == "conns" && (c.idleConns < 1 || c.idleConns > 1_000_000):
		return c, errors.New("-conns must be between 1 and 1,000,000")
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return 2
	}
	level := slog.LevelInfo
	if cfg.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if err := loadgen(ctx, cfg, stdout, log); err != nil {
		if errors.Is(context.Cause(ctx), context.Canceled) {
			log.Warn("interrupted; every server started was stopped")
			return 130
		}
		log.Error("loadgen failed", "err", err)
		return 1
	}
	return 0
}

// output is what one run writes to results/.
type output struct {
	Title    string        `json:"title"`
	When     time.Time     `json:"when"`
	Settings []string      `json:"settings"`
	Header   []string      `json:"header"`
	Rows     [][]string    `json:"rows"`
	Conns    []connsResult `json:"conns,omitempty"`
	// Gateway is the gateway modes' measurement (gatewayConnsResult or
	// quotaResult).
	Gateway any      `json:"gateway,omitempty"`
	Notes   []string `json:"notes,omitempty"`
}

func loadgen(ctx context.Context, cfg config, stdout io.Writer, log *slog.Logger) (err error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()

	// Before any server starts, so that the servers inherit the limit: each
	// of them, like this process, holds one descriptor per connection plus
	// a few hundred of its own. Targets are measured one at a time.
	need := uint64(cfg.conns) + 1024
	switch cfg.mode {
	case "conns", "gateway-conns":
		need = uint64(cfg.idleConns) + 1024
	case "gateway-quota":
		need = uint64(cfg.floodConns+cfg.steadyConns) + 1024
	}
	if err := raiseNoFile(need, log); err != nil {
		return err
	}
	switch cfg.mode {
	case "gateway-conns":
		return gatewayConns(ctx, cfg, stdout, log)
	case "gateway-quota":
		return gatewayQuota(ctx, cfg, stdout, log)
	}

	groups := cfg.groups
	var notes []string
	var redisAddr string
	if len(groups) == 0 {
		st, dir, skipped, err := startStack(ctx, cfg, log)
		if err != nil {
			return err
		}
		defer func() {
			if serr := st.Stop(); serr != nil {
				err = errors.Join(err, serr)
			}
			if err != nil {
				log.Info("server logs kept", "dir", dir)
				return
			}
			os.RemoveAll(dir)
		}()
		redisAddr = st.Redis.Addr
		notes = append(notes, skipped...)
		for _, name := range cfg.stackTargets {
			g := group{Name: name}
			switch name {
			case "direct":
				g.Endpoints = []endpoint{{Addr: st.Redis.Addr, Pid: st.Redis.Pid(), Label: "redis"}}
			case "twemproxy":
				g.Endpoints = []endpoint{{Addr: st.Twemproxy.Addr, Pid: st.Twemproxy.Pid(), Label: "twemproxy"}}
			case "keyfence":
				for _, p := range st.Keyfence {
					g.Endpoints = append(g.Endpoints, endpoint{Addr: p.Addr, Pid: p.Pid(), Label: p.Name})
				}
			}
			if len(g.Endpoints) > 0 {
				groups = append(groups, g)
			}
		}
	}
	if len(groups) == 0 {
		return errors.New("nothing to measure")
	}

	out := output{When: time.Now(), Notes: notes}
	switch cfg.mode {
	case "conns":
		out.Title = fmt.Sprintf("loadgen conns: resident memory per idle connection (%d connections per target)", cfg.idleConns)
		out.Header = []string{"target", "opened", "failed", "open time", "RSS before MiB", "RSS after MiB", "KiB per conn"}
		for i, g := range groups {
			if i > 0 {
				// Let the previous target's closed sockets go before the next
				// one is measured.
				if err := sleep(ctx, time.Second); err != nil {
					return err
				}
			}
			r, err := runConns(ctx, g, cfg.idleConns, cfg.dialers, cfg.settle, log)
			if err != nil {
				return err
			}
			out.Conns = append(out.Conns, r)
			out.Rows = append(out.Rows, connsRow(r))
		}
		out.Settings = []string{
			fmt.Sprintf("each connection answered one PING, then stayed idle; RSS (VmRSS) read %s after the last one opened", cfg.settle),
			fmt.Sprintf("opened %d at a time; KiB per conn = (RSS after - RSS before) / opened", cfg.dialers),
		}
	default:
		wl, err := newWorkload(cfg.readRatio, uint64(cfg.keys), cfg.zipfS, cfg.valueMin, cfg.valueMax, cfg.seed)
		if err != nil {
			return err
		}
		spec := loadSpec{conns: cfg.conns, maxOps: cfg.maxOps, duration: cfg.duration}
		out.Title = "loadgen mixed: closed loop, as fast as the target answers"
		if cfg.mode == "rate" {
			spec.rate = cfg.rate
			out.Title = fmt.Sprintf("loadgen rate: open loop at %s req/s per target, latency from intended send time", report.FormatOps(cfg.rate))
		}
		out.Header = []string{"target", "op", "requests", "req/s", "errors", "p50 ms", "p99 ms", "p99.9 ms", "max ms"}
		if cfg.mode == "rate" {
			out.Header = append(out.Header, "max lag ms")
		}
		out.Settings = []string{
			fmt.Sprintf("%.0f%% GET / %.0f%% SET on %d keys (Zipf s=%g), values %d B – %d B (log-uniform)",
				cfg.readRatio*100, (1-cfg.readRatio)*100, cfg.keys, cfg.zipfS, cfg.valueMin, cfg.valueMax),
			fmt.Sprintf("%d connections per target, spread over its addresses (tenants); at most %s per target or %d requests",
				cfg.conns, cfg.duration, cfg.maxOps),
			"latency: HDR histogram, 1 µs – 60 s, 3 significant digits",
		}
		for _, g := range groups {
			if redisAddr != "" {
				if err := flushAll(ctx, redisAddr); err != nil {
					return err
				}
			}
			if cfg.preload {
				for _, ep := range g.Endpoints {
					if err := preload(ctx, wl, ep); err != nil {
						return fmt.Errorf("%s: %w", g.Name, err)
					}
				}
			}
			log.Info("measuring", "target", g.Name, "addresses", len(g.Endpoints), "mode", cfg.mode)
			res, err := runLoad(ctx, wl, g, spec)
			if err != nil {
				return err
			}
			if berr := res.brokenErr(); berr != nil {
				return fmt.Errorf("%s: connection failed during the run: %w", g.Name, berr)
			}
			rows := loadRows(g, res, cfg.mode == "rate")
			out.Rows = append(out.Rows, rows...)
			if cfg.mode == "rate" {
				done := completed(res.workers)
				if done < res.scheduled {
					out.Notes = append(out.Notes, fmt.Sprintf("%s: only %d of %d scheduled requests completed", g.Name, done, res.scheduled))
				}
			}
			for _, w := range res.workers {
				if w.firstErr != "" {
					out.Notes = append(out.Notes, fmt.Sprintf("%s: error replies, e.g. %q", g.Name, w.firstErr))
					break
				}
			}
		}
	}

	return printAndWrite(stdout, cfg.out, "loadgen-"+cfg.mode, out)
}

// printAndWrite prints out's table and notes and writes them to
// dir/name.md and dir/name.json.
func printAndWrite(stdout io.Writer, dir, name string, out output) error {
	fmt.Fprintf(stdout, "\n%s\n\n", out.Title)
	lines := append([][]string{out.Header}, out.Rows...)
	fmt.Fprint(stdout, report.AlignText(lines, 2))
	for _, n := range out.Notes {
		fmt.Fprintln(stdout, "note:", n)
	}
	paths, err := writeOutput(dir, name, out)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nwritten: %s\n", strings.Join(paths, ", "))
	return nil
}

// startStack starts the servers named by -stack-targets; keyfence is left
// out, with a note, while its binary does not exist.
func startStack(ctx context.Context, cfg config, log *slog.Logger) (st *stack.Stack, dir string, notes []string, err error) {
	want := func(name string) bool {
		for _, t := range cfg.stackTargets {
			if t == name {
				return true
			}
		}
		return false
	}
	kf := cfg.keyfence
	if !want("keyfence") {
		kf = ""
	}
	tools, err := stack.FindTools(kf)
	if err != nil {
		return nil, "", nil, err
	}
	var tenants []string
	if want("keyfence") {
		if tools.Keyfence == "" {
			notes = append(notes, "keyfence: "+tools.KeyfenceStatus+" ("+cfg.keyfence+")")
			log.Warn("keyfence is not measured", "binary", cfg.keyfence, "status", tools.KeyfenceStatus)
		}
		for i := range cfg.tenants {
			tenants = append(tenants, "bench"+strconv.Itoa(i))
		}
	}
	dir, err = os.MkdirTemp("", "keyfence-loadgen-*")
	if err != nil {
		return nil, "", nil, fmt.Errorf("scratch dir: %w", err)
	}
	st, err = stack.Start(ctx, stack.Config{
		Tools: tools, Dir: dir, Twemproxy: want("twemproxy"), Tenants: tenants,
		KeyfenceArgs: strings.Fields(cfg.keyfenceArgs), Logger: log,
	})
	if err != nil {
		return nil, "", nil, fmt.Errorf("%w (logs in %s)", err, dir)
	}
	return st, dir, notes, nil
}

func flushAll(ctx context.Context, addr string) error {
	if err := resp.FlushAll(ctx, addr); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func completed(ws []*worker) int64 {
	var n int64
	for _, w := range ws {
		n += w.read.TotalCount() + w.write.TotalCount() + w.serverErrs
	}
	return n
}

// loadRows summarises a group: all requests, then GET and SET apart, then
// one line per address when several tenants were loaded at once.
func loadRows(g group, res loadResult, withLag bool) [][]string {
	secs := res.elapsed.Seconds()
	// errs < 0: not counted per operation, shown as "-".
	row := func(name, op string, h *hdrhistogram.Histogram, errs int64, lag time.Duration) []string {
		ms := func(us int64) string { return fmt.Sprintf("%.3f", float64(us)/1000) }
		errText := "-"
		if errs >= 0 {
			errText = strconv.FormatInt(errs, 10)
		}
		r := []string{name, op, strconv.FormatInt(h.TotalCount(), 10), report.FormatOps(float64(h.TotalCount()) / secs),
			errText, ms(h.ValueAtQuantile(50)), ms(h.ValueAtQuantile(99)),
			ms(h.ValueAtQuantile(99.9)), ms(h.Max())}
		if withLag {
			r = append(r, fmt.Sprintf("%.3f", float64(lag.Microseconds())/1000))
		}
		return r
	}
	all, reads, writes := newHist(), newHist(), newHist()
	var errs int64
	var lag time.Duration
	perEP := make([]*hdrhistogram.Histogram, len(g.Endpoints))
	perEPErrs := make([]int64, len(g.Endpoints))
	perEPLag := make([]time.Duration, len(g.Endpoints))
	for _, w := range res.workers {
		reads.Merge(w.read)
		writes.Merge(w.write)
		errs += w.serverErrs
		lag = max(lag, w.maxLag)
		if perEP[w.ep] == nil {
			perEP[w.ep] = newHist()
		}
		perEP[w.ep].Merge(w.read)
		perEP[w.ep].Merge(w.write)
		perEPErrs[w.ep] += w.serverErrs
		perEPLag[w.ep] = max(perEPLag[w.ep], w.maxLag)
	}
	all.Merge(reads)
	all.Merge(writes)
	rows := [][]string{
		row(g.Name, "all", all, errs, lag),
		row(g.Name, "GET", reads, -1, lag),
		row(g.Name, "SET", writes, -1, lag),
	}
	if len(g.Endpoints) > 1 {
		for i, ep := range g.Endpoints {
			if perEP[i] != nil {
				rows = append(rows, row("  "+ep.name(), "all", perEP[i], perEPErrs[i], perEPLag[i]))
			}
		}
	}
	return rows
}

func connsRow(r connsResult) []string {
	mib := func(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }
	before, after, per := "n/a", "n/a", "n/a (no pid)"
	if len(r.Pids) > 0 {
		before, after, per = mib(r.RSSBefore), mib(r.RSSAfter), fmt.Sprintf("%.1f", r.PerConn/1024)
	}
	return []string{r.Target, strconv.Itoa(r.Opened), strconv.Itoa(r.Failed),
		r.OpenTime.Round(time.Millisecond).String(), before, after, per}
}

func writeOutput(dir, name string, out output) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("results dir: %w", err)
	}
	var md strings.Builder
	fmt.Fprintf(&md, "# %s\n\nRun at %s.\n\n", out.Title, out.When.UTC().Format(time.RFC3339))
	for _, s := range out.Settings {
		fmt.Fprintf(&md, "- %s\n", s)
	}
	md.WriteString("\n")
	md.WriteString(report.MarkdownTable(out.Header, out.Rows, 2))
	if len(out.Notes) > 0 {
		md.WriteString("\n")
		for _, n := range out.Notes {
			fmt.Fprintf(&md, "- note: %s\n", n)
		}
	}
	js, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode json: %w", err)
	}
	var paths []string
	files := []struct {
		name string
		data []byte
	}{
		{name + ".md", []byte(md.String())},
		{name + ".json", append(js, '\n')},
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, f.data, 0o644); err != nil {
			return paths, fmt.Errorf("write %s: %w", p, err)
		}
		paths = append(paths, p)
	}
	return paths, nil
}
