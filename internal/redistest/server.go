package redistest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNotFound is returned, unwrapped so that its text is the whole message,
// when redis-server is not in PATH. Tests fail on it rather than skip: a green
// run that tested nothing would hide the missing install step.
var ErrNotFound = errors.New("redis-server not found in PATH: run `make test` (it installs it) or `apt-get install -y redis-server`")

// errPortInUse marks a start that lost the race for its port to another
// process between FreePort and redis-server's bind; Start retries on it.
var errPortInUse = errors.New("port taken before redis-server could bind it")

const (
	// startAttempts bounds the retries after a lost port race; losing five
	// times in a row means something else is wrong.
	startAttempts = 5
	// defaultStartTimeout applies when the caller's context has no deadline:
	// redis-server answers PING within milliseconds, so seconds mean trouble.
	defaultStartTimeout = 15 * time.Second
	// stopTimeout bounds Stop, which runs in t.Cleanup where no live context
	// exists; SIGKILL makes it a formality.
	stopTimeout = 10 * time.Second
	// stderrLimit caps what is kept of redis-server's own stderr (it logs to a
	// file; stderr only carries fatal config errors).
	stderrLimit = 16 << 10
	// probeTimeout bounds one readiness check; a local redis-server answers
	// INFO in well under a millisecond.
	probeTimeout = 250 * time.Millisecond
)

// Options configures a server started by Start or StartT.
type Options struct {
	// Args are extra redis-server arguments, e.g. {"--maxmemory", "10mb"}.
	// They come after the defaults, so they may override them.
	Args []string
	// Password, when not empty, is set as requirepass for the default user and
	// used by Client.
	Password string
	// Logger receives start and stop events at debug level; nil discards them.
	Logger *slog.Logger
}

// Server is one running redis-server. Its methods are safe for concurrent use.
type Server struct {
	path     string
	args     []string
	dir      string
	port     int
	password string
	log      *slog.Logger
	client   *redis.Client

	mu      sync.Mutex
	proc    *process // nil after Kill, until Restart
	version string
	stopped bool
}

// process is one run of redis-server; Restart replaces it.
type process struct {
	cmd    *exec.Cmd
	stderr *capBuffer
	exited chan struct{} // closed once cmd.Wait has returned
}

// Start runs redis-server on a free loopback port and returns once it answers
// PING. ctx bounds the start only (15 s when it has no deadline); the server
// runs until Stop.
func Start(ctx context.Context, opts Options) (*Server, error) {
	path, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, ErrNotFound
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	var lastErr error
	for range startAttempts {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		s, err := startOnce(ctx, path, port, opts, logger)
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, errPortInUse) {
			return nil, err
		}
		logger.Debug("redistest: port race lost, retrying", "err", err)
		lastErr = err
	}
	return nil, fmt.Errorf("redistest: gave up after %d attempts: %w", startAttempts, lastErr)
}

// StartT is Start for tests: it fails the test (never skips) when the server
// cannot start, stops it in t.Cleanup, and prints the end of the server's log
// when the test failed.
func StartT(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("redistest: last lines of redis-server log (%s):\n%s", s.Addr(), s.LogTail(4<<10))
		}
		if err := s.Stop(); err != nil {
			t.Errorf("redistest: %v", err)
		}
	})
	return s
}

