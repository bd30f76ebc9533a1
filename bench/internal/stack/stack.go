package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keyfence/keyfence/bench/internal/resp"
)

// NotBuilt is the status of keyfence while its binary does not exist yet.
const NotBuilt = "not built"

// Tools are the executables a stack is made of.
type Tools struct {
	RedisServer string
	Nutcracker  string
	// Keyfence is empty when the binary is missing; KeyfenceStatus says why.
	Keyfence       string
	KeyfenceStatus string
}

// FindTools locates redis-server and nutcracker and checks keyfencePath.
// A missing keyfence is not an error: benchmarks run without it and say so.
func FindTools(keyfencePath string) (Tools, error) {
	var t Tools
	var err error
	if t.RedisServer, err = LookPath("redis-server"); err != nil {
		return t, err
	}
	if t.Nutcracker, err = LookPath("nutcracker"); err != nil {
		return t, err
	}
	if keyfencePath == "" {
		t.KeyfenceStatus = "disabled"
		return t, nil
	}
	st, statErr := os.Stat(keyfencePath)
	switch {
	case statErr != nil:
		t.KeyfenceStatus = NotBuilt
	case st.IsDir() || st.Mode().Perm()&0o111 == 0:
		t.KeyfenceStatus = "not executable"
	default:
		t.Keyfence, _ = filepath.Abs(keyfencePath)
	}
	return t, nil
}

// LookPath finds a tool on PATH or in the sbin directories that Debian
// installs nutcracker into, which are not on every user's PATH.
func LookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: run `make bench-deps` or `apt-get install -y redis-server redis-tools nutcracker`: %w", name, exec.ErrNotFound)
}

// Config says what to start.
type Config struct {
	Tools Tools
	// Dir receives configuration files, Redis's working directory and one
	// log file per process. The caller creates and removes it.
	Dir       string
	Twemproxy bool
	// Tenants starts one keyfence process per tenant id (sidecar mode), when
	// Tools.Keyfence is set.
	Tenants      []string
	KeyfenceArgs []string
	// RedisArgs are appended to redis-server's command line.
	RedisArgs    []string
	StartTimeout time.Duration
	Logger       *slog.Logger
}

// Stack is a running set of servers.
type Stack struct {
	Redis     *Proc
	Twemproxy *Proc
	Keyfence  []*Proc
	// Gorpx is bench/cmd/gorpx, when StartGorpx was called.
	Gorpx *Proc
	log   *slog.Logger
}

// Start starts redis-server, then twemproxy and keyfence in front of it, and
// waits until each answers PING. On error, whatever was started is stopped.
func Start(ctx context.Context, cfg Config) (st *Stack, err error) {
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 15 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Stack{log: cfg.Logger}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Stop())
		}
	}()

	s.Redis, err = startProc(ctx, cfg, "redis", 1, func(ports []int) (*exec.Cmd, string, error) {
		args := []string{
			"--port", strconv.Itoa(ports[0]), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--daemonize", "no",
			"--dir", cfg.Dir, "--logfile", "",
			// Redis lowers this itself to what RLIMIT_NOFILE allows; the
			// default of 10000 would cap the connections test.
			"--maxclients", "100000",
		}
		args = append(args, cfg.RedisArgs...)
		return exec.Command(cfg.Tools.RedisServer, args...), "127.0.0.1:" + strconv.Itoa(ports[0]), nil
	})
	if err != nil {
		return s, err
	}
	if cfg.Twemproxy {
		s.Twemproxy, err = startProc(ctx, cfg, "twemproxy", 2, func(ports []int) (*exec.Cmd, string, error) {
			conf := filepath.Join(cfg.Dir, "nutcracker.yml")
			addr := "127.0.0.1:" + strconv.Itoa(ports[0])
			if err := os.WriteFile(conf, []byte(nutcrackerConf(addr, s.Redis.Addr)), 0o644); err != nil {
				return nil, "", fmt.Errorf("write %s: %w", conf, err)
			}
			return exec.Command(cfg.Tools.Nutcracker, "-c", conf,
				"-s", strconv.Itoa(ports[1]), "-a", "127.0.0.1"), addr, nil
		})
		if err != nil {
			return s, err
		}
	}

	if cfg.Tools.Keyfence != "" {
		for _, tenant := range cfg.Tenants {
			if _, err := s.StartKeyfence(ctx, cfg, tenant); err != nil {
				return s, err
			}
		}
	}
	return s, nil
}

// StartKeyfence starts one more keyfence (sidecar mode, one tenant) in front
// of the stack's Redis. It is separate from Start so that a caller can keep
// benchmarking the other targets when keyfence does not come up.
func (s *Stack) StartKeyfence(ctx context.Context, cfg Config, tenant string) (*Proc, error) {
	return s.startKeyfence(ctx, cfg, "keyfence-"+tenant, []string{"--tenant", tenant}, resp.Ping)
}

