package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/keyfence/keyfence/internal/redistest"
)

const (
	// upstreamStartTimeout bounds the start of the demo's Redis; a local
	// redis-server is ready in milliseconds.
	upstreamStartTimeout = 15 * time.Second
	// drainGrace is how long keyfence may take to drain after the first
	// forwarded signal before it is killed; a demo must not hang on exit.
	drainGrace = 30 * time.Second
	// clockTick is how often the embedded miniredis's clock is advanced.
	clockTick = 100 * time.Millisecond
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process exit, returning the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, nil))

	flags := flag.NewFlagSet("devrun", flag.ContinueOnError)
	flags.SetOutput(stderr)
	keyfencePath := flags.String("keyfence", "bin/keyfence", "path of the keyfence binary to run")
	listen := flags.String("listen", "127.0.0.1:6380", "address keyfence listens on (passed as --listen)")
	tenant := flags.String("tenant", "demo", "tenant id of every client connection (passed as --tenant)")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(stderr, "devrun: unexpected arguments %q\n", flags.Args())
		return 2
	}

	binary, err := findKeyfence(*keyfencePath)
	if err != nil {
		fmt.Fprintf(stderr, "keyfence: %v\n", err)
		return 1
	}

	// Listen for signals before anything is started, so that a Ctrl-C during
	// start-up still stops what was started.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	startCtx, cancel := context.WithTimeout(context.Background(), upstreamStartTimeout)
	up, err := startUpstream(startCtx)
	cancel()
	if err != nil {
		log.Error("keyfence: could not start a Redis for the demo", "err", err)
		return 1
	}
	defer func() {
		if err := up.stop(); err != nil {
			log.Warn("keyfence: stopping the demo's Redis", "err", err)
		}
	}()
	fmt.Fprintln(stdout, up.banner)

	select {
	case sig := <-sigs:
		log.Info("devrun: interrupted before keyfence started", "signal", sig)
		return 128 + int(sig.(syscall.Signal))
	default:
	}

	cmd := exec.Command(binary, "--tenant", *tenant, "--listen", *listen)
	cmd.Env = upstreamEnv(os.Environ(), up.host, up.port)
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	cmd.SysProcAttr = childSysProcAttr()
	if err := cmd.Start(); err != nil {
		log.Error("keyfence: could not start keyfence", "path", binary, "err", err)
		return 1
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	var killAfter <-chan time.Time
	for {
		select {
		case sig := <-sigs:
			// keyfence runs in its own process group (see childSysProcAttr),
			// so this is the only copy of the signal it gets.
			if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
				log.Warn("devrun: forwarding signal", "signal", sig, "err", err)
			}
			if killAfter == nil {
				killAfter = time.After(drainGrace)
			}
		case <-killAfter:
			log.Warn("devrun: keyfence still running after signal; killing it", "grace", drainGrace)
			_ = cmd.Process.Kill()
		case err := <-exited:
			return exitStatus(err, log)
		}
	}
}

// findKeyfence resolves the binary path with a message that says what to do
// when it is missing: before the lead's cmd/proxy is built there is none.
func findKeyfence(path string) (string, error) {
	resolved, err := exec.LookPath(path)
	switch {
	case err == nil:
		return resolved, nil
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, exec.ErrNotFound):
		return "", fmt.Errorf("%s not found: run `make build` first (`make run` builds it for you)", path)
	default:
		return "", fmt.Errorf("%s cannot be run: %w", path, err)
	}
}

// upstream is the Redis the demo's keyfence talks to.
type upstream struct {
	host, port string
	banner     string
	stop       func() error
}

// startUpstream prefers a real redis-server; only its absence, not a failure
// to start it, falls back to miniredis, because a broken install is worth
// knowing about rather than papering over.
func startUpstream(ctx context.Context) (*upstream, error) {
	srv, err := redistest.Start(ctx, redistest.Options{})
	switch {
	case err == nil:
		return &upstream{
			host: srv.Host(),
			port: strconv.Itoa(srv.Port()),
			banner: fmt.Sprintf("keyfence: upstream is redis-server %s on %s (started by make run)",
				srv.Version(), srv.Addr()),
			stop: srv.Stop,
		}, nil
	case !errors.Is(err, redistest.ErrNotFound):
		return nil, err
	}

	mr, err := miniredis.Run()
	if err != nil {
		return nil, fmt.Errorf("start embedded miniredis: %w", err)
	}
	host, port, err := net.SplitHostPort(mr.Addr())
	if err != nil {
		mr.Close()
		return nil, fmt.Errorf("miniredis address %q: %w", mr.Addr(), err)
	}
	clockCtx, stopClock := context.WithCancel(context.Background())
	clockDone := make(chan struct{})
	go func() {
		defer close(clockDone)
		runClock(clockCtx, mr)
	}()
	return &upstream{
		host: host,
		port: port,
		banner: fmt.Sprintf("keyfence: redis-server not found; upstream is an embedded miniredis on %s — install redis-server for the real thing",
			mr.Addr()),
		stop: func() error {
			stopClock()
			<-clockDone
			mr.Close()
			return nil
		},
	}, nil
}

// runClock advances miniredis's clock in real time: miniredis only expires
// keys when told time has passed, and a demo of `SET k v EX 5` should see the
// key go.
func runClock(ctx context.Context, mr *miniredis.Miniredis) {
	tick := time.NewTicker(clockTick)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			mr.FastForward(now.Sub(last))
			last = now
		}
	}
}

// upstreamEnv returns env with every REDIS_* variable replaced by
// REDIS_HOST/REDIS_PORT of the demo's upstream.
func upstreamEnv(env []string, host, port string) []string {
	out := make([]string, 0, len(env)+2)
	for _, kv := range env {
		if !strings.HasPrefix(kv, "REDIS_") {
			out = append(out, kv)
		}
	}
	return append(out, "REDIS_HOST="+host, "REDIS_PORT="+port)
}

// exitStatus turns keyfence's end into devrun's exit status, the shell's way:
// its own code, or 128+signal when a signal ended it.
func exitStatus(err error, log *slog.Logger) int {
	if err == nil {
		return 0
	}
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) {
		log.Error("devrun: waiting for keyfence", "err", err)
		return 1
	}
	if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return exitErr.ExitCode()
}