func startOnce(ctx context.Context, path string, port int, opts Options, logger *slog.Logger) (*Server, error) {
	dir, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		return nil, fmt.Errorf("redistest: make server dir: %w", err)
	}
	args := []string{
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", dir,
		"--logfile", filepath.Join(dir, "redis.log"),
		"--daemonize", "no",
	}
	if opts.Password != "" {
		args = append(args, "--requirepass", opts.Password)
	}
	args = append(args, opts.Args...)

	s := &Server{
		path:     path,
		args:     args,
		dir:      dir,
		port:     port,
		password: opts.Password,
		log:      logger,
	}
	s.client = redis.NewClient(&redis.Options{
		Addr:     s.Addr(),
		Password: opts.Password,
		// CLIENT SETINFO does not exist before Redis 7.2; skipping it keeps
		// the server log free of errors nobody asked for.
		DisableIdentity: true,
	})
	if err := s.launch(ctx); err != nil {
		_ = s.client.Close()
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// launch starts one redis-server process on s.port and waits until it, and not
// some other process that took the port, answers. The caller holds no lock:
// launch is only called before s is shared or from Restart, which holds mu.
func (s *Server) launch(ctx context.Context) error {
	cmd := exec.Command(s.path, s.args...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = sysProcAttr()
	stderr := &capBuffer{limit: stderrLimit}
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redistest: start %s: %w", s.path, err)
	}
	p := &process{cmd: cmd, stderr: stderr, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait() // the exit status of a killed test server says nothing useful
		close(p.exited)
	}()

	version, err := s.waitReady(ctx, p)
	if err != nil {
		p.kill()
		if errors.Is(err, errPortInUse) || s.portRaceLost(p) {
			return fmt.Errorf("redistest: 127.0.0.1:%d: %w", s.port, errPortInUse)
		}
		return fmt.Errorf("redistest: redis-server on %s did not become ready: %w\n%s",
			s.Addr(), err, s.failureDetails(p))
	}
	s.proc = p
	s.version = version
	s.log.Debug("redistest: redis-server started", "addr", s.Addr(), "version", version,
		"pid", cmd.Process.Pid, "dir", s.dir)
	return nil
}

// waitReady polls until the server answers, and then checks through INFO
// that the answer came from our process: after a lost port race a PING can
// reach another test's server on the same port.
func (s *Server) waitReady(ctx context.Context, p *process) (version string, err error) {
	// A client of its own with short timeouts: go-redis does not bound its
	// connection handshake by ctx, so a port held by something that accepts
	// and never answers would otherwise stall each attempt for seconds.
	probe := redis.NewClient(&redis.Options{
		Addr:            s.Addr(),
		Password:        s.password,
		DisableIdentity: true,
		DialTimeout:     probeTimeout,
		ReadTimeout:     probeTimeout,
		WriteTimeout:    probeTimeout,
		MaxRetries:      -1,
		PoolSize:        1,
	})
	defer probe.Close()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		// Exit and cancellation are checked first, not raced against the
		// ticker, so that a dead server is noticed on the next round.
		select {
		case <-p.exited:
			return "", errors.New("redis-server exited during start")
		case <-ctx.Done():
			return "", ctx.Err()
		default:
		}
		info, err := probe.Info(ctx, "server").Result()
		if err == nil {
			fields := parseInfo(info)
			if fields["process_id"] != strconv.Itoa(p.cmd.Process.Pid) {
				return "", errPortInUse
			}
			return fields["redis_version"], nil
		}
		select {
		case <-p.exited:
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// portRaceLost tells whether p failed because its port was already taken.
func (s *Server) portRaceLost(p *process) bool {
	<-p.exited // p.kill has been called; this returns promptly
	text := p.stderr.String() + s.LogTail(4<<10)
	return strings.Contains(text, "Address already in use")
}

func (s *Server) failureDetails(p *process) string {
	<-p.exited
	var b strings.Builder
	if out := strings.TrimSpace(p.stderr.String()); out != "" {
		fmt.Fprintf(&b, "redis-server output:\n%s\n", out)
	}
	if tail := strings.TrimSpace(s.LogTail(4 << 10)); tail != "" {
		fmt.Fprintf(&b, "redis-server log:\n%s\n", tail)
	}
	fmt.Fprintf(&b, "command: %s %s", s.path, strings.Join(quoteArgs(s.args), " "))
	return b.String()
}

// kill ends the process and waits for it; a second call is harmless.
func (p *process) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// Addr is the server's address, "127.0.0.1:port".
func (s *Server) Addr() string { return net.JoinHostPort(s.Host(), strconv.Itoa(s.port)) }

// Host is always the IPv4 loopback address the server is bound to.
func (s *Server) Host() string { return "127.0.0.1" }

// Port is the server's TCP port.
func (s *Server) Port() int { return s.port }

// Dir is the server's working directory, removed by Stop.
func (s *Server) Dir() string { return s.dir }

// Version is redis_version as the server reported it, e.g. "7.0.15".
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Client is a go-redis client for the default user, for setting up and
// checking state behind the proxy's back. It is closed by Stop; do not close it.
func (s *Server) Client() *redis.Client { return s.client }

// InfoInt reads an integer field of an INFO section, failing t when INFO
// fails or the field is missing or not a number.
func (s *Server) InfoInt(t testing.TB, section, field string) int64 {
	t.Helper()
	info, err := s.client.Info(context.Background(), section).Result()
	if err != nil {
		t.Fatalf("INFO %s: %v", section, err)
	}
	v, ok := parseInfo(info)[field]
	if !ok {
		t.Fatalf("INFO %s has no %s", section, field)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("INFO %s: %s is %q, not a number", section, field, v)
	}
	return n
}

// UserClient returns a new client that authenticates as user; the caller
// closes it.
func (s *Server) UserClient(user, password string) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:            s.Addr(),
		Username:        user,
		Password:        password,
		DisableIdentity: true,
	})
}

