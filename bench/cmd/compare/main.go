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
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keyfence/keyfence/bench/internal/envflag"
	"github.com/keyfence/keyfence/bench/internal/rbench"
	"github.com/keyfence/keyfence/bench/internal/report"
	"github.com/keyfence/keyfence/bench/internal/resp"
	"github.com/keyfence/keyfence/bench/internal/stack"
)

// Exit codes: 1 when a run or a target failed (the table is still written),
// 2 for bad usage.
const (
	exitFailed      = 1
	exitUsage       = 2
	exitInterrupted = 130
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

type config struct {
	rounds, requests, clients, keyspace, dataSize int
	// threads is redis-benchmark's --threads: with one thread, many
	// clients are held to what one core of the client can send.
	threads int
	// pipelinedFactor multiplies requests for pipeline depths above 1.
	pipelinedFactor             int
	pipelines                   []int
	tests, targets              []string
	keyfence, keyfenceArgs, out string
	keyfenceBase                string
	runTimeout, timeout         time.Duration
	keep, verbose               bool
	// gorpx is the go-redis AsyncAutoPipeline baseline (bench/cmd/gorpx),
	// measured as a fourth target when -gorpx is given.
	gorpx    bool
	gorpxBin string
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	root := envflag.RepoRoot()
	var c config
	var env envflag.Defaults
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&c.rounds, "rounds", env.Int("BENCH_ROUNDS", 3), "interleaved rounds (A B C, C B A, A B C …); env BENCH_ROUNDS")
	fs.IntVar(&c.requests, "n", env.Int("BENCH_REQUESTS", 200000), "redis-benchmark -n: requests per test; env BENCH_REQUESTS")
	// A pipelined run is 10-20 times faster: at -n 200000 it lasted 0.3 s,
	// and CPU time, read in 10 ms ticks, could not show a 5 % difference
	// (bench/results/designs.md, "Under make bench's order").
	fs.IntVar(&c.pipelinedFactor, "n-pipelined-factor", env.Int("BENCH_REQUESTS_PIPELINED_FACTOR", 5), "requests per test at pipeline depths above 1 are -n times this, so that a run lasts seconds; env BENCH_REQUESTS_PIPELINED_FACTOR")
	fs.IntVar(&c.clients, "c", env.Int("BENCH_CLIENTS", 50), "redis-benchmark -c: parallel connections; env BENCH_CLIENTS")
	fs.IntVar(&c.threads, "threads", env.Int("BENCH_THREADS", 1), "redis-benchmark --threads: its event loops; one, the default, cannot use more than one core, and with many clients it sets the pace (bench/results/designs.md); env BENCH_THREADS")
	fs.IntVar(&c.keyspace, "r", env.Int("BENCH_KEYSPACE", 100000), "redis-benchmark -r: random keys in [0,r), 0 = one key; env BENCH_KEYSPACE")
	fs.IntVar(&c.dataSize, "d", env.Int("BENCH_DATASIZE", 3), "redis-benchmark -d: value size in bytes; env BENCH_DATASIZE")
	pipelines := fs.String("pipelines", envflag.String("BENCH_PIPELINES", "1,16"), "redis-benchmark -P values, comma-separated; env BENCH_PIPELINES")
	tests := fs.String("tests", envflag.String("BENCH_TESTS", "get,set,incr,lpush,hset,mset"), "redis-benchmark -t tests; env BENCH_TESTS")
	targets := fs.String("targets", envflag.String("BENCH_TARGETS", "direct,twemproxy,keyfence"), "targets to measure, in this order; env BENCH_TARGETS")
	fs.StringVar(&c.keyfence, "keyfence", envflag.String("KEYFENCE_BIN", filepath.Join(root, "bin", "keyfence")), "keyfence binary; env KEYFENCE_BIN")
	fs.StringVar(&c.keyfenceArgs, "keyfence-args", envflag.String("KEYFENCE_ARGS", ""), "extra keyfence arguments, space-separated; env KEYFENCE_ARGS")
	fs.StringVar(&c.keyfenceBase, "keyfence-base", envflag.String("KEYFENCE_BASE_BIN", ""), "a second keyfence binary (an earlier build) measured as target keyfence-base, to compare designs side by side; env KEYFENCE_BASE_BIN")
	fs.BoolVar(&c.gorpx, "gorpx", false, "also measure gorpx, the redcon + go-redis AsyncAutoPipeline baseline (bench/cmd/gorpx), as a fourth target")
	fs.StringVar(&c.gorpxBin, "gorpx-bin", envflag.String("GORPX_BIN", filepath.Join(root, "bench", ".bin", "gorpx")), "gorpx binary (make bench-gorpx builds it); env GORPX_BIN")
	fs.StringVar(&c.out, "out", envflag.String("BENCH_OUT", filepath.Join(root, "bench", "results")), "directory for compare.{md,svg,json}; env BENCH_OUT")
	fs.DurationVar(&c.runTimeout, "run-timeout", env.Duration("BENCH_RUN_TIMEOUT", 10*time.Minute), "limit for one redis-benchmark run; env BENCH_RUN_TIMEOUT")
	fs.DurationVar(&c.timeout, "timeout", env.Duration("BENCH_TIMEOUT", 2*time.Hour), "limit for the whole comparison; env BENCH_TIMEOUT")
	fs.BoolVar(&c.keep, "keep", false, "keep the scratch directory (configs, server logs) even when everything passed")
	fs.BoolVar(&c.verbose, "v", false, "debug logging")
	if err := env.Err(); err != nil {
		return c, err
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var err error
	if c.pipelines, err = envflag.Ints(*pipelines); err != nil {
		return c, err
	}
	c.tests = envflag.List(strings.ToLower(*tests))
	c.targets = envflag.List(strings.ToLower(*targets))
	if c.gorpx && !slices.Contains(c.targets, "gorpx") {
		c.targets = append(c.targets, "gorpx")
	}
	switch {
	case c.rounds < 1 || c.requests < 1 || c.clients < 1 || c.pipelinedFactor < 1 || c.threads < 1:
		return c, errors.New("-rounds, -n, -n-pipelined-factor, -c and -threads must be at least 1")
	case len(c.pipelines) == 0 || len(c.tests) == 0 || len(c.targets) == 0:
		return c, errors.New("-pipelines, -tests and -targets must not be empty")
	}
	for _, p := range c.pipelines {
		if p < 1 {
			return c, fmt.Errorf("pipeline %d: must be at least 1", p)
		}
	}
	for _, t := range c.targets {
		if !slices.Contains(knownTargets, t) {
			return c, fmt.Errorf("unknown target %q (want one of %s)", t, strings.Join(knownTargets, ", "))
		}
		if t == "keyfence-base" && c.keyfenceBase == "" {
			return c, errors.New("target keyfence-base needs -keyfence-base (a keyfence binary)")
		}
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "compare:", err)
		return exitUsage
	}
	level := slog.LevelInfo
	if cfg.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	failed, err := compare(ctx, cfg, stdout, log)
	if err != nil && errors.Is(context.Cause(ctx), context.Canceled) {
		log.Warn("interrupted; every server started was stopped")
		return exitInterrupted
	}
	if err != nil {
		log.Error("compare failed", "err", err)
		return exitFailed
	}
	if failed {
		return exitFailed
	}
	return 0
}

