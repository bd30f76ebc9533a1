package fallback

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keyfence/keyfence/upstream"
)

// The breaker reads the real clock here, so the open timeout is made short
// and the tests wait for it, with a bounded deadline.
const testOpenTimeout = 20 * time.Millisecond

func waitState(t *testing.T, b *Breaker, want State) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for b.State() != want {
		if time.Now().After(deadline) {
			t.Fatalf("state = %v, want %v within 5s", b.State(), want)
		}
		time.Sleep(testOpenTimeout / 4)
	}
}

func TestBreakerTransitions(t *testing.T) {
	// Steps: F a request that fails, S one that succeeds, R a request that
	// must be refused with ErrOpen, W wait for half-open, P start a probe
	// and keep it in flight, p / x finish the oldest probe with success /
	// failure. want is the state after all steps.
	tests := []struct {
		name      string
		threshold uint32
		probes    uint32
		steps     string
		want      State
	}{
		{"starts closed", 5, 1, "", Closed},
		{"four failures keep it closed", 5, 1, "FFFF", Closed},
		{"five consecutive failures open it", 5, 1, "FFFFFR", Open},
		{"a success breaks the streak", 5, 1, "FFFFSFFFF", Closed},
		{"successes never open it", 5, 1, "SSSSSSSSSS", Closed},
		{"half-open after the timeout", 5, 1, "FFFFFRW", HalfOpen},
		{"one probe in flight, others refused", 5, 1, "FFFFFWPRR", HalfOpen},
		{"a successful probe closes it", 5, 1, "FFFFFWPp", Closed},
		{"closed again counts from zero", 5, 1, "FFFFFWPpFFFF", Closed},
		{"a failed probe re-opens it", 5, 1, "FFFFFWPxR", Open},
		{"re-opened, half-open again later", 5, 1, "FFFFFWPxWPp", Closed},
		{"threshold is configurable", 2, 1, "FFR", Open},
		{"threshold 1", 1, 1, "FR", Open},
		{"probes are configurable", 2, 2, "FFWPPRp", HalfOpen},
		{"all probes must succeed", 2, 2, "FFWPPpp", Closed},
		{"any failed probe re-opens", 2, 2, "FFWPPpxR", Open},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Defaults()
			cfg.FailureThreshold, cfg.HalfOpenProbes, cfg.OpenTimeout = tt.threshold, tt.probes, testOpenTimeout
			b, err := NewBreaker(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			var probes []func(bool)
			for i, s := range tt.steps {
				switch s {
				case 'F', 'S', 'P':
					done, err := allow(b)
					if err != nil {
						t.Fatalf("step %d %c: Allow: %v (state %v)", i, s, err, b.State())
					}
					if s == 'P' {
						probes = append(probes, done)
					} else {
						done(s == 'S')
					}
				case 'R':
					if done, err := allow(b); !errors.Is(err, ErrOpen) {
						if done != nil {
							done(true)
						}
						t.Fatalf("step %d: Allow err = %v, want ErrOpen", i, err)
					}
				case 'W':
					waitState(t, b, HalfOpen)
				case 'p', 'x':
					probes[0](s == 'p')
					probes = probes[1:]
				}
			}
			if got := b.State(); got != tt.want {
				t.Fatalf("state = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBreakerOnStateChange(t *testing.T) {
	cfg := Defaults()
	cfg.OpenTimeout = testOpenTimeout
	var mu sync.Mutex
	var got []string
	b, err := NewBreaker(cfg, func(from, to State) {
		mu.Lock()
		got = append(got, from.String()+">"+to.String())
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	fail := func() {
		done, err := allow(b)
		if err != nil {
			t.Fatal(err)
		}
		done(false)
	}
	for range 5 {
		fail()
	}
	waitState(t, b, HalfOpen)
	fail() // the probe fails
	waitState(t, b, HalfOpen)
	done, err := allow(b)
	if err != nil {
		t.Fatal(err)
	}
	done(true)
	mu.Lock()
	defer mu.Unlock()
	want := []string{"closed>open", "open>half-open", "half-open>open", "open>half-open", "half-open>closed"}
	if len(got) != len(want) {
		t.Fatalf("transitions = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("transitions = %v, want %v", got, want)
		}
	}
}

// A request let through while closed that fails after the breaker opened
// and closed again belongs to an old generation and must not count.
func TestBreakerIgnoresStaleOutcomes(t *testing.T) {
	cfg := Defaults()
	cfg.FailureThreshold, cfg.OpenTimeout = 1, testOpenTimeout
	b, err := NewBreaker(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	late, err := allow(b)
	if err != nil {
		t.Fatal(err)
	}
	done, _ := allow(b)
	done(false) // opens
	waitState(t, b, HalfOpen)
	done, _ = allow(b)
	done(true) // closes
	late(false)
	if got := b.State(); got != Closed {
		t.Fatalf("state = %v after a stale failure, want closed", got)
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{Closed: "closed", HalfOpen: "half-open", Open: "open", State(7): "State(7)"} {
		if got := s.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int(s), got, want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Config)
		breaker bool // NewBreaker must fail
		cache   bool // NewCache must fail
	}{
		{"defaults", func(*Config) {}, false, false},
		{"threshold 0", func(c *Config) { c.FailureThreshold = 0 }, true, false},
		{"timeout 0", func(c *Config) { c.OpenTimeout = 0 }, true, false},
		{"probes 0", func(c *Config) { c.HalfOpenProbes = 0 }, true, false},
		{"ttl 0", func(c *Config) { c.TTL = 0 }, false, true},
		{"ttl negative", func(c *Config) { c.TTL = -time.Second }, false, true},
		{"max bytes tiny", func(c *Config) { c.MaxBytes = 100 }, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Defaults()
			tt.mod(&cfg)
			if err := cfg.Validate(); (err != nil) != (tt.breaker || tt.cache) {
				t.Errorf("Validate() = %v", err)
			}
			if _, err := NewBreaker(cfg, nil); (err != nil) != tt.breaker {
				t.Errorf("NewBreaker err = %v, want error %v", err, tt.breaker)
			}
			c, err := NewCache(cfg)
			if (err != nil) != tt.cache {
				t.Errorf("NewCache err = %v, want error %v", err, tt.cache)
			}
			c.Close()
		})
	}
}

func TestErrorWording(t *testing.T) {
	// The wording is documented and clients may match on it: changing it is
	// a breaking change.
	for err, want := range map[error]string{
		ErrOpen: "TRYAGAIN keyfence: upstream unavailable (circuit breaker open); retry later",
		ErrMiss: "TRYAGAIN keyfence: upstream unavailable and no fresh cached copy; retry later",
	} {
		if err.Error() != want {
			t.Errorf("error = %q, want %q", err.Error(), want)
		}
	}
}

// Reset closes an open or half-open breaker at once, long before its open
// timeout, tells onChange, and ignores the outcomes of requests let through
// before it; on a closed breaker it does nothing.
func TestBreakerReset(t *testing.T) {
	cfg := Defaults()
	cfg.FailureThreshold, cfg.OpenTimeout = 2, time.Hour // only Reset can close it
	var mu sync.Mutex
	var got []string
	b, err := NewBreaker(cfg, func(from, to State) {
		mu.Lock()
		got = append(got, from.String()+">"+to.String())
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if b.Reset() {
		t.Fatal("Reset of a closed breaker reported a change")
	}
	// One failure, then Reset on closed: the streak is kept (nothing changed).
	late, err := allow(b) // in flight across the Reset below
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		done, err := allow(b)
		if err != nil {
			t.Fatal(err)
		}
		done(false)
	}
	if _, err := allow(b); !errors.Is(err, ErrOpen) {
		t.Fatalf("Allow after 2 failures: %v, want ErrOpen", err)
	}
	if !b.Reset() {
		t.Fatal("Reset of an open breaker reported no change")
	}
	if st := b.State(); st != Closed {
		t.Fatalf("state after Reset = %v, want closed", st)
	}
	// The request let through before the Reset fails now: it must not
	// count against the new generation, so one more failure keeps it closed.
	late(false)
	done, err := allow(b)
	if err != nil {
		t.Fatalf("Allow after Reset: %v", err)
	}
	done(false)
	if st := b.State(); st != Closed {
		t.Fatalf("state = %v after a stale failure and one new one (threshold 2), want closed", st)
	}
	done, _ = allow(b)
	done(false) // the second failure of the new generation opens it
	if st := b.State(); st != Open {
		t.Fatalf("state = %v, want open", st)
	}
	b.Reset()

	// From half-open too.
	cfg.OpenTimeout = testOpenTimeout
	b2, err := NewBreaker(cfg, func(from, to State) {
		mu.Lock()
		got = append(got, "b2:"+from.String()+">"+to.String())
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		done, _ := allow(b2)
		done(false)
	}
	waitState(t, b2, HalfOpen)
	probe, err := allow(b2) // the half-open probe, in flight
	if err != nil {
		t.Fatal(err)
	}
	if !b2.Reset() {
		t.Fatal("Reset of a half-open breaker reported no change")
	}
	probe(false) // a stale probe's failure must not re-open the new generation
	if st := b2.State(); st != Closed {
		t.Fatalf("state = %v after Reset and a stale probe failure, want closed", st)
	}

	mu.Lock()
	defer mu.Unlock()
	want := []string{"closed>open", "open>closed", "closed>open", "open>closed",
		"b2:closed>open", "b2:open>half-open", "b2:half-open>closed"}
	if !slices.Equal(got, want) {
		t.Fatalf("transitions = %v, want %v", got, want)
	}
}

// Reset racing with requests and with other Resets: run under -race, the
// breaker ends closed and every transition onChange hears starts where the
// previous one ended.
func TestBreakerResetConcurrent(t *testing.T) {
	cfg := Defaults()
	cfg.FailureThreshold, cfg.OpenTimeout = 3, time.Hour
	var mu sync.Mutex
	last := Closed
	var broken []string
	b, err := NewBreaker(cfg, func(from, to State) {
		mu.Lock()
		defer mu.Unlock()
		if from != last {
			broken = append(broken, from.String()+">"+to.String()+" after "+last.String())
		}
		last = to
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				if w == 0 && i%50 == 0 {
					b.Reset()
					continue
				}
				if done, err := allow(b); err == nil {
					done(i%7 == 0)
				}
			}
		})
	}
	wg.Wait()
	b.Reset()
	if st := b.State(); st != Closed {
		t.Fatalf("state after the final Reset = %v", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(broken) > 0 {
		t.Fatalf("transitions out of sequence: %v", broken)
	}
	if last != Closed {
		t.Fatalf("onChange last heard %v, want closed", last)
	}
}

// allow is Allow with its ticket bound into a done function, as the tests
// read more easily; the data path calls Allow and Done without it.
func allow(b *Breaker) (func(success bool), error) {
	t, err := b.Allow()
	if err != nil {
		return nil, err
	}
	return func(success bool) { b.Done(t, success) }, nil
}

// stubTrip is a RoundTripper that fails or succeeds as told, counting calls.
type stubTrip struct {
	err   error
	calls int
}

func (s *stubTrip) RoundTrip(_ context.Context, b *upstream.Batch, _ []byte, n int) error {
	s.calls++
	b.Reset(n)
	return s.err
}

// Guard sends nothing while the breaker is open, and counts only connection
// failures against it.
func TestGuard(t *testing.T) {
	cfg := Defaults()
	cfg.FailureThreshold, cfg.OpenTimeout = 2, time.Hour
	b, err := NewBreaker(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	next := &stubTrip{err: errors.New("WRONGTYPE is not a connection failure")}
	g := &Guard{Next: next, Breaker: b}
	ctx := context.Background()
	for range 3 {
		g.RoundTrip(ctx, upstream.NewBatch(), nil, 1)
	}
	if b.State() != Closed || next.calls != 3 {
		t.Fatalf("after errors that are not connection failures: %v, %d calls", b.State(), next.calls)
	}
	next.err = &upstream.Error{Err: errors.New("connection refused")}
	for range 2 {
		g.RoundTrip(ctx, upstream.NewBatch(), nil, 1)
	}
	if b.State() != Open {
		t.Fatalf("after 2 connection failures: %v", b.State())
	}
	calls := next.calls
	if err := g.RoundTrip(ctx, upstream.NewBatch(), nil, 1); !errors.Is(err, ErrOpen) || next.calls != calls {
		t.Fatalf("while open: %v, %d calls (was %d); want ErrOpen and nothing sent", err, next.calls, calls)
	}
}