// Kill ends the server abruptly, as a crash would, keeping its port and
// directory so that Restart can bring it back: the way to test what keyfence
// does while its upstream is down.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.proc.kill()
		s.proc = nil
		s.log.Debug("redistest: redis-server killed", "addr", s.Addr())
	}
}

// Restart kills the server if it runs and starts it again on the same port
// with the same arguments. Nothing survives it: keys, scripts and ACL users
// (AddTenantUser) are gone, as after a real restart without persistence.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("redistest: restart of a stopped server")
	}
	if s.proc != nil {
		s.proc.kill()
		s.proc = nil
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	return s.launch(ctx)
}

// Stop kills the server, closes Client and removes the server's directory.
// It is idempotent. It takes no context because it runs in t.Cleanup, after
// the test's context is gone; SIGKILL keeps it short.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.stopped = true
	_ = s.client.Close()
	if s.proc != nil {
		_ = s.proc.cmd.Process.Kill()
		select {
		case <-s.proc.exited:
		case <-time.After(stopTimeout):
			return fmt.Errorf("redis-server pid %d on %s did not exit after SIGKILL", s.proc.cmd.Process.Pid, s.Addr())
		}
		s.proc = nil
	}
	if err := os.RemoveAll(s.dir); err != nil {
		return fmt.Errorf("redistest: remove %s: %w", s.dir, err)
	}
	s.log.Debug("redistest: redis-server stopped", "addr", s.Addr())
	return nil
}

// LogTail returns up to the last n bytes of the server's log file, starting
// at a line boundary; empty when there is none.
func (s *Server) LogTail(n int) string {
	f, err := os.Open(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-int64(n), 0)
	b, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return ""
	}
	if off > 0 {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Another
// process can take it before the caller binds it; Start retries on that.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("redistest: pick a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("redistest: release port %d: %w", port, err)
	}
	return port, nil
}

// withDefaultTimeout bounds a wait for readiness when the caller did not.
func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, defaultStartTimeout)
}

// parseInfo reads the "field:value" lines of an INFO reply.
func parseInfo(info string) map[string]string {
	fields := make(map[string]string)
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if ok && !strings.HasPrefix(k, "#") {
			fields[k] = v
		}
	}
	return fields
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " '\"") {
			a = strconv.Quote(a)
		}
		out[i] = a
	}
	return out
}

// capBuffer keeps the first limit bytes written to it; exec copies the child's
// output into it from its own goroutine, hence the lock.
type capBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	limit int
}

func (c *capBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.limit - c.buf.Len(); room > 0 {
		c.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (c *capBuffer) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}
