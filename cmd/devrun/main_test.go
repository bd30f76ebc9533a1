package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/redistest"
)

// syncBuffer is written by exec's copying goroutine and read by the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// standIn writes a shell script that plays keyfence: it prints its arguments
// and upstream environment, then runs body.
func standIn(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keyfence")
	script := "#!/bin/sh\necho \"args: $*\"\necho \"upstream: $REDIS_HOST:$REDIS_PORT url=${REDIS_URL:-none}\"\n" + body + "\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestRunPassesUpstreamAndExitStatus(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal(redistest.ErrNotFound)
	}
	for _, tc := range []struct {
		name       string
		path       string // PATH for the run; "" keeps the test's
		wantBanner string
	}{
		{"real redis-server", "", "keyfence: upstream is redis-server "},
		{"miniredis when redis-server is missing", "empty", "keyfence: redis-server not found; upstream is an embedded miniredis on 127.0.0.1:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.path != "" {
				t.Setenv("PATH", t.TempDir())
			}
			t.Setenv("REDIS_URL", "redis://elsewhere:1") // must not reach the child
			bin := standIn(t, "exit 3")
			var out, errOut syncBuffer
			code := run([]string{"--keyfence", bin, "--tenant", "acme", "--listen", "127.0.0.1:16380"}, &out, &errOut)
			if code != 3 {
				t.Fatalf("exit status %d, want 3 (stderr: %s)", code, errOut.String())
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if len(lines) != 3 {
				t.Fatalf("stdout:\n%s\nwant banner + 2 lines", out.String())
			}
			banner := lines[0]
			if !strings.HasPrefix(banner, tc.wantBanner) {
				t.Errorf("banner %q, want prefix %q", banner, tc.wantBanner)
			}
			if lines[1] != "args: --tenant acme --listen 127.0.0.1:16380" {
				t.Errorf("child saw %q", lines[1])
			}
			addr, ok := strings.CutPrefix(lines[2], "upstream: ")
			addr, ok2 := strings.CutSuffix(addr, " url=none")
			if !ok || !ok2 || !strings.HasPrefix(addr, "127.0.0.1:") || !strings.Contains(banner, " on "+addr) {
				t.Errorf("child env %q does not match banner %q", lines[2], banner)
			}
		})
	}
}

func TestRunForwardsSIGTERM(t *testing.T) {
	bin := standIn(t, `trap 'echo "got TERM"; exit 0' TERM
echo ready
while :; do sleep 0.05; done`)
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() { done <- run([]string{"--keyfence", bin}, &out, &errOut) }()

	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "ready") {
		if time.Now().After(deadline) {
			t.Fatalf("stand-in never became ready; stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// run has called signal.Notify before starting the child, so this
	// SIGTERM goes to run's channel, not to the default handler.
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 || !strings.Contains(out.String(), "got TERM") {
			t.Fatalf("exit %d, stdout:\n%s", code, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("devrun did not end after SIGTERM")
	}
}

func TestRunWithoutKeyfenceBinary(t *testing.T) {
	var out, errOut syncBuffer
	missing := filepath.Join(t.TempDir(), "bin", "keyfence")
	if code := run([]string{"--keyfence", missing}, &out, &errOut); code != 1 {
		t.Fatalf("exit status %d, want 1", code)
	}
	want := "keyfence: " + missing + " not found: run `make build` first (`make run` builds it for you)\n"
	if errOut.String() != want || out.String() != "" {
		t.Fatalf("stderr %q stdout %q; want stderr %q", errOut.String(), out.String(), want)
	}
}

func TestUpstreamEnv(t *testing.T) {
	got := upstreamEnv([]string{"HOME=/root", "REDIS_URL=rediss://x", "REDIS_SENTINELS=a:1", "XREDIS_HOST=keep"}, "127.0.0.1", "1234")
	want := []string{"HOME=/root", "XREDIS_HOST=keep", "REDIS_HOST=127.0.0.1", "REDIS_PORT=1234"}
	if !slices.Equal(got, want) {
		t.Fatalf("upstreamEnv = %q, want %q", got, want)
	}
}