// knownTargets are the columns compare can measure. keyfence-nofallback is
// keyfence with its read fallback off (--fallback=false), so that the cost of
// filling the cache is measured side by side; keyfence-goroutines is keyfence
// without its event loop (--event-loop=false, a goroutine per client);
// keyfence-base is another build (-keyfence-base), so that two designs are.
var knownTargets = []string{"direct", "twemproxy", "keyfence", "keyfence-nofallback", "keyfence-goroutines", "keyfence-base", "gorpx"}

// target is one column of the comparison.
type target struct {
	name   string
	addr   string
	proc   *stack.Proc // nil for direct, which is the stack's Redis
	status string
}

// compare does the work; failed reports runs or targets that failed while
// the comparison itself completed.
func compare(ctx context.Context, cfg config, stdout io.Writer, log *slog.Logger) (failed bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()

	tools, err := stack.FindTools(cfg.keyfence)
	if err != nil {
		return false, err
	}
	benchBin, err := stack.LookPath("redis-benchmark")
	if err != nil {
		return false, err
	}
	benchVersion, err := rbench.Version(ctx, benchBin)
	if err != nil {
		return false, err
	}

	dir, err := os.MkdirTemp("", "keyfence-bench-*")
	if err != nil {
		return false, fmt.Errorf("scratch dir: %w", err)
	}
	defer func() {
		if cfg.keep || failed || err != nil {
			log.Info("server logs and configs kept", "dir", dir)
			return
		}
		os.RemoveAll(dir)
	}()

	want := func(name string) bool {
		for _, t := range cfg.targets {
			if t == name {
				return true
			}
		}
		return false
	}
	scfg := stack.Config{
		Tools: tools, Dir: dir, Twemproxy: want("twemproxy"),
		KeyfenceArgs: strings.Fields(cfg.keyfenceArgs), Logger: log,
	}
	st, err := stack.Start(ctx, scfg)
	if err != nil {
		return false, err
	}
	defer func() {
		if serr := st.Stop(); serr != nil {
			log.Error("stopping servers", "err", serr)
			failed = true
		}
	}()

	var targets []*target
	for _, name := range cfg.targets {
		switch name {
		case "direct":
			targets = append(targets, &target{name: name, addr: st.Redis.Addr})
		case "twemproxy":
			targets = append(targets, &target{name: name, addr: st.Twemproxy.Addr, proc: st.Twemproxy})
		case "keyfence", "keyfence-nofallback", "keyfence-goroutines", "keyfence-base":
			kcfg, tenant := scfg, "bench"
			switch name {
			case "keyfence-nofallback":
				kcfg.KeyfenceArgs = append(slices.Clip(kcfg.KeyfenceArgs), "--fallback=false")
				tenant = "bench-nofallback"
			case "keyfence-goroutines":
				kcfg.KeyfenceArgs = append(slices.Clip(kcfg.KeyfenceArgs), "--event-loop=false")
				tenant = "bench-goroutines"
			case "keyfence-base":
				kcfg.Tools.Keyfence, tenant = cfg.keyfenceBase, "bench-base"
			}
			tg := &target{name: name, status: tools.KeyfenceStatus}
			if kcfg.Tools.Keyfence != "" {
				p, err := st.StartKeyfence(ctx, kcfg, tenant)
				if err != nil {
					if ctx.Err() != nil {
						return false, err
					}
					// The other columns are still worth having.
					log.Error("keyfence did not start; continuing without it", "target", name, "err", err)
					tg.status, failed = "failed to start", true
				} else {
					tg.addr, tg.proc = p.Addr, p
				}
			} else {
				log.Warn("keyfence is not measured", "binary", cfg.keyfence, "status", tools.KeyfenceStatus)
			}
			targets = append(targets, tg)
		case "gorpx":
			tg, err := startGorpx(ctx, st, scfg, cfg.gorpxBin, log)
			if err != nil {
				return false, err
			}
			failed = failed || tg.status == "failed to start"
			targets = append(targets, tg)
		}
	}

	table := report.Table{Title: "keyfence vs direct Redis vs twemproxy", When: time.Now()}
	if want("gorpx") {
		table.Title += " vs gorpx"
	}
	for _, tg := range targets {
		table.Targets = append(table.Targets, report.Target{Name: tg.name, Status: tg.status})
	}
	// Every ratio has keyfence on top: the SVG's caption says so.
	for _, den := range []string{"direct", "twemproxy", "keyfence-nofallback", "keyfence-goroutines", "keyfence-base", "gorpx"} {
		if want("keyfence") && want(den) {
			table.Ratios = append(table.Ratios, report.Ratio{Num: "keyfence", Den: den})
		}
	}
	opts := rbench.Options{
		Bin: benchBin, Clients: cfg.clients, Requests: cfg.requests,
		Keyspace: cfg.keyspace, DataSize: cfg.dataSize, Tests: cfg.tests, Threads: cfg.threads, Timeout: cfg.runTimeout,
	}
	table.Settings = settings(ctx, cfg, opts, tools, benchVersion)
	if want("gorpx") {
		table.Settings = append(table.Settings, "gorpx: "+binStatus(cfg.gorpxBin)+
			"; redcon server, one go-redis v9 client's AsyncAutoPipeline (library defaults) with NewRawCmd; a baseline, not a product")
	}

	start := time.Now()
	for round := 1; round <= cfg.rounds; round++ {
		// Every other round runs the targets in reverse: the same binary
		// measured against itself came out 1.12–1.20x at pipeline 16 when
		// it always ran first (bench/results/designs.md).
		order := slices.Clone(targets)
		if round%2 == 0 {
			slices.Reverse(order)
		}
		for _, p := range cfg.pipelines {
			for _, tg := range order {
				if tg.status != "" {
					continue
				}
				if err := ctx.Err(); err != nil {
					return failed, fmt.Errorf("interrupted in round %d: %w", round, err)
				}
				if tg.proc != nil {
					if done, werr := tg.proc.Exited(); done {
						log.Error("target process died; no more runs against it", "target", tg.name, "err", werr,
							"log", tg.proc.LogTail(1024))
						tg.status, failed = "died", true
						continue
					}
				}
				// Each test runs on its own, from an empty Redis (lists and
				// hashes do not grow across runs, later targets do not pay
				// for earlier ones' memory), with the CPU time of the
				// target's process read around it.
				pid := st.Redis.Pid()
				if tg.proc != nil {
					pid = tg.proc.Pid()
				}
				t0 := time.Now()
				attrs := []any{"round", round, "target", tg.name, "pipeline", p}
				for _, test := range cfg.tests {
					if err := flushAll(ctx, st.Redis.Addr); err != nil {
						return failed, err
					}
					o := opts
					o.Addr, o.Pipeline, o.Tests = tg.addr, p, []string{test}
					o.Requests = cfg.requestsAt(p)
					cpu0, cerr := stack.CPUTime(pid)
					res, clientCPU, fails, err := runTests(ctx, o, st.Redis.Addr, log)
					if err != nil {
						return failed, err
					}
					cpu1, cerr1 := stack.CPUTime(pid)
					for _, f := range fails {
						failed = true
						f.Round, f.Target, f.Pipeline = round, tg.name, p
						log.Error("run failed", "round", round, "target", tg.name, "pipeline", p, "test", f.Test, "err", f.Err)
						table.Failures = append(table.Failures, f)
					}
					for _, r := range res {
						sample := report.Sample{Round: round, Target: tg.name, Pipeline: p, Result: r}
						if cerr == nil && cerr1 == nil && len(res) == 1 {
							sample.CPUUsPerOp = float64((cpu1 - cpu0).Microseconds()) / float64(o.Requests)
						}
						if clientCPU > 0 && len(res) == 1 {
							sample.ClientCPUUsPerOp = float64(clientCPU.Microseconds()) / float64(o.Requests)
						}
						table.Samples = append(table.Samples, sample)
						attrs = append(attrs, r.Test, report.FormatOps(r.RPS))
					}
				}
				attrs = append(attrs, "took", time.Since(t0).Round(time.Millisecond))
				log.Info("run", attrs...)
			}
		}
	}
	for i, tg := range targets {
		// A target that died mid-way keeps the rounds it finished; only
		// the cells it never reached say "died".
		table.Targets[i].Status = tg.status
	}
	names := make([]string, len(cfg.tests))
	for i, t := range cfg.tests {
		names[i] = rbench.TestName(t)
	}
	table = report.Summarize(table, names, cfg.pipelines)
	log.Info("all rounds done", "took", time.Since(start).Round(time.Second))

	fmt.Fprintf(stdout, "\n%s (median of %d rounds; -c %d -n %d (pipelined: %d) -r %d; ops/s, latency in ms)\n\n",
		table.Title, cfg.rounds, cfg.clients, cfg.requests, cfg.requestsAt(2), cfg.keyspace)
	fmt.Fprint(stdout, table.Text())
	if len(table.Failures) > 0 {
		fmt.Fprintf(stdout, "\n%d run(s) failed; see the log above and compare.md\n", len(table.Failures))
	}
	paths, err := writeResults(cfg.out, table)
	if err != nil {
		return failed, err
	}
	fmt.Fprintf(stdout, "\nwritten: %s\n", strings.Join(paths, ", "))
	return failed, nil
}

