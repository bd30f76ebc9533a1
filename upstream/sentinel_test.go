package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/redistest"
	"github.com/keyfence/keyfence/internal/sentineltest"
)

// TestSentinelBackoff checks the reconnect delay, min(attempt × 100 ms, 3 s),
// with a clock of the test's own: while it runs, dials fail at once without
// asking the sentinels; one dial per window probes.
func TestSentinelBackoff(t *testing.T) {
	t.Parallel()
	deadPort, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dead := net.JoinHostPort("127.0.0.1", strconv.Itoa(deadPort))
	fake := sentineltest.Start(t, "", dead) // names a master nobody listens for
	sen, err := NewSentinel(SentinelConfig{Addrs: []string{fake.Addr()}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Unix(1_000_000, 0)
	sen.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	cfg := Config{Sentinel: sen, DialTimeout: time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	try := func() error {
		nc, err := Dial(ctx, &cfg, Key{})
		if err == nil {
			nc.Close()
			return errors.New("dial succeeded")
		}
		return err
	}

	for attempt := 1; attempt <= 40; attempt++ {
		before := fake.Queries.Load()
		err := try()
		if !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("attempt %d: %v; want the dial's own error", attempt, err)
		}
		if fake.Queries.Load() != before+1 {
			t.Fatalf("attempt %d did not ask the sentinel", attempt)
		}
		want := min(time.Duration(attempt)*100*time.Millisecond, 3*time.Second)
		// Within the window: fail fast, sentinel untouched.
		for _, at := range []time.Duration{0, want - time.Millisecond} {
			if at > 0 {
				advance(at)
			}
			err := try()
			if !strings.Contains(err.Error(), fmt.Sprintf("master mymaster: %d failed connection attempts, next in", attempt)) ||
				!strings.Contains(err.Error(), "connection refused") {
				t.Fatalf("attempt %d + %s: %v; want the backoff error with the last cause", attempt, at, err)
			}
			if at > 0 {
				advance(-at)
			}
		}
		if fake.Queries.Load() != before+1 {
			t.Fatalf("attempt %d: the sentinel was asked during the backoff window", attempt)
		}
		advance(want)
	}

	// Concurrent failures of one round count once.
	sen.mu.Lock()
	sen.attempt, sen.retryAt = 0, time.Time{}
	sen.mu.Unlock()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { _ = try() })
	}
	wg.Wait()
	sen.mu.Lock()
	got := sen.attempt
	sen.mu.Unlock()
	if got != 1 {
		t.Fatalf("8 concurrent failed dials counted as %d attempts, want 1", got)
	}

	// Success resets the count.
	up := redistest.StartT(t, redistest.Options{})
	upAddr := up.Addr()
	fake.Master.Store(&upAddr)
	advance(time.Second)
	nc, err := Dial(ctx, &cfg, Key{DB: 1})
	if err != nil {
		t.Fatalf("dial after the master came back: %v", err)
	}
	nc.Close()
	sen.mu.Lock()
	got = sen.attempt
	sen.mu.Unlock()
	if got != 0 {
		t.Fatalf("attempt = %d after a successful dial, want 0", got)
	}
}