// StartGateway starts one keyfence in gateway mode (--tenants-file) in
// front of the stack's Redis. A gateway answers nothing but AUTH before a
// client authenticates, so it is ready once user (one of the file's
// tenants) can AUTH with password and PING.
func (s *Stack) StartGateway(ctx context.Context, cfg Config, tenantsFile, user, password string) (*Proc, error) {
	probe := func(ctx context.Context, addr string) error { return resp.PingAs(ctx, addr, user, password) }
	return s.startKeyfence(ctx, cfg, "keyfence-gateway", []string{"--tenants-file", tenantsFile}, probe)
}

// startKeyfence starts keyfence with modeArgs (which tenant or tenants) on
// a listen and an admin port of its own, in front of the stack's Redis,
// ready once probe passes.
func (s *Stack) startKeyfence(ctx context.Context, cfg Config, name string, modeArgs []string, probe func(ctx context.Context, addr string) error) (*Proc, error) {
	if cfg.Tools.Keyfence == "" {
		return nil, fmt.Errorf("keyfence: %s", cfg.Tools.KeyfenceStatus)
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 15 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	redisPort := s.Redis.Addr[strings.LastIndexByte(s.Redis.Addr, ':')+1:]
	var admin string
	build := func(ports []int) (*exec.Cmd, string, error) {
		addr := "127.0.0.1:" + strconv.Itoa(ports[0])
		admin = "127.0.0.1:" + strconv.Itoa(ports[1])
		args := append(slices.Clip(modeArgs), "--listen", addr, "--admin", admin)
		cmd := exec.Command(cfg.Tools.Keyfence, append(args, cfg.KeyfenceArgs...)...)
		cmd.Env = append(os.Environ(), "REDIS_HOST=127.0.0.1", "REDIS_PORT="+redisPort)
		return cmd, addr, nil
	}
	p, err := startProcProbe(ctx, cfg, name, 2, build, probe)
	if err != nil {
		return nil, err
	}
	p.Admin = admin
	s.Keyfence = append(s.Keyfence, p)
	return p, nil
}

// StartGorpx starts bin, a build of bench/cmd/gorpx (the go-redis
// AsyncAutoPipeline baseline), in front of the stack's Redis.
func (s *Stack) StartGorpx(ctx context.Context, cfg Config, bin string) (*Proc, error) {
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 15 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p, err := startProc(ctx, cfg, "gorpx", 1, func(ports []int) (*exec.Cmd, string, error) {
		addr := "127.0.0.1:" + strconv.Itoa(ports[0])
		return exec.Command(bin, "-listen", addr, "-redis", s.Redis.Addr), addr, nil
	})
	if err != nil {
		return nil, err
	}
	s.Gorpx = p
	return p, nil
}

// nutcrackerConf is a one-pool, one-server twemproxy configuration. Weight 1
// on a single server: every key goes to the same Redis, as with keyfence.
func nutcrackerConf(listen, server string) string {
	return fmt.Sprintf(`keyfence_bench:
  listen: %s
  redis: true
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: false
  preconnect: true
  servers:
   - %s:1
`, listen, server)
}

// Stop stops every process, the proxies before the Redis behind them.
func (s *Stack) Stop() error {
	var errs []error
	for i := len(s.Keyfence) - 1; i >= 0; i-- {
		// keyfence drains its clients on SIGTERM, so give it time.
		errs = append(errs, s.Keyfence[i].Stop(10*time.Second))
	}
	if s.Gorpx != nil {
		errs = append(errs, s.Gorpx.Stop(3*time.Second))
	}
	if s.Twemproxy != nil {
		errs = append(errs, s.Twemproxy.Stop(3*time.Second))
	}
	if s.Redis != nil {
		errs = append(errs, s.Redis.Stop(5*time.Second))
	}
	return errors.Join(errs...)
}

// Proc is one started server process.
type Proc struct {
	Name    string
	Addr    string
	LogPath string
	// Admin is keyfence's admin HTTP address (/metrics, and /debug/pprof
	// with --admin-pprof); empty for the other servers.
	Admin   string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	log     *slog.Logger
}

// Pid is the process id, for reading its memory use.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.exited:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Stop sends SIGTERM, waits up to grace, then kills. A process that had
// already died is reported as an error, because a benchmark against it was
// not a benchmark. It takes no context on purpose: it runs during cleanup,
// usually after the caller's context was cancelled by Ctrl-C, and grace
// bounds the wait.
func (p *Proc) Stop(grace time.Duration) error {
	if done, werr := p.Exited(); done {
		return fmt.Errorf("%s (pid %d) had exited before stop: %v; log tail:\n%s", p.Name, p.Pid(), werr, p.LogTail(1024))
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.exited:
		p.log.Debug("stopped", "proc", p.Name, "pid", p.Pid())
		return nil
	case <-t.C:
	}
	p.log.Warn("did not stop in time, killing", "proc", p.Name, "pid", p.Pid(), "grace", grace)
	_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
	<-p.exited
	return nil
}

// LogTail returns the last n bytes of the process's output.
func (p *Proc) LogTail(n int64) string {
	f, err := os.Open(p.LogPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(st.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

type buildFunc func(ports []int) (cmd *exec.Cmd, addr string, err error)

// startProc starts a process on freshly chosen ports and waits until it
// answers PING. A port can be taken between choosing and binding it, so an
// early exit is retried on new ports a few times.
func startProc(ctx context.Context, cfg Config, name string, nports int, build buildFunc) (*Proc, error) {
	return startProcProbe(ctx, cfg, name, nports, build, resp.Ping)
}

// startProcProbe is startProc with the readiness check probe instead of a
// plain PING.
func startProcProbe(ctx context.Context, cfg Config, name string, nports int, build buildFunc, probe func(ctx context.Context, addr string) error) (*Proc, error) {
	const attempts = 3
	var lastErr error
	for attempt := 1; attempt <= attempts; attempt++ {
		ports, err := freePorts(nports)
		if err != nil {
			return nil, err
		}
		cmd, addr, err := build(ports)
		if err != nil {
			return nil, err
		}
		p, err := spawn(cfg, name, addr, cmd)
		if err != nil {
			return nil, err
		}
		err = waitReady(ctx, p, cfg.StartTimeout, probe)
		if err == nil {
			cfg.Logger.Info("started", "proc", name, "pid", p.Pid(), "addr", addr)
			return p, nil
		}
		lastErr = err
		exited, _ := p.Exited()
		_ = p.Stop(2 * time.Second)
		if !exited || ctx.Err() != nil {
			break
		}
		cfg.Logger.Warn("exited during start, retrying on other ports", "proc", name, "attempt", attempt, "err", err)
	}
	return nil, fmt.Errorf("start %s: %w", name, lastErr)
}

func spawn(cfg Config, name, addr string, cmd *exec.Cmd) (*Proc, error) {
	logPath := filepath.Join(cfg.Dir, name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", logPath, err)
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	// Own process group: a Ctrl-C at the terminal reaches only the
	// benchmark, which then stops the servers in order. Pdeathsig: if the
	// benchmark is killed outright, the kernel kills the servers.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Addr: addr, LogPath: logPath, cmd: cmd, exited: make(chan struct{}), log: cfg.Logger}
	go func() {
		p.waitErr = cmd.Wait()
		lf.Close()
		close(p.exited)
	}()
	return p, nil
}

func waitReady(ctx context.Context, p *Proc, timeout time.Duration, probe func(ctx context.Context, addr string) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if done, werr := p.Exited(); done {
			return fmt.Errorf("%s exited during start (%v); log tail:\n%s", p.Name, werr, p.LogTail(2048))
		}
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		lastErr = probe(pctx, p.Addr)
		pcancel()
		if lastErr == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s after %s (last: %v); log tail:\n%s: %w",
				p.Name, p.Addr, timeout, lastErr, p.LogTail(2048), ctx.Err())
		case <-tick.C:
		}
	}
}

// freePorts asks the kernel for n distinct free loopback ports, holding all
// of them open at once so that they differ.
func freePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// RSS returns the resident set size of a process in bytes, from
// /proc/<pid>/status.
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read rss: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("read rss of %d: odd line %q", pid, line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("read rss of %d: %w", pid, err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("read rss of %d: no VmRSS line", pid)
}

// CPUTime returns the user plus system CPU time a process has used so far,
// from /proc/<pid>/stat (fields 14 and 15, in clock ticks of 1/100 s: the
// value of sysconf(_SC_CLK_TCK) on every Linux that Go supports).
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read cpu time: %w", err)
	}
	// The command name (field 2) may hold spaces; fields count from after it.
	end := strings.LastIndexByte(string(b), ')')
	if end < 0 {
		return 0, fmt.Errorf("read cpu time of %d: odd stat %q", pid, b)
	}
	f := strings.Fields(string(b[end+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("read cpu time of %d: odd stat %q", pid, b)
	}
	var ticks int64
	for _, s := range f[11:13] { // utime, stime: fields 14 and 15 overall
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("read cpu time of %d: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}
