package fallback

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/sony/gobreaker/v2"
)

// State is the breaker's state. Its numeric values (0 closed, 1 half-open,
// 2 open) are what a gauge should export.
type State int

// The breaker's states.
const (
	Closed State = iota
	HalfOpen
	Open
)

// String gives the name shown in INFO and logs.
func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case HalfOpen:
		return "half-open"
	case Open:
		return "open"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

func stateOf(s gobreaker.State) State {
	switch s {
	case gobreaker.StateHalfOpen:
		return HalfOpen
	case gobreaker.StateOpen:
		return Open
	}
	return Closed
}

// Breaker guards upstream. It is safe for concurrent use.
//
// gobreaker has no way to close an open breaker before its timeout, so
// [Breaker.Reset] swaps in a fresh one: the breaker in use is a generation,
// and outcomes and transitions of a retired generation are dropped.
type Breaker struct {
	cur      atomic.Pointer[generation]
	settings gobreaker.Settings // without OnStateChange: each generation sets its own
	onChange func(from, to State)
	resetMu  sync.Mutex // one Reset at a time
}

// generation is one gobreaker instance and what was last reported of it.
type generation struct {
	// The type parameter is unused: the two-step breaker only gates and
	// counts, it never carries results.
	cb *gobreaker.TwoStepCircuitBreaker[struct{}]

	// mu orders this generation's reported transitions against its
	// retirement, so that what onChange was told forms one sequence
	// (closed>open, open>closed, ...) even across a Reset.
	mu       sync.Mutex
	reported State // the last state onChange was told of
	retired  bool
}

// errFailure is what done(false) reports to gobreaker: any non-nil error
// counts as a failure there.
var errFailure = errors.New("upstream connection failure")

// NewBreaker builds a breaker from cfg's breaker settings. onChange, when not
// nil, is called on every transition (for INFO, a gauge, a log line). It may
// run under the breaker's locks, so it must be quick and must not call back
// into the Breaker. Transitions from open to half-open happen lazily, on the
// first Allow or State after OpenTimeout.
func NewBreaker(cfg Config, onChange func(from, to State)) (*Breaker, error) {
	if err := cfg.validateBreaker(); err != nil {
		return nil, err
	}
	threshold := cfg.FailureThreshold
	b := &Breaker{
		settings: gobreaker.Settings{
			Name:        "upstream",
			MaxRequests: cfg.HalfOpenProbes,
			Timeout:     cfg.OpenTimeout,
			// Interval 0: counts are never reset while closed, so only the
			// consecutive-failure streak (which any success breaks) matters.
			Interval: 0,
			ReadyToTrip: func(c gobreaker.Counts) bool {
				return c.ConsecutiveFailures >= threshold
			},
		},
		onChange: onChange,
	}
	b.cur.Store(b.newGeneration())
	return b, nil
}

func (b *Breaker) newGeneration() *generation {
	g := &generation{reported: Closed}
	st := b.settings
	st.OnStateChange = func(_ string, from, to gobreaker.State) {
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.retired {
			return // a late outcome of a request let through before a Reset
		}
		g.reported = stateOf(to)
		if b.onChange != nil {
			b.onChange(stateOf(from), stateOf(to))
		}
	}
	g.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](st)
	return g
}

// Allow asks whether a request may go upstream. If it may, done must be
// called exactly once with its outcome: false only for an upstream
// connection failure (refused, reset, timed out), true otherwise, including
// for Redis error replies. A done that is never called leaves a half-open
// breaker waiting for its probe forever, so call it on every path.
// Otherwise err is ErrOpen: the breaker is open, or half-open with all its
// probes in flight.
func (b *Breaker) Allow() (done func(success bool), err error) {
	report, err := b.cur.Load().cb.Allow()
	if err != nil {
		return nil, ErrOpen
	}
	return func(success bool) {
		if success {
			report(nil)
		} else {
			report(errFailure)
		}
	}, nil
}

// State returns the current state.
func (b *Breaker) State() State {
	return stateOf(b.cur.Load().cb.State())
}

// Reset closes an open or half-open breaker at once, with its failure count
// cleared, as if the open timeout had passed and every probe had succeeded.
// It is for a caller that has seen upstream serve again by its own means (a
// probe on a connection of its own), so that clients need not wait out the
// open timeout. It reports whether it closed the breaker (false: it was
// closed already, and nothing changed); onChange is told of the transition.
// Outcomes of requests let through before the Reset no longer count.
func (b *Breaker) Reset() bool {
	b.resetMu.Lock()
	defer b.resetMu.Unlock()
	old := b.cur.Load()
	old.mu.Lock()
	from := old.reported
	if from == Closed {
		old.mu.Unlock()
		return false
	}
	old.retired = true
	old.mu.Unlock()
	// Tell onChange before the new generation can report anything, so
	// that its transitions follow this one.
	if b.onChange != nil {
		b.onChange(from, Closed)
	}
	b.cur.Store(b.newGeneration())
	return true
}