// startGorpx starts the go-redis baseline in front of the stack's Redis. Like
// keyfence, a missing binary or a failed start leaves its column empty, with
// the reason, rather than ending the comparison. err is only for
// cancellation.
func startGorpx(ctx context.Context, st *stack.Stack, scfg stack.Config, bin string, log *slog.Logger) (*target, error) {
	tg := &target{name: "gorpx"}
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		log.Warn("gorpx is not measured: build it with `make bench-gorpx`", "binary", bin)
		tg.status = stack.NotBuilt
		return tg, nil
	}
	p, err := st.StartGorpx(ctx, scfg, bin)
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		log.Error("gorpx did not start; continuing without it", "err", err)
		tg.status = "failed to start"
		return tg, nil
	}
	tg.addr, tg.proc = p.Addr, p
	return tg, nil
}

// binStatus is a binary's path and build time, for the settings.
func binStatus(bin string) string {
	st, err := os.Stat(bin)
	if err != nil {
		return bin + " (" + stack.NotBuilt + ")"
	}
	return bin + " (built " + st.ModTime().UTC().Format(time.RFC3339) + ")"
}

// runTests runs all tests in one redis-benchmark invocation. redis-benchmark
// stops at the first error reply, so when that run fails every test is run
// again on its own: one unsupported command then costs one cell of the
// table, not the whole row. err is only for failures that end the
// comparison (cancellation, Redis itself unreachable). clientCPU is
// redis-benchmark's CPU time, 0 when the tests ran one by one.
func runTests(ctx context.Context, o rbench.Options, redisAddr string, log *slog.Logger) (res []rbench.Result, clientCPU time.Duration, fails []report.Failure, err error) {
	res, clientCPU, err = rbench.Run(ctx, o)
	if err == nil {
		return res, clientCPU, nil, nil
	}
	if ctx.Err() != nil {
		return nil, 0, nil, err
	}
	if len(o.Tests) == 1 {
		return nil, 0, []report.Failure{{Test: rbench.TestName(o.Tests[0]), Err: err.Error()}}, nil
	}
	log.Warn("run failed; running its tests one by one", "addr", o.Addr, "err", err)
	for _, t := range o.Tests {
		if err := flushAll(ctx, redisAddr); err != nil {
			return nil, 0, nil, err
		}
		one := o
		one.Tests = []string{t}
		r, _, err := rbench.Run(ctx, one)
		switch {
		case ctx.Err() != nil:
			return nil, 0, nil, err
		case err != nil:
			fails = append(fails, report.Failure{Test: rbench.TestName(t), Err: err.Error()})
		default:
			res = append(res, r...)
		}
	}
	return res, 0, fails, nil
}

