package proxy_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyfence/keyfence/fallback"
	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/proxy"
)

// With a Redis Cluster upstream the breaker guards every master, and the
// recovery probe closes it only when every master of the slot map answers:
// here one dies and comes back on its address, and service returns long
// before the open timeout.
func TestBreakerRecoversWithClusterUpstream(t *testing.T) {
	nodes := startCluster(t)
	logs := &lockedBuffer{}
	fb := fallback.Defaults()
	fb.FailureThreshold, fb.OpenTimeout = 3, time.Minute
	addr, kf := startKeyfence(t, nodes[0], "cfo", func(c *proxy.Config) {
		c.Upstream.Cluster = clusterAddrs(nodes)
		c.Upstream.Addr = nodes[0].Addr()
		c.Upstream.DialTimeout = 500 * time.Millisecond
		c.Fallback = &fb
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("keyfence log:\n%s", logs.String())
		}
	})
	c := dialRaw(t, addr)
	if got := c.do("SET", "{k}v", "before"); got != "+OK\r\n" {
		t.Fatalf("SET: %q", got)
	}
	var owner *redistest.Server
	for _, n := range nodes {
		if ok, err := n.Client().Exists(t.Context(), "tenant:cfo:{k}v").Result(); err == nil && ok == 1 {
			owner = n
		}
	}
	if owner == nil {
		t.Fatal("no master holds the key keyfence set")
	}
	owner.Kill()
	waitFor(t, "the breaker to open", 10*time.Second, func() bool {
		return c.do("GET", "{k}v") == "-"+fallback.ErrOpen.Error()+"\r\n" && kf.Stats().Breaker == "open"
	})
	// The other masters answer; the dead one does not: it stays open.
	time.Sleep(time.Second)
	if st := kf.Stats().Breaker; st != "open" {
		t.Fatalf("breaker %s with a master down, want open", st)
	}
	if err := owner.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	// Upstream answering: the restarted master (which lost the key, having
	// no persistence), or the cluster saying CLUSTERDOWN until it takes the
	// node back. Not keyfence's refusal.
	waitFor(t, "commands answered by upstream again", fb.OpenTimeout/3, func() bool {
		r := c.do("GET", "{k}v")
		return r == "$-1\r\n" || strings.HasPrefix(r, "-CLUSTERDOWN")
	})
	t.Logf("service back %s after the master (open timeout %s)", time.Since(back).Round(time.Millisecond), fb.OpenTimeout)
	if st := kf.Stats().Breaker; st != "closed" {
		t.Fatalf("breaker %s after recovery, want closed", st)
	}
	if !strings.Contains(logs.String(), "circuit breaker closed: upstream answers again") {
		t.Fatal("keyfence did not log the recovery probe closing the breaker")
	}
}

// lockedBuffer is a bytes.Buffer that a logger and a test may share.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
