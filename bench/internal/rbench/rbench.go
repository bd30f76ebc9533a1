package rbench

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Result is one line of `redis-benchmark --csv`. Latencies are in
// milliseconds, as redis-benchmark prints them.
type Result struct {
	Test  string  `json:"test"`
	RPS   float64 `json:"rps"`
	AvgMs float64 `json:"avg_ms"`
	MinMs float64 `json:"min_ms"`
	P50Ms float64 `json:"p50_ms"`
	P95Ms float64 `json:"p95_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

// TestName maps a `-t` test name to the name redis-benchmark prints for it.
// MSET is the only one that differs: redis-benchmark's MSET test always
// sets 10 keys and says so.
func TestName(t string) string {
	switch strings.ToLower(t) {
	case "mset":
		return "MSET (10 keys)"
	default:
		return strings.ToUpper(t)
	}
}

// ParseCSV reads redis-benchmark's CSV output. Columns are found by header
// name; p50 and p99 are required, since redis-benchmark before 7.0 did not
// print them and a table without them would be misleading.
func ParseCSV(r io.Reader) ([]Result, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("read csv header: %w", err)
	}
	col := make(map[string]int, len(header))
	for i, h := range header {
		col[strings.TrimSpace(h)] = i
	}
	for _, need := range []string{"test", "rps", "p50_latency_ms", "p99_latency_ms"} {
		if _, ok := col[need]; !ok {
			return nil, fmt.Errorf("csv header %q lacks column %q (redis-benchmark 7.0 or newer prints it)", header, need)
		}
	}
	var out []Result
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read csv: %w", err)
		}
		var res Result
		var perr error
		get := func(name string) float64 {
			i, ok := col[name]
			if !ok || i >= len(rec) {
				return 0
			}
			v, err := strconv.ParseFloat(strings.TrimSpace(rec[i]), 64)
			if err != nil && perr == nil {
				perr = fmt.Errorf("column %s: %w", name, err)
			}
			return v
		}
		if i := col["test"]; i < len(rec) {
			res.Test = rec[i]
		}
		res.RPS = get("rps")
		res.AvgMs = get("avg_latency_ms")
		res.MinMs = get("min_latency_ms")
		res.P50Ms = get("p50_latency_ms")
		res.P95Ms = get("p95_latency_ms")
		res.P99Ms = get("p99_latency_ms")
		res.MaxMs = get("max_latency_ms")
		if perr != nil {
			return nil, fmt.Errorf("csv line %q: %w", rec, perr)
		}
		out = append(out, res)
	}
	return out, nil
}

// Options are redis-benchmark's settings; every target gets the same.
type Options struct {
	Bin      string
	Addr     string // host:port
	Clients  int
	Requests int
	Pipeline int
	// Keyspace is redis-benchmark's -r: random keys in [0, Keyspace). Zero
	// makes every request hit the same key.
	Keyspace int
	DataSize int
	Tests    []string // -t names: get, set, incr, lpush, hset, mset
	// Threads is redis-benchmark's --threads; 0 or 1 is its default of
	// one event loop, which cannot use more than one core.
	Threads int
	Timeout time.Duration
}

// Args is the command line, shown in reports so runs can be reproduced.
func (o Options) Args() []string {
	host, port := o.Addr, "6379"
	if i := strings.LastIndexByte(o.Addr, ':'); i >= 0 {
		host, port = o.Addr[:i], o.Addr[i+1:]
	}
	args := []string{"-h", host, "-p", port,
		"-c", strconv.Itoa(o.Clients), "-n", strconv.Itoa(o.Requests),
		"-P", strconv.Itoa(o.Pipeline)}
	if o.Keyspace > 0 {
		args = append(args, "-r", strconv.Itoa(o.Keyspace))
	}
	if o.DataSize > 0 {
		args = append(args, "-d", strconv.Itoa(o.DataSize))
	}
	if o.Threads > 1 {
		args = append(args, "--threads", strconv.Itoa(o.Threads))
	}
	return append(args, "-t", strings.Join(o.Tests, ","), "--csv")
}

// Run runs redis-benchmark once and returns one result per requested test,
// in the order of o.Tests, and the CPU time (user + system) redis-benchmark
// itself used: the load generator shares the machine with what it
// measures, and when it is short of CPU it, not the target, sets the pace.
func Run(ctx context.Context, o Options) ([]Result, time.Duration, error) {
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, o.Bin, o.Args()...)
	// Own process group, so that Ctrl-C reaches only the orchestrator, which
	// then cancels ctx; Pdeathsig covers the orchestrator being killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		return nil, 0, fmt.Errorf("redis-benchmark against %s: %w", o.Addr, ctx.Err())
	}
	if err != nil {
		return nil, 0, fmt.Errorf("redis-benchmark against %s: %w: %s", o.Addr, err, tail(stderr.String(), 600))
	}
	res, err := ParseCSV(&stdout)
	if err != nil {
		return nil, 0, fmt.Errorf("redis-benchmark against %s: %w", o.Addr, err)
	}
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	byName := make(map[string]Result, len(res))
	for _, r := range res {
		byName[r.Test] = r
	}
	out := make([]Result, 0, len(o.Tests))
	for _, t := range o.Tests {
		r, ok := byName[TestName(t)]
		if !ok {
			return nil, 0, fmt.Errorf("redis-benchmark against %s printed no %q line; stderr: %s", o.Addr, TestName(t), tail(stderr.String(), 600))
		}
		out = append(out, r)
	}
	return out, cpu, nil
}

// Version returns redis-benchmark's version line.
func Version(ctx context.Context, bin string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", bin, err)
	}
	return strings.TrimSpace(string(out)), nil
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