func flushAll(ctx context.Context, addr string) error {
	if err := resp.FlushAll(ctx, addr); err != nil {
		return fmt.Errorf("flush before run: %w", err)
	}
	return nil
}

// settings records what a reader needs to reproduce or judge the numbers.
func settings(ctx context.Context, cfg config, o rbench.Options, tools stack.Tools, benchVersion string) []string {
	o.Addr, o.Pipeline = "127.0.0.1:<port>", 0
	args := strings.Replace(strings.Join(o.Args(), " "), "-P 0", "-P <pipeline>", 1)
	kf := tools.Keyfence
	if kf == "" {
		kf = cfg.keyfence + " (" + tools.KeyfenceStatus + ")"
	} else if st, err := os.Stat(kf); err == nil {
		kf += " (built " + st.ModTime().UTC().Format(time.RFC3339) + ")"
	}
	return []string{
		fmt.Sprintf("rounds: %d; in each round every pipeline depth runs against %s in turn, in reverse order every other round", cfg.rounds, strings.Join(cfg.targets, " → ")),
		fmt.Sprintf("pipelines: %s; tests: %s", joinInts(cfg.pipelines), strings.Join(cfg.tests, ", ")),
		"command: `redis-benchmark " + args + "`" + fmt.Sprintf(", with -n %d at pipeline depths above 1", cfg.requestsAt(2)),
		"redis-benchmark: " + benchVersion,
		"redis-server: " + versionLine(ctx, tools.RedisServer, "--version"),
		"twemproxy: " + versionLine(ctx, tools.Nutcracker, "--version"),
		"keyfence: " + kf,
		fmt.Sprintf("machine: %d CPUs (%s/%s); all processes on 127.0.0.1, Redis flushed before every run", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH),
	}
}

// requestsAt is redis-benchmark's -n at pipeline depth p.
func (c config) requestsAt(p int) int {
	if p > 1 {
		return c.requests * c.pipelinedFactor
	}
	return c.requests
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

func versionLine(ctx context.Context, bin, flag string) string {
	out, err := exec.CommandContext(ctx, bin, flag).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "unknown"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

func writeResults(dir string, t report.Table) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("results dir: %w", err)
	}
	js, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode json: %w", err)
	}
	files := []struct {
		name string
		data []byte
	}{
		{"compare.md", []byte(t.Markdown())},
		{"compare.svg", []byte(t.SVG())},
		{"compare.json", append(js, '\n')},
	}
	var paths []string
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, f.data, 0o644); err != nil {
			return paths, fmt.Errorf("write %s: %w", p, err)
		}
		paths = append(paths, p)
	}
	return paths, nil
}
